//! The Server-Sent Events transport (adapter layer): a session whose frames go out as an
//! `text/event-stream` response, for clients whose network lets HTTP through but not WebSockets
//! (some proxies and corporate networks). It is a wire of the same session as `/ws`: joining,
//! replay, heartbeat, token lifetime, the backlog bound, the sessions-per-user cap and the drain
//! are the session's own code, not this module's.
//!
//! - Each frame is an event whose `data:` is the very JSON frame `/ws` sends, on one line (our
//!   JSON has no raw newline). Stored events carry `id: <seq>`, and so does a fresh session's
//!   welcome (its position), so a browser's `EventSource` resumes by `Last-Event-ID` with
//!   nothing lost or repeated; ephemeral events carry no id, which leaves the last one as it was.
//! - The heartbeat is a comment (`: ping`). The client cannot answer it: the session takes the
//!   client's taking bytes as its sign of life ([`Sse::heard_since_last_asked`]), and a client
//!   that stops reading meets the backlog bound.
//! - A session's end is a last `close` event (`{"type":"close","code",…}`), then the end of the
//!   stream.
//! - The client's commands go over the REST API; a fresh token reaches a live session by
//!   `POST /api/v1/sessions/{id}/auth`, through [`Streams`].
//!
//! Uses the engine's session (its `Wire` contract, `Backlog`), `auth`, `ids` and `protocol`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use actix::prelude::*;
use actix_web::web::Bytes;
use bytestring::ByteString;
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::actors::session::{frame_size, Backlog, Framing, Session, Wire};
use crate::auth::Identity;
use crate::ids::SessionId;
use crate::protocol::{Close, ServerFrame};

/// What the stream tells a client about reconnecting, before anything else: an `EventSource`
/// that loses the stream tries again after this long.
pub const RETRY_MS: u64 = 2000;

/// The heartbeat's comment.
const PING: &[u8] = b": ping\n\n";

/// Something queued for the stream.
enum Out {
    /// A frame: `id: <id>` when given, then `data: <json>`.
    Frame {
        id: Option<u64>,
        json: Bytes,
        /// What the session counted for it in the backlog.
        counted: usize,
    },
    /// Bytes written as they are (the `retry:` line, a heartbeat comment).
    Raw { bytes: Bytes, counted: usize },
}

/// The wire of a session on an event stream.
pub struct Sse {
    /// `None` once the session has stopped: the stream then ends after what is queued.
    out: Option<mpsc::UnboundedSender<Out>>,
    /// Set by the stream each time it yields bytes, taken by the heartbeat.
    took: Arc<AtomicBool>,
    /// The live streams of this server, which this one leaves when its session stops.
    streams: Arc<Streams>,
    /// The session's id, once it has one.
    id: Option<SessionId>,
}

impl Sse {
    fn push(&mut self, out: Out) {
        if let Some(sender) = &self.out {
            // The stream is gone (the client left): the session hears so through `Gone`.
            let _ = sender.send(out);
        }
    }
}

impl Wire for Sse {
    type Context = Context<Session<Self>>;
    const FRAMING: Framing = Framing::Native;
    const TRANSPORT: &'static str = "sse";
    const PING_BYTES: usize = PING.len();

    fn frame(&mut self, frame: &ServerFrame) -> ByteString {
        frame.to_text()
    }

    fn send(&mut self, ctx: &mut Self::Context, text: ByteString) {
        self.send_at(ctx, text, None);
    }

    fn send_at(&mut self, _: &mut Self::Context, text: ByteString, resume_point: Option<u64>) {
        let counted = frame_size(text.len());
        self.push(Out::Frame {
            id: resume_point,
            json: text.into_bytes(),
            counted,
        });
    }

    fn ping(&mut self, _: &mut Self::Context) {
        self.push(Out::Raw {
            bytes: Bytes::from_static(PING),
            counted: frame_size(PING.len()),
        });
    }

    fn heard_since_last_asked(&mut self) -> bool {
        self.took.swap(false, Ordering::Relaxed)
    }

