//! Socket.IO compatibility: `/socket.io/` speaks Socket.IO v5 over Engine.IO v4, so a frontend
//! built on `socket.io-client` connects by changing only its URL.
//!
//! It is a second wire of the same engine: a connected client is a [`Session`] like any on
//! `/ws` — same room, auth, requests, resume and backpressure — whose frames are Socket.IO
//! packets ([`wire`]). Underneath, an Engine.IO connection ([`link`]) is carried by HTTP
//! long-polling, a WebSocket ([`socket`]), or the one then the other. The request handlers here:
//!
//! - `GET /socket.io/?EIO=4&transport=polling` opens a connection (the open packet); with `&sid=`,
//!   waits for packets.
//! - `POST /socket.io/?EIO=4&transport=polling&sid=…` carries the client's packets.
//! - `GET /socket.io/?EIO=4&transport=websocket[&sid=…]` opens one on a WebSocket, or upgrades.
//!
//! Only the default namespace is served, and binary attachments are refused, each with an error
//! the client can show.
//!
//! Opening a connection takes no credential, so until a CONNECT with a token that verifies
//! starts its session, a connection is bounded: so many per address and in all ([`admission`]),
//! closed after the handshake timeout, after its first refused CONNECT, or when it posts more
//! than a few packets at once; and every token tried counts against the client's address
//! ([`crate::auth::throttle`]).
//!
//! An adapter: uses the engine's sessions, the store and the base layer, never the HTTP layer —
//! the server hands it [`SocketIo`], and it refuses with its own [`Refusal`].

pub mod admission;
pub mod link;
pub mod socket;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use actix::Actor;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;

use crate::actors::session::{self, Session};
use crate::auth::throttle::{peer, Authenticator, Refused};
use crate::auth::{self, TokenError};
use crate::channel::{split_list, Channel, ChannelsError, InvalidChannel};
use crate::config::{Handshakes, Origins, Secret};
use crate::ids::AccountId;
use crate::metrics;
use crate::protocol::socket_io::{self as packet, FromClient, Packet};
use crate::protocol::{ResumePoint, SinceError};
use crate::store::{events, Store, StoreError};
use admission::{Admission, Crowded};
use link::{Link, PollError};
use socket::Socket;
use wire::{pid_of, Engine, FromLink};

/// Packets a POST may carry while its connection has no session: a CONNECT (one per namespace)
/// and the odd noop. A client sends its events only once connected.
const PACKETS_BEFORE_SESSION: usize = 8;

/// What the Socket.IO adapter is handed by the server that routes to it: its connections and
/// the engine's handles, so that it needs nothing of the HTTP layer's state.
pub struct SocketIo {
    pub engines: Arc<Engines>,
    pub sessions: Arc<session::Shared>,
    /// Verifies tokens, with failed authentications limited per client address.
    pub authenticator: Arc<Authenticator>,
    pub store: Store,
    /// Set when the server starts stopping: no connection is opened then.
    pub draining: Arc<AtomicBool>,
    /// Which pages may open a connection.
    pub origins: Origins,
}

/// Why a Socket.IO transport request is refused; the HTTP layer answers each as its error.
#[derive(Debug)]
pub enum Refusal {
    /// The request does not follow Engine.IO 4, or names no open connection.
    EngineIo {
        code: &'static str,
        message: &'static str,
    },
    Draining,
    OriginNotAllowed,
    /// The client's address has failed to authenticate too often.
    Auth(Refused),
    /// Too many connections without a session, from this address or from all.
    TooManyUnauthenticated {
        server_wide: bool,
        retry_after: Duration,
    },
    NotWebSocket,
    InvalidBody(String),
    PayloadTooLarge {
        limit: usize,
    },
}

/// The open Engine.IO connections of this node, by `sid`.
pub struct Engines {
    links: Mutex<HashMap<String, Arc<Link>>>,
    /// Which connections without a session are let in.
    admission: Arc<Admission>,
}

impl Engines {
    pub fn new(handshakes: Handshakes) -> Self {
        Self {
            links: Mutex::default(),
            admission: Admission::new(handshakes),
        }
    }

    /// How long a connection (or a WebSocket probing to upgrade one) may take to get on with it.
    fn handshake_timeout(&self) -> Duration {
        self.admission.limits().timeout
    }

    fn get(&self, sid: &str) -> Option<Arc<Link>> {
        self.lock().get(sid).cloned()
    }

