//! The WebSocket transport: the socket of an upgraded connection, handed to its session.
//!
//! A handshake is answered by a handler like any request, with a `101` whose body is the
//! session's output. Once the `101` is written, the HTTP layer hands the socket over
//! ([`Handover`], see the `http` module): the session reads it ([`Incoming`]) and [`Writer`] writes
//! its output to it, so an idle connection holds no HTTP buffers (actix-http's are 8 KiB each,
//! fixed, and would otherwise stay for the connection's life).
//!
//! actix-web-actors keeps what a session writes in a private buffer that grows without bound
//! for a client that does not read. So the session counts each frame as it writes it
//! ([`Backlog::reserve`]), and [`Writer`] subtracts what the socket takes. The difference is what
//! the server holds for this client.
//!
//! The session runs when its output is polled. So [`Writer`] polls it even while the socket
//! takes nothing, holding what it writes — no more than the bound, which the session enforces:
//! a client that has stopped reading is still pinged, timed out, closed as a slow consumer or
//! for its token, and leaves its room. What is left when the session ends is given a heartbeat
//! interval to be taken; then the connection is reset.

use std::cell::{Cell, OnceCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix::{Actor, Addr, StreamHandler};
use actix_http::ws::Codec;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::error::PayloadError;
use actix_web::rt::net::TcpStream;
use actix_web::web::{Buf, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, WebsocketContext};
use futures_util::Stream;
use tokio::sync::oneshot;

use super::Native;
use crate::actors::session::{Backlog, Session};

/// Longest the handshake waits for the room to take the session in. A room normally answers
/// within microseconds; one that is starting while the database is down takes until it is back,
/// and the handshake then completes without it (the welcome follows when the room answers).
const JOIN_WAIT: Duration = Duration::from_millis(250);

/// Upgrades the request and starts the session on it, registered with its room first: the room's
/// answer is in the session's mailbox when it starts, so the welcome is written in the same poll
/// as the `101 Switching Protocols` and both leave in one write: one system call per connect
/// fewer (writes were a quarter of the server's time in a burst of connects).
pub async fn start(
    mut session: Session<Native>,
    req: &HttpRequest,
) -> Result<HttpResponse, actix_web::Error> {
    let (max_frame_bytes, backlog) = (session.shared().max_frame_bytes, session.backlog());
    let broker = session.shared().broker.clone();
    let join = session.join_before_start();
    // Answers with `switchboard.v1` when the client offered it (never with the token entry).
    let protocols = &[crate::auth::SUBPROTOCOL];
    let (address, response) = upgrade(session, req, protocols, max_frame_bytes, backlog)?;
    let (answered, answer) = oneshot::channel();
    broker.do_send(join(address, Some(answered)));
    // Should the client leave now, the response is dropped unstarted; actix then runs the
    // session's `started` and `stopped`, so it still leaves its room.
    let _ = tokio::time::timeout(JOIN_WAIT, answer).await;
    Ok(response)
}

/// Upgrades the request and runs `actor` on the WebSocket, counting what it writes off
/// `backlog` as the socket takes it.
pub fn serve<A>(
    actor: A,
    req: &HttpRequest,
    protocols: &[&str],
    max_frame_bytes: usize,
    backlog: Arc<Backlog>,
) -> Result<HttpResponse, actix_web::Error>
where
    A: Actor<Context = WebsocketContext<A>> + StreamHandler<Result<ws::Message, ws::ProtocolError>>,
{
    upgrade(actor, req, protocols, max_frame_bytes, backlog).map(|(_, response)| response)
}

/// [`serve`], with the actor's address; the actor starts when the response is first polled,
/// which is once the socket is handed over.
fn upgrade<A>(
    actor: A,
    req: &HttpRequest,
    protocols: &[&str],
    max_frame_bytes: usize,
    backlog: Arc<Backlog>,
) -> Result<(Addr<A>, HttpResponse), actix_web::Error>
where
    A: Actor<Context = WebsocketContext<A>> + StreamHandler<Result<ws::Message, ws::ProtocolError>>,
{
    let handover = Handover {
        slot: Rc::default(),
        backlog,
    };
    let incoming = Incoming {
        slot: handover.slot.clone(),
        read: 0,
    };
    let (address, response) = ws::WsResponseBuilder::new(actor, req, incoming)
        .protocols(protocols)
        .codec(Codec::new().max_size(max_frame_bytes))
        .start_with_addr()?;
    let mut response = response.map_into_boxed_body();
    response.extensions_mut().insert(handover);
    Ok((address, response))
}

/// The socket of an upgraded connection, for the session answering it: put in the `101`
/// response's extensions by the handler, given the socket by the HTTP layer once the `101` is
/// written. Everything here lives on the connection's worker thread.
pub struct Handover {
    slot: Rc<Slot>,
    /// What the session has queued for its client, for the [`Writer`] to count down.
    backlog: Arc<Backlog>,
}

#[derive(Default)]
struct Slot {
    socket: OnceCell<Rc<TcpStream>>,
    /// What the client sent right behind its handshake, read with the request.
    early: Cell<Option<Bytes>>,
}

impl Handover {
    /// Gives the session its socket, with any bytes already read from it, and returns the
    /// writer of the session's output (`body`) after `head`, the encoded `101`.
    pub fn attach(self, socket: TcpStream, early: Bytes, head: Bytes, body: BoxBody) -> Writer {
        if !early.is_empty() {
            self.slot.early.set(Some(early));
        }
        let socket = Rc::new(socket);
        let _ = self.slot.socket.set(socket.clone());
        let mut writer = Writer::new(socket, head, body);
        writer.backlog = Some(self.backlog);
        writer
    }
}

/// Most bytes read at once.
const READ_CHUNK: usize = 4 * 1024;
/// Most bytes the session's decoder is handed before it decodes: it reads whatever its input
/// yields before decoding one frame, so a client that sends faster than it is served would
/// otherwise grow its buffer without pause.
const READ_PER_POLL: usize = 64 * 1024;

/// The client's bytes, as the session's WebSocket decoder takes them: nothing until the socket
/// is handed over, then what each read returns, in buffers of the size read.
struct Incoming {
    slot: Rc<Slot>,
    /// Bytes yielded since the decoder last saw `Pending`.
    read: usize,
}

impl Stream for Incoming {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Nobody polls the session before the handover: its output is the response body.
        let Some(socket) = self.slot.socket.get().cloned() else {
            return Poll::Pending;
        };
        if let Some(early) = self.slot.early.take() {
            return Poll::Ready(Some(Ok(early)));
        }
        if self.read >= READ_PER_POLL {
            self.read = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut buf = [0; READ_CHUNK];
        loop {
            match socket.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(PayloadError::Io(e)))),
                Poll::Pending => {
                    self.read = 0;
                    return Poll::Pending;
                }
            }
            match socket.try_read(&mut buf) {
                Ok(0) => return Poll::Ready(None),
                Ok(n) => {
                    self.read += n;
                    return Poll::Ready(Some(Ok(Bytes::copy_from_slice(&buf[..n]))));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Some(Err(PayloadError::Io(e)))),
            }
        }
    }
}