    fn close(&mut self, _: &mut Self::Context, close: Close, _welcomed: bool) {
        let frame = serde_json::json!({
            "type": "close",
            "code": close.code(),
            "name": close.name(),
            "reason": close.reason(),
            "reconnect": close.reconnect(),
        });
        // Not counted: the session ends with it.
        self.push(Out::Frame {
            id: None,
            json: Bytes::from(frame.to_string()),
            counted: 0,
        });
    }

    fn stopped(&mut self) {
        self.out = None;
        if let Some(id) = self.id {
            self.streams.left(id);
        }
    }
}

/// The client's stream is gone (it closed the connection, or the server dropped it).
#[derive(Message)]
#[rtype(result = "()")]
struct Gone;

impl Handler<Gone> for Session<Sse> {
    type Result = ();

    fn handle(&mut self, _: Gone, ctx: &mut Self::Context) {
        self.client_closed("connection lost".into(), ctx);
    }
}

/// A fresh token for a live session, already verified: the session goes on under it if it names
/// the same account and user (answers whether it did).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Refresh(pub Identity);

impl Handler<Refresh> for Session<Sse> {
    type Result = bool;

    fn handle(&mut self, Refresh(identity): Refresh, ctx: &mut Self::Context) -> bool {
        self.refresh(&identity, None, ctx)
    }
}

/// The live event-stream sessions of this server, by id: where a token refresh finds its
/// session. One entry per live session, removed as it stops.
#[derive(Default)]
pub struct Streams {
    live: Mutex<HashMap<SessionId, Addr<Session<Sse>>>>,
}

impl Streams {
    pub fn find(&self, id: SessionId) -> Option<Addr<Session<Sse>>> {
        self.lock().get(&id).cloned()
    }

    fn left(&self, id: SessionId) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Addr<Session<Sse>>>> {
        // A panic elsewhere while holding it leaves the map as it was: still usable.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts a session on an event stream; returns the stream, the response's body. `make` builds
/// the session on the wire it is given.
pub fn start(
    streams: &Arc<Streams>,
    make: impl FnOnce(Sse) -> Session<Sse>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + 'static {
    let (sender, receiver) = mpsc::unbounded_channel();
    let retry = format!("retry: {RETRY_MS}\n\n");
    let _ = sender.send(Out::Raw {
        bytes: Bytes::from(retry),
        counted: 0,
    });
    let took = Arc::new(AtomicBool::new(false));
    let wire = Sse {
        out: Some(sender),
        took: took.clone(),
        streams: streams.clone(),
        id: None,
    };
    let mut session = make(wire);
    let (id, backlog) = (session.id(), session.backlog());
    session.wire_mut().id = Some(id);
    let address = session.start();
    streams.lock().insert(id, address.clone());
    EventStream {
        out: receiver,
        rest: Vec::new(),
        backlog,
        took,
        session: address,
    }
}

/// The response body: what the session queued, as the event-stream format, counted off the
/// backlog as actix-http takes it (it takes the next piece once it has written the last into
/// its buffer, up to its own bound).
struct EventStream {
    out: mpsc::UnboundedReceiver<Out>,
    /// The rest of the frame being yielded, last piece first, with what each uncounts.
    rest: Vec<(Bytes, usize)>,
    backlog: Arc<Backlog>,
    took: Arc<AtomicBool>,
    session: Addr<Session<Sse>>,
}

impl EventStream {
    /// The frame in pieces, so that its JSON — shared with every other recipient — is not
    /// copied: the head, the JSON, the blank line that ends the event.
    fn split(&mut self, out: Out) -> (Bytes, usize) {
        match out {
            Out::Raw { bytes, counted } => (bytes, counted),
            Out::Frame { id, json, counted } => {
                let head = match id {
                    Some(id) => format!("id: {id}\ndata: "),
                    None => "data: ".to_owned(),
                };
                self.rest.push((Bytes::from_static(b"\n\n"), 0));
                self.rest.push((json, counted));
                (Bytes::from(head), 0)
            }
        }
    }
}

impl Stream for EventStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        let (bytes, counted) = match self.rest.pop() {
            Some(piece) => piece,
            None => match self.out.poll_recv(cx) {
                Poll::Ready(Some(out)) => self.split(out),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            },
        };
        self.backlog.taken(counted);
        self.took.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Ok(bytes)))
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        // Nothing if the session has already ended.
        self.session.do_send(Gone);
    }
}
