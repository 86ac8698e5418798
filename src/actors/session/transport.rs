//! The WebSocket transport: the socket of an upgraded connection, and the count of bytes queued
//! for the client.
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
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix::{Actor, Addr, StreamHandler};
use actix_http::ws::Codec;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::error::PayloadError;
use actix_web::rt::net::TcpStream;
use actix_web::web::{Buf, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, WebsocketContext};
use futures_util::task::AtomicWaker;
use futures_util::Stream;
use tokio::sync::oneshot;

use super::{Native, Session};

/// Bytes written for a client and not yet taken by the socket writer: counted by whoever
/// queues a frame (the room for events, the session for its own frames and its replay) and
/// uncounted by the transport as the socket takes them. Shared by the session, its room
/// membership and the transport.
///
/// At most `limit` bytes are counted in `queued`; a frame larger than the limit by itself is
/// counted apart, in `oversized`, one at a time. So a session holds at most the limit, plus — while
/// one is written — one event larger than it.
#[derive(Debug)]
pub struct Backlog {
    queued: AtomicUsize,
    /// A frame larger than `limit`, counted alone (0 when none is queued). The bytes the
    /// transport takes count against it first; only the sum of the two counts is exact.
    oversized: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
    /// The session is replaying history: what does not fit now, it reads from the database
    /// later (see [`Backlog::reserve_stored`]), so the room never closes it for that — a client
    /// that stops taking bytes is closed instead ([`Backlog::stalled`]).
    replaying: AtomicBool,
    /// When the transport last took bytes, or bytes were queued after none were (milliseconds
    /// since `epoch`): since then the client has had something to take.
    owed_since: AtomicU64,
    epoch: Instant,
    /// How long a client may take nothing of what is queued for it before it is held to have
    /// stopped reading (milliseconds; 0: not set): a replaying session is then closed, and an
    /// ended session's connection reset.
    stall_after: AtomicU64,
    /// One more than the count below which `drained` is woken; 0 when nobody waits.
    wake_below: AtomicUsize,
    drained: AtomicWaker,
}

/// What became of an event offered to a session (see [`Backlog::reserve_stored`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    Queued,
    /// Not queued, and the client is not closed for it: its replay reads the event from the
    /// database.
    Missed,
    /// Not queued: the client fell too far behind, and is closed as a slow consumer.
    Refused,
}