/// Most bytes taken from the session before they are written, while the socket takes them: what
/// is ready leaves in few writes. (While the socket takes nothing, the session's output is taken
/// whatever its size: see [`Writer::blocked`].)
const HELD: usize = 32 * 1024;

/// Writes an answer's head and then its body to the socket, until the body ends (for a
/// handed-over connection, the session's output); then closes the connection.
pub struct Writer {
    socket: Rc<TcpStream>,
    body: BoxBody,
    /// Taken from the body (or the head) and not yet written; appended to while the socket is
    /// full.
    pending: BytesMut,
    /// Leading bytes of `pending` that no session counted (the head).
    uncounted: usize,
    /// The session's count of what is queued for its client, which this writer takes down as
    /// the socket takes the bytes.
    backlog: Option<Arc<Backlog>>,
    ended: bool,
}

impl Writer {
    pub fn new(socket: Rc<TcpStream>, head: Bytes, body: BoxBody) -> Self {
        Self {
            socket,
            body,
            uncounted: head.len(),
            pending: BytesMut::from(head),
            backlog: None,
            ended: false,
        }
    }

    /// Runs the connection to its end: writes until the session ends, then closes — gracefully,
    /// unless the client leaves what is left untaken past the stall limit.
    pub async fn run(mut self) {
        std::future::poll_fn(|cx| self.poll_write(cx)).await;
        // The session sets the limit; an answer without one (a refused handshake) gets the
        // linger.
        let patience = self.backlog.as_ref().and_then(|b| b.stall_limit());
        let Self {
            socket,
            body,
            pending,
            ..
        } = self;
        // The session (and its reading half) is gone with the body; the socket is ours alone.
        drop(body);
        if let Ok(socket) = Rc::try_unwrap(socket) {
            // Boxed: needed once, at the end, and this future lives in every connection's task.
            Box::pin(close(socket, pending, patience.unwrap_or(LINGER))).await;
        }
    }

