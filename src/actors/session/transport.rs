//! The WebSocket transport: the socket of an upgraded connection, and the count of bytes queued
//! for the client.
//!
//! A handshake is answered by a handler like any request, with a `101` whose body is the
//! session's output. Once the `101` is written, the HTTP layer hands the socket over
//! ([`Handover`], see `crate::http`): the session reads it ([`Incoming`]) and [`Writer`] writes
//! its output to it, so an idle connection holds no HTTP buffers (actix-http's are 8 KiB each,
//! fixed, and would otherwise stay for the connection's life).
//!
//! actix-web-actors keeps what a session writes in a private buffer that grows without bound
//! for a client that does not read. So the session counts each frame as it writes it
//! ([`Backlog::reserve`]), and [`Writer`] subtracts what the socket takes. The difference is what
//! the server holds for this client.

use std::cell::{Cell, OnceCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
use futures_core::Stream;
use tokio::sync::oneshot;

use super::{Native, Session};

/// Bytes written for a client and not yet taken by the socket writer: counted by whoever
/// queues a frame (the room for events, the session for its own frames) and uncounted by the
/// response stream as it hands bytes over. Shared by the session, its room membership and the
/// stream.
#[derive(Debug)]
pub struct Backlog {
    queued: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
}

impl Backlog {
    pub fn new(limit: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
        }
    }

    /// Counts a frame of `bytes` for the client; `false` (and overflowed from then on) when it
    /// would pass the limit.
    pub fn reserve(&self, bytes: usize) -> bool {
        let reserved = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                (q + bytes <= self.limit).then_some(q + bytes)
            })
            .is_ok();
        if !reserved {
            self.overflowed.store(true, Ordering::Relaxed);
        }
        reserved
    }

    /// The client fell too far behind: nothing more is queued for it.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn taken(&self, bytes: usize) {
        // Saturating: a frame nobody counted (a Socket.IO connection's own packets, such as its
        // open packet) must not wrap.
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(bytes))
            });
    }
}

/// The encoded size of a server frame (unmasked) with `payload` bytes.
pub fn frame_size(payload: usize) -> usize {
    payload
        + match payload {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        }
}

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
    let (max_frame_bytes, backlog) = (session.shared.max_frame_bytes, session.backlog.clone());
    let broker = session.shared.broker.clone();
    session.joined_before_start = true;
    let join = session.join();
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

/// Most bytes taken from the session while the socket does not take them, as actix-http's
/// write buffer would hold: past it, the session's output waits in its own buffer.
const HELD: usize = 32 * 1024;

/// Writes an answer's head and then its body to the socket, until the body ends (for a
/// handed-over connection, the session's output); then closes the connection.
pub struct Writer {
    socket: Rc<TcpStream>,
    body: BoxBody,
    /// Taken from the body (or the head) and not yet written.
    pending: Bytes,
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
            pending: head,
            backlog: None,
            ended: false,
        }
    }

    /// Runs the connection to its end: writes until the session ends, then closes gracefully.
    pub async fn run(mut self) {
        std::future::poll_fn(|cx| self.poll_write(cx)).await;
        let Self { socket, body, .. } = self;
        // The session (and its reading half) is gone with the body; the socket is ours alone.
        drop(body);
        if let Ok(socket) = Rc::try_unwrap(socket) {
            // Boxed: needed once, at the end, and this future lives in every connection's task.
            Box::pin(close(socket)).await;
        }
    }

    fn take(&mut self, bytes: Bytes) {
        if self.pending.is_empty() {
            self.pending = bytes;
        } else {
            // The first output joins the `101`, so that both leave in one send; later, output
            // taken while the socket was full.
            let mut both = BytesMut::with_capacity(self.pending.len() + bytes.len());
            both.extend_from_slice(&self.pending);
            both.extend_from_slice(&bytes);
            self.pending = both.freeze();
        }
    }

    fn written(&mut self, n: usize) {
        if n == self.pending.len() {
            // Dropped, not emptied: an idle connection keeps no buffer.
            self.pending = Bytes::new();
        } else {
            self.pending.advance(n);
        }
        let head = n.min(self.uncounted);
        self.uncounted -= head;
        if let Some(backlog) = &self.backlog {
            backlog.taken(n - head);
        }
    }

    /// Ready when the session has ended and all it wrote is written, or the socket failed.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Set once the session has nothing more for now (and will wake us when it has): polling
        // it again runs the whole actor for nothing.
        let mut idle = false;
        loop {
            // Polling the body runs the session: it must go on (reading, pinging) while a
            // write is under way, up to what may be held here.
            while !self.ended && !idle && self.pending.len() < HELD {
                match Pin::new(&mut self.body).poll_next(cx) {
                    Poll::Ready(Some(Ok(bytes))) => self.take(bytes),
                    Poll::Ready(_) => self.ended = true,
                    Poll::Pending => idle = true,
                }
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
                Poll::Pending => return Poll::Pending,
            }
            match self.socket.try_write(&self.pending) {
                Ok(n) => self.written(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(()),
            }
        }
    }
}

/// Longest a closing connection waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(1);

/// Ends a connection the way a client expects: our side closed first, then what the client
/// still sends (its answer to our close frame) read and dropped until it closes too — closing
/// with unread bytes would reset the connection, and the client could lose our close frame.
async fn close(mut socket: TcpStream) {
    use tokio::io::AsyncWriteExt;
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
    let _ = tokio::time::timeout(LINGER, drain).await;
}