impl Backlog {
    pub fn new(limit: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            oversized: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
            replaying: AtomicBool::new(false),
            owed_since: AtomicU64::new(0),
            epoch: Instant::now(),
            stall_after: AtomicU64::new(0),
            wake_below: AtomicUsize::new(0),
            drained: AtomicWaker::new(),
        }
    }

    /// Counts a frame of `bytes` for the client; `false` (and overflowed from then on) when it
    /// would pass the limit.
    pub fn reserve(&self, bytes: usize) -> bool {
        let reserved = self.count(bytes, self.limit, false);
        if !reserved {
            self.overflowed.store(true, Ordering::Relaxed);
        }
        reserved
    }

    /// Counts a stored event's frame, offered live: as [`Backlog::reserve`], except that while the
    /// session replays, a frame that does not fit is [`Reservation::Missed`] rather than a reason
    /// to close the session.
    pub fn reserve_stored(&self, bytes: usize) -> Reservation {
        if self.count(bytes, self.limit, false) {
            Reservation::Queued
        } else if self.replaying.load(Ordering::SeqCst) {
            Reservation::Missed
        } else {
            self.overflowed.store(true, Ordering::Relaxed);
            Reservation::Refused
        }
    }

    /// Counts a replayed frame if what is queued, with it, stays within `budget` — or if nothing
    /// is queued at all (a frame larger than the budget, or than the limit, goes alone). Never
    /// overflows: a replay waits ([`Backlog::drained_to`]) for what does not fit.
    pub fn admit(&self, bytes: usize, budget: usize) -> bool {
        self.count(bytes, budget.min(self.limit), true)
    }

    /// `alone`: a frame larger than the limit is counted only if nothing else is queued.
    fn count(&self, bytes: usize, budget: usize, alone: bool) -> bool {
        // The stall clock runs only during a replay: live delivery pays nothing for it.
        let replaying = self.replaying.load(Ordering::Relaxed);
        let owed = if replaying { self.queued() } else { 1 };
        let counted = if bytes > self.limit {
            !(alone && self.queued.load(Ordering::SeqCst) != 0)
                && self
                    .oversized
                    .compare_exchange(0, bytes, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
        } else {
            let nothing_else = |q: usize| q == 0 && self.oversized.load(Ordering::SeqCst) == 0;
            self.queued
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                    (q + bytes <= budget || nothing_else(q)).then_some(q + bytes)
                })
                .is_ok()
        };
        if counted && owed == 0 {
            // The client owes nothing from before: its time to take these starts now.
            self.owed_since.store(self.now(), Ordering::Relaxed);
        }
        counted
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The client fell too far behind: nothing more is queued for it.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Everything counted for the client and not yet taken.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst) + self.oversized.load(Ordering::SeqCst)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn set_replaying(&self, replaying: bool) {
        // What is queued from before, the client has had no time to take yet.
        self.owed_since.store(self.now(), Ordering::Relaxed);
        self.replaying.store(replaying, Ordering::SeqCst);
    }

    /// How long a client may take nothing of what is queued for it.
    pub fn set_stall_limit(&self, limit: Duration) {
        let limit = limit.as_millis().clamp(1, u64::MAX.into()) as u64;
        self.stall_after.store(limit, Ordering::Relaxed);
    }

    /// The stall limit, once a session has set it.
    pub fn stall_limit(&self) -> Option<Duration> {
        match self.stall_after.load(Ordering::Relaxed) {
            0 => None,
            limit => Some(Duration::from_millis(limit)),
        }
    }

    /// A replaying client has taken nothing of what is queued for it for longer than the stall
    /// limit: it stopped reading. (Checked by the session on each heartbeat tick.)
    pub fn stalled(&self) -> bool {
        self.stalled_at(self.owed_since.load(Ordering::Relaxed), self.now())
    }

    fn stalled_at(&self, owed_since: u64, now: u64) -> bool {
        let limit = self.stall_after.load(Ordering::Relaxed);
        limit != 0
            && self.replaying.load(Ordering::SeqCst)
            && self.queued() != 0
            && now.saturating_sub(owed_since) > limit
    }

    /// The socket (or a poll) took `bytes`.
    pub fn taken(&self, bytes: usize) {
        if self.replaying.load(Ordering::Relaxed) {
            self.owed_since.store(self.now(), Ordering::Relaxed);
        }
        self.release(bytes);
    }

    /// Uncounts `bytes` that will not be written after all (a frame dropped), or were written.
    pub fn release(&self, bytes: usize) {
        let mut rest = bytes;
        if self.oversized.load(Ordering::SeqCst) != 0 {
            if let Ok(before) =
                self.oversized
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| {
                        Some(o.saturating_sub(rest))
                    })
            {
                rest -= before.min(rest);
            }
        }
        // Saturating: a frame nobody counted (a Socket.IO connection's own packets, such as its
        // open packet) must not wrap.
        let _ = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                Some(q.saturating_sub(rest))
            });
        let wake_below = self.wake_below.load(Ordering::SeqCst);
        if wake_below != 0 && self.queued() < wake_below {
            self.drained.wake();
        }
    }

    /// Resolves once no more than `level` bytes are queued: woken by the transport as it takes
    /// bytes, not by a timer. One waiter at a time (the session's replay).
    pub fn drained_to(self: &Arc<Self>, level: usize) -> impl Future<Output = ()> + 'static {
        let backlog = self.clone();
        std::future::poll_fn(move |cx| {
            backlog.drained.register(cx.waker());
            backlog.wake_below.store(level + 1, Ordering::SeqCst);
            if backlog.queued() <= level {
                backlog.wake_below.store(0, Ordering::SeqCst);
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    const LIMIT: usize = 1000;

    #[test]
    fn a_frame_larger_than_the_limit_is_counted_alone_with_up_to_the_limit_beside_it() {
        let backlog = Backlog::new(LIMIT);
        assert!(backlog.reserve(10));
        // Beside other frames: a live one may come (one at a time) …
        assert!(backlog.reserve(3 * LIMIT));
        assert!(!backlog.admit(2 * LIMIT, LIMIT), "a second one waits");
        assert_eq!(backlog.reserve_stored(2 * LIMIT), Reservation::Refused);
        assert!(backlog.overflowed());
        // … and the limit of others beside it, no more.
        let backlog = Backlog::new(LIMIT);
        assert!(backlog.reserve(3 * LIMIT));
        assert!(backlog.reserve(LIMIT));
        assert!(!backlog.admit(1, LIMIT));
        assert_eq!(backlog.queued(), 4 * LIMIT);
        // What the transport takes counts against the large one first; the sum stays exact.
        backlog.taken(3 * LIMIT + 400);
        assert_eq!(backlog.queued(), LIMIT - 400);
        assert!(backlog.admit(400, LIMIT));
        assert!(!backlog.overflowed());
    }

    #[test]
    fn a_replay_is_admitted_within_its_budget_or_alone_and_never_overflows() {
        let backlog = Backlog::new(LIMIT);
        assert!(backlog.admit(400, LIMIT / 2));
        assert!(!backlog.admit(200, LIMIT / 2));
        // Larger than the budget: only when nothing else is queued.
        assert!(!backlog.admit(LIMIT, LIMIT / 2));
        backlog.taken(400);
        assert!(backlog.admit(LIMIT, LIMIT / 2));
        backlog.taken(LIMIT);
        assert!(backlog.admit(5 * LIMIT, LIMIT / 2));
        assert!(!backlog.overflowed());
    }

    #[test]
    fn a_stored_event_that_does_not_fit_is_missed_while_replaying() {
        let backlog = Backlog::new(LIMIT);
        backlog.set_replaying(true);
        assert!(backlog.reserve(LIMIT));
        assert_eq!(backlog.reserve_stored(1), Reservation::Missed);
        assert!(!backlog.overflowed());
        backlog.set_replaying(false);
        assert_eq!(backlog.reserve_stored(1), Reservation::Refused);
        assert!(backlog.overflowed());
    }

    struct Woken(AtomicBool);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_replay_is_woken_by_the_transport_once_drained_enough() {
        let backlog = Arc::new(Backlog::new(LIMIT));
        assert!(backlog.reserve(800));
        let woken = Arc::new(Woken(AtomicBool::new(false)));
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut drained = std::pin::pin!(backlog.drained_to(300));
        assert!(drained.as_mut().poll(&mut cx).is_pending());
        backlog.taken(400);
        assert!(!woken.0.load(Ordering::SeqCst), "400 still queued");
        backlog.taken(100);
        assert!(woken.0.load(Ordering::SeqCst));
        assert!(drained.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn a_replaying_client_that_takes_nothing_for_the_stall_limit_has_stalled() {
        let backlog = Backlog::new(LIMIT);
        backlog.set_stall_limit(Duration::from_millis(200));
        assert!(backlog.reserve(100));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!backlog.stalled(), "not replaying: the bound decides");
        backlog.set_replaying(true);
        assert!(
            !backlog.stalled(),
            "the client's time starts with the replay"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(backlog.stalled());
        // A client that takes bytes again before the session's next tick reads again.
        backlog.taken(50);
        assert!(!backlog.stalled() && !backlog.overflowed());
        // A client that keeps taking has not stalled.
        let backlog = Backlog::new(LIMIT);
        backlog.set_stall_limit(Duration::from_millis(500));
        backlog.set_replaying(true);
        for _ in 0..5 {
            assert!(backlog.reserve(100));
            std::thread::sleep(Duration::from_millis(10));
            backlog.taken(100);
        }
        assert!(!backlog.stalled() && !backlog.overflowed());
    }
}