    fn take(&mut self, bytes: Bytes) {
        if self.pending.is_empty() {
            // Not copied: the session's encoder hands over a buffer of its own.
            self.pending = BytesMut::from(bytes);
        } else {
            // The first output joins the `101`, so that both leave in one send; later, output
            // taken while the socket was full.
            self.pending.extend_from_slice(&bytes);
        }
    }

    fn written(&mut self, n: usize) {
        if n == self.pending.len() {
            // Dropped, not emptied: an idle connection keeps no buffer.
            self.pending = BytesMut::new();
        } else {
            self.pending.advance(n);
        }
        let head = n.min(self.uncounted);
        self.uncounted -= head;
        if let Some(backlog) = &self.backlog {
            backlog.taken(n - head);
        }
    }

    /// Ready when the session has ended (what it wrote last may not all be written: the socket
    /// may be full), or the socket failed.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Set once the session has nothing more for now (and will wake us when it has): polling
        // it again runs the whole actor for nothing.
        let mut idle = false;
        loop {
            // Polling the body runs the session: it goes on (reading, pinging) while a write is
            // under way.
            while !self.ended && !idle && self.pending.len() < HELD {
                idle = self.poll_body(cx).is_pending();
            }
            if self.pending.is_empty() {
                return if self.ended {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                };
            }
            match self.socket.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return self.blocked(idle, cx),
            }
            match self.socket.try_write(&self.pending) {
                Ok(n) => self.written(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(()),
            }
        }
    }

    /// The socket takes nothing: the session runs on regardless, its output taken whatever its
    /// size — its heartbeat, its slow-consumer bound and its closes must not wait for a client
    /// that may never read again. What it holds is bounded by the session's count of it
    /// ([`Backlog`]), not here. Ready once it has ended.
    fn blocked(&mut self, idle: bool, cx: &mut Context<'_>) -> Poll<()> {
        if !idle {
            while !self.ended && self.poll_body(cx).is_ready() {}
        }
        if self.ended {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Runs the session once, taking what it wrote; pending when it has nothing more for now
    /// (it wakes the task when it has).
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match Pin::new(&mut self.body).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => self.take(bytes),
            Poll::Ready(_) => self.ended = true,
            Poll::Pending => return Poll::Pending,
        }
        Poll::Ready(())
    }
}

/// Longest a closing connection waits for the client to close its side (and, for an answer
/// that is not a session's, to take the answer).
const LINGER: Duration = Duration::from_secs(1);

/// Ends a connection the way a client expects: what is left of the output written, our side
/// closed, then what the client still sends (its answer to our close frame) read and dropped
/// until it closes too — closing with unread bytes would reset the connection, and the client
/// could lose our close frame.
///
/// A client that does not take what is left within `patience` has stopped reading: the
/// connection is reset, so that neither it nor the kernel's copy of what is left is held for as
/// long as the client likes (possibly for ever, if it keeps its window shut). So is one that has
/// not closed its side within [`LINGER`] of ours: what we wrote may all have fitted in the
/// kernel's buffers, and a client that reads nothing never sees our close.
async fn close(mut socket: TcpStream, mut rest: BytesMut, patience: Duration) {
    use tokio::io::AsyncWriteExt;
    if !rest.is_empty() {
        match tokio::time::timeout(patience, socket.write_all_buf(&mut rest)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                // Dropped with a zero linger: reset at once.
                let _ = socket.set_zero_linger();
                return;
            }
        }
    }
    // Not kept while the client closes its side.
    drop(rest);
    if socket.shutdown().await.is_err() {
        return;
    }
    // The buffer is never held across an await: this future lives inline in every connection's
    // task, and its size is paid by each of them.
    let drain = async {
        while socket.readable().await.is_ok() {
            match socket.try_read(&mut [0; 1024]) {
                Ok(0) => break,
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => break,
                _ => {}
            }
        }
    };
    if tokio::time::timeout(LINGER, drain).await.is_err() {
        let _ = socket.set_zero_linger();
    }
}