    fn forget(&self, sid: &str) {
        self.lock().remove(sid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Link>>> {
        self.links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Deserialize)]
pub struct Query {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Polling,
    WebSocket,
}

impl Query {
    fn transport(&self) -> Result<Transport, Refusal> {
        if self.eio.as_deref() != Some("4") {
            return Err(Refusal::EngineIo {
                code: "unsupported-protocol",
                message: "only Engine.IO 4 (EIO=4, Socket.IO v3 and later clients) is served",
            });
        }
        match self.transport.as_deref() {
            Some("polling") => Ok(Transport::Polling),
            Some("websocket") => Ok(Transport::WebSocket),
            _ => Err(Refusal::EngineIo {
                code: "unknown-transport",
                message: "`transport` must be `polling` or `websocket`",
            }),
        }
    }

    fn link(&self, state: &SocketIo) -> Result<Arc<Link>, Refusal> {
        self.sid
            .as_deref()
            .and_then(|sid| state.engines.get(sid))
            .ok_or(Refusal::EngineIo {
                code: "unknown-sid",
                message: "no such Engine.IO connection (it closed, or lives on another node)",
            })
    }
}

/// `GET /socket.io/`
pub async fn get(
    req: HttpRequest,
    query: web::Query<Query>,
    state: Arc<SocketIo>,
) -> Result<HttpResponse, Refusal> {
    let transport = query.transport()?;
    if query.sid.is_none() {
        return open(&req, transport, state);
    }
    let link = query.link(&state)?;
    match transport {
        Transport::WebSocket => {
            if !link.probe() {
                return Err(Refusal::EngineIo {
                    code: "overlapping-upgrade",
                    message: "this connection is already upgrading, or upgraded",
                });
            }
            let socket = Socket::upgrading(link.clone(), state.clone());
            serve(socket, &req, &state, link.clone()).inspect_err(|_| link.upgrade_abandoned())
        }
        Transport::Polling => {
            let wait = state.sessions.heartbeat.interval;
            match link.poll(state.sessions.max_frame_bytes, wait).await {
                Ok(body) => Ok(HttpResponse::Ok()
                    .content_type("text/plain; charset=UTF-8")
                    .body(body)),
                Err(PollError::Gone) => Err(Refusal::EngineIo {
                    code: "unknown-sid",
                    message: "this connection no longer polls (it upgraded or closed)",
                }),
                Err(PollError::Overlap) => Err(Refusal::EngineIo {
                    code: "overlapping-poll",
                    message: "a poll was already waiting; the connection is closed",
                }),
            }
        }
    }
}

/// A new connection: the open packet, as the poll's answer or the socket's first message.
fn open(
    req: &HttpRequest,
    transport: Transport,
    state: Arc<SocketIo>,
) -> Result<HttpResponse, Refusal> {
    if state.draining.load(Ordering::Relaxed) {
        return Err(Refusal::Draining);
    }
    if !auth::origin_allowed(req, &state.origins) {
        return Err(Refusal::OriginNotAllowed);
    }
    let peer = peer(req);
    state.authenticator.check(peer).map_err(Refusal::Auth)?;
    let handshakes = state.engines.admission.limits();
    let slot = state.engines.admission.admit(peer).map_err(|crowded| {
        log::debug!("socket.io connection refused: too many unauthenticated ({crowded:?})");
        Refusal::TooManyUnauthenticated {
            server_wide: crowded == Crowded::Server,
            retry_after: handshakes.timeout,
        }
    })?;
    // A token given with the handshake is checked at CONNECT, so that a bad one is answered
    // where the client's `connect_error` handler sees it.
    let handshake_token = match auth::token_from_request(req) {
        Ok(token) if token.len() > auth::MAX_TOKEN_BYTES => Some(Err(TokenError::TooLong)),
        Ok(token) => Some(Ok(Secret::new(token))),
        Err(_) => None,
    };
    let sid = crate::ids::random_id("eio");
    let link = Arc::new(Link::new(
        sid.clone(),
        handshake_token,
        peer,
        state.sessions.max_queued_bytes,
        slot,
        Arc::downgrade(&state.engines),
    ));
    let heartbeat = &state.sessions.heartbeat;
    let upgrades: &[&str] = match transport {
        Transport::Polling => &["websocket"],
        Transport::WebSocket => &[],
    };
    let open = packet::open(
        &sid,
        upgrades,
        heartbeat.interval.as_millis() as u64,
        (heartbeat.timeout - heartbeat.interval).as_millis() as u64,
        state.sessions.max_frame_bytes,
    );
    let response = match transport {
        Transport::Polling => HttpResponse::Ok()
            .content_type("text/plain; charset=UTF-8")
            .body(open),
        Transport::WebSocket => {
            let socket = Socket::opening(link.clone(), state.clone(), open);
            serve(socket, req, &state, link.clone())?
        }
    };
    state.engines.lock().insert(sid, link.clone());
    expire_unless_connected(Arc::downgrade(&link), state.engines.handshake_timeout());
    Ok(response)
}

fn serve(
    socket: Socket,
    req: &HttpRequest,
    state: &SocketIo,
    link: Arc<Link>,
) -> Result<HttpResponse, Refusal> {
    let max = state.sessions.max_frame_bytes;
    crate::ws::serve(socket, req, &[], max, link.backlog.clone()).map_err(|_| Refusal::NotWebSocket)
}

/// A connection whose client has not connected a session by the handshake timeout is closed.
/// (Weak: a connection closed before then is not kept for this.)
fn expire_unless_connected(link: Weak<Link>, after: Duration) {
    actix::spawn(async move {
        tokio::time::sleep(after).await;
        if let Some(link) = link.upgrade().filter(|link| link.session().is_none()) {
            log::debug!("socket.io connection closed: no session within the handshake timeout");
            link.close();
        }
    });
}

/// `POST /socket.io/`: the client's packets, handled in order.
pub async fn post(
    query: web::Query<Query>,
    payload: web::Payload,
    state: Arc<SocketIo>,
) -> Result<HttpResponse, Refusal> {
    if query.transport()? != Transport::Polling {
        return Err(Refusal::EngineIo {
            code: "unknown-transport",
            message: "packets are posted on the polling transport",
        });
    }
    let link = query.link(&state)?;
    if link.is_closed() {
        return Err(Refusal::EngineIo {
            code: "unknown-sid",
            message: "this connection is closed",
        });
    }
    let limit = state.sessions.max_frame_bytes;
    let body = match payload.to_bytes_limited(limit).await {
        Ok(body) => body.map_err(|e| Refusal::InvalidBody(e.to_string()))?,
        Err(_) => {
            // As a WebSocket message over the limit closes the socket.
            link.close();
            return Err(Refusal::PayloadTooLarge { limit });
        }
    };
    let body = std::str::from_utf8(&body)
        .map_err(|_| Refusal::InvalidBody("the payload is not UTF-8 text".into()))?;
    let packets = body.split(packet::SEPARATOR);
    if link.session().is_none() && packets.clone().nth(PACKETS_BEFORE_SESSION).is_some() {
        link.close();
        return Err(Refusal::EngineIo {
            code: "too-many-packets",
            message: "a connection without a session posts a CONNECT and little else; it is closed",
        });
    }
    for packet in packets {
        receive(&state, &link, packet).await;
    }
    Ok(HttpResponse::Ok().content_type("text/html").body("ok"))
}

/// One Engine.IO packet from the client, by whichever transport it came.
async fn receive(state: &SocketIo, link: &Arc<Link>, text: &str) {
    // What a closed connection's client sent after its last packet (the rest of a POST, or
    // messages the socket had read) is not looked at.
    if link.is_closed() {
        return;
    }
    let session = link.session();
    match FromClient::decode(text) {
        Some(FromClient::Pong) => {
            if let Some(session) = session {
                session.do_send(FromLink::Pong);
            }
        }
        Some(FromClient::Message(text)) => match (Packet::decode(text), session) {
            (Ok((namespace, Packet::Connect { auth })), None) if namespace == "/" => {
                connect(state, link, auth).await;
            }
            (Ok((namespace, Packet::Connect { .. })), _) if namespace != "/" => {
                link.refuse(packet::connect_error(
                    &namespace,
                    "unknown-namespace",
                    "only the default namespace (/) is served",
                ));
            }
            // For a namespace that never connected: dropped, as Socket.IO servers do.
            (Ok((namespace, _)), _) if namespace != "/" => {}
            (packet, Some(session)) => {
                session.do_send(FromLink::Packet(packet.map(|(_, packet)| packet)));
            }
            // Anything but CONNECT before CONNECT is dropped, likewise.
            (_, None) => {}
        },
        Some(FromClient::Close) => link.close(),
        // A ping from the client (only a probe, handled by the socket), a noop, an upgrade on
        // the wrong transport: nothing to do.
        Some(FromClient::Ping(_) | FromClient::Noop | FromClient::Upgrade) => {}
        None => {
            log::debug!("not an Engine.IO packet; closing the connection");
            link.close();
        }
    }
}

/// A CONNECT: the token verified, the resume point (if any) checked, the session started — or
/// CONNECT_ERROR with a code and a message, and the connection closed.
async fn connect(state: &SocketIo, link: &Arc<Link>, auth: Value) {
    let refuse = |code: &str, message: &str| {
        link.refuse(packet::connect_error("/", code, message));
    };
    let token = match auth.get("token") {
        Some(Value::String(token)) => Some(token.clone()),
        Some(_) => {
            return refuse("malformed-token", "`auth.token` must be a string");
        }
        None => match &link.handshake_token {
            Some(Ok(token)) => Some(token.expose().to_owned()),
            Some(Err(e)) => {
                metrics::auth_failure(e.code());
                return refuse(e.code(), &e.to_string());
            }
            None => None,
        },
    };
    let Some(token) = token else {
        metrics::auth_failure("missing-token");
        return refuse(
            "missing-token",
            "connect with `auth: { token }`, an `Authorization: Bearer` header or `?token=`",
        );
    };
    let identity = match state.authenticator.verify(link.peer, &token) {
        Ok(identity) => identity,
        Err(refused) => {
            metrics::auth_failure(refused.code());
            log::info!("socket.io connect refused code={}", refused.code());
            return refuse(refused.code(), &refused.to_string());
        }
    };

    let channels = match channels_of(&auth, &identity) {
        Ok(channels) => channels,
        Err(refused) => return refuse(refused.code(), &refused.to_string()),
    };

    // Recovering: the `pid` a session of this account gave, sent back with the last sequence
    // number seen as its offset. One given to another account's session is not honoured.
    let pid = auth
        .get("pid")
        .and_then(Value::as_str)
        .filter(|pid| pid_of(pid, identity.account.as_str()))
        .map(str::to_owned);
    let offset = auth.get("offset").filter(|_| pid.is_some());
    let recovery = match Recovery::check(state, &identity.account, offset).await {
        Ok(recovery) => recovery,
        Err(e) => {
            log::error!("socket.io connect failed: {e}");
            return refuse("unavailable", "the server cannot serve this now; retry");
        }
    };
    if link.is_closed() {
        return;
    }
    let (since, seen_seq, refused) = match recovery {
        Recovery::Fresh => (None, None, None),
        Recovery::From { since, seq } => (Some(since), Some(seq), None),
        Recovery::Refused { error, since } => (None, None, Some((error, since))),
    };
    let wire = Engine::new(link.clone(), pid.filter(|_| since.is_some()));
    let mut session = Session::new(
        identity,
        link.peer,
        seen_seq,
        since,
        state.sessions.clone(),
        wire,
    )
    .with_channels(channels);
    if let Some((error, since)) = refused {
        // Connected afresh (`socket.recovered` is false), and told why with `resume-failed`.
        session = session.with_refused_resume(error, since);
    }
    link.set_session(session.start());
}

/// Entries `auth.channels` may hold before duplicates are dropped: enough for every way of
/// repeating [`crate::channel::MAX_CHANNELS_PER_SESSION`] names a client would plausibly send, and a bound on the
/// work of deduplicating. More is `too-many-channels`.
const MAX_LISTED_CHANNELS: usize = 1024;

/// The channels a CONNECT asks to follow: `auth.channels`, an array of names (or one string of
/// names separated by commas), each allowed by the token.
fn channels_of(auth: &Value, identity: &auth::Identity) -> Result<Vec<Channel>, ChannelsError> {
    match auth.get("channels") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(list)) => identity.channels.admit(split_list(list)),
        Some(Value::Array(names)) => {
            if names.len() > MAX_LISTED_CHANNELS {
                return Err(ChannelsError::TooMany);
            }
            let names = names.iter().map(|name| name.as_str().unwrap_or(" "));
            identity.channels.admit(names)
        }
        Some(_) => Err(ChannelsError::Invalid(InvalidChannel)),
    }
}

/// What a CONNECT's recovery offset comes to, by the resume-point check every wire makes.
enum Recovery {
    /// No recovery asked for.
    Fresh,
    /// Replay after `since`; `seq` is the account's sequence number now. (Beyond retention,
    /// the session says `resume-failed` once connected, as on `/ws`.)
    From { since: u64, seq: u64 },
    /// The offset is not a sequence number (`since` is then `None`), or is ahead of the account.
    Refused {
        error: SinceError,
        since: Option<u64>,
    },
}

impl Recovery {
    async fn check(
        state: &SocketIo,
        account: &AccountId,
        offset: Option<&Value>,
    ) -> Result<Self, StoreError> {
        let Some(offset) = offset else {
            return Ok(Self::Fresh);
        };
        let since = match SinceError::parse(offset) {
            Ok(since) => since,
            Err(error) => return Ok(Self::Refused { error, since: None }),
        };
        let account = account.clone();
        let history = state
            .store
            .run(move |conn| events::history(conn, &account))
            .await?;
        Ok(match ResumePoint::check(since, history) {
            Ok(_) => Self::From {
                since,
                seq: history.1,
            },
            Err(error) => Self::Refused {
                error,
                since: Some(since),
            },
        })
    }
}
