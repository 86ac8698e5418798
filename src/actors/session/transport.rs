//! The WebSocket transport, and the count of bytes queued for the client.
//!
//! actix-web-actors keeps what a session writes in a private buffer that grows without bound
//! for a client that does not read. So the session counts each frame as it writes it
//! ([`Backlog::add`]), and the response stream — which the HTTP layer polls only as fast as the
//! socket drains — subtracts what it yields ([`Counted`]). The difference is what the server
//! holds for this client.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix::{Actor, Addr, StreamHandler};
use actix_http::ws::Codec;
use actix_web::body::{BodySize, MessageBody};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, WebsocketContext};
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

/// Most bytes handed to the HTTP layer per poll. The context encodes everything it has queued
/// into one buffer; handing that over whole would move an unbounded amount into the HTTP layer's
/// write buffer, out of sight of the count. In slices, the HTTP layer stops taking them when its
/// own (bounded) buffer is full, and the rest stays counted here.
const SLICE: usize = 16 * 1024;

/// The response body, counting what it hands to the HTTP layer.
struct Counted<B> {
    inner: B,
    /// Encoded bytes the HTTP layer has not taken yet.
    pending: Bytes,
    backlog: Arc<Backlog>,
}

impl<B: MessageBody + Unpin> MessageBody for Counted<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        if self.pending.is_empty() {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => self.pending = bytes,
                other => return other,
            }
        }
        let take = self.pending.len().min(SLICE);
        let slice = self.pending.split_to(take);
        self.backlog.taken(slice.len());
        Poll::Ready(Some(Ok(slice)))
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
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let (max_frame_bytes, backlog) = (session.shared.max_frame_bytes, session.backlog.clone());
    let broker = session.shared.broker.clone();
    session.joined_before_start = true;
    let join = session.join();
    // Answers with `switchboard.v1` when the client offered it (never with the token entry).
    let protocols = &[crate::auth::SUBPROTOCOL];
    let (address, response) = upgrade(session, req, payload, protocols, max_frame_bytes, backlog)?;
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
    payload: web::Payload,
    protocols: &[&str],
    max_frame_bytes: usize,
    backlog: Arc<Backlog>,
) -> Result<HttpResponse, actix_web::Error>
where
    A: Actor<Context = WebsocketContext<A>> + StreamHandler<Result<ws::Message, ws::ProtocolError>>,
{
    upgrade(actor, req, payload, protocols, max_frame_bytes, backlog).map(|(_, response)| response)
}

/// [`serve`], with the actor's address; the actor starts when the response is first polled.
fn upgrade<A>(
    actor: A,
    req: &HttpRequest,
    payload: web::Payload,
    protocols: &[&str],
    max_frame_bytes: usize,
    backlog: Arc<Backlog>,
) -> Result<(Addr<A>, HttpResponse), actix_web::Error>
where
    A: Actor<Context = WebsocketContext<A>> + StreamHandler<Result<ws::Message, ws::ProtocolError>>,
{
    let (address, response) = ws::WsResponseBuilder::new(actor, req, payload)
        .protocols(protocols)
        .codec(Codec::new().max_size(max_frame_bytes))
        .start_with_addr()?;
    let response = response.map_body(|_, inner| Counted {
        inner,
        pending: Bytes::new(),
        backlog,
    });
    Ok((address, response.map_into_boxed_body()))
}
