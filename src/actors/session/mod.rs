//! A session: one client connection, as an actor.
//!
//! It joins its account's room through the broker as it starts (or just before, when its
//! transport registers it first) and leaves when it stops; it writes the frames its room
//! delivers; it pings the client every heartbeat interval and closes a connection that stays
//! silent past the timeout; it answers bad frames with an `error` frame and carries on. How frames
//! reach the client is its [`Wire`], which the transports implement as adapters — the native
//! protocol on a WebSocket (`ws`), Socket.IO (`socket_io`) — the session's behaviour is the same
//! on all of them, and it names none. The rest lives beside this file:
//!
//! - [`wire`] — what a wire provides;
//! - [`backlog`] — the count of bytes queued for the client, which every transport takes down as
//!   its client takes them, so a client that does not read is closed at a bound instead of
//!   growing the server's memory;
//! - [`requests`] — the user's `send`, `read`, `typing` and `presence` frames;
//! - [`channels`] — the channels it follows: on connecting, `subscribe` and `unsubscribe`;
//! - [`lifetime`] — the token's expiry on a live connection, and its refresh in place;
//! - [`replay`] — resuming after a reconnect (`?since=` or a `resume` frame): replaying what was
//!   missed, merged with live events by sequence number.
//!
//! Uses the broker, the `Service` port, `auth`, `config`, `event`, `protocol`, `store`, `metrics`;
//! never actix-web or a transport.

mod backlog;
mod channels;
mod lifetime;
mod replay;
mod requests;
mod wire;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytestring::ByteString;
use tokio::sync::oneshot;

use super::broker::{Broker, FollowRequest, Join, Leave};
use super::service::{SendRequest, Service};
use crate::auth::throttle::Authenticator;
use crate::auth::Identity;
use crate::config::Heartbeat;
use crate::event::Handed;
use crate::ids::SessionId;
use crate::metrics;
use crate::protocol::{ClientFrame, Close, FrameError, ServerFrame};
use crate::store::Store;
pub use backlog::{frame_size, Backlog, Reservation};
pub use lifetime::TOKEN_MISMATCH;
pub use wire::{Framing, Wire};

/// A frame for the client, already serialized (the same bytes go to every recipient). `seq` is
/// the stored event's sequence number; `None` for an ephemeral event.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    pub frame: ByteString,
    pub seq: Option<u64>,
    /// Dropped once the frame is written: see [`Handed`].
    pub handed: Option<Handed>,
}

/// What the room tells a session, besides events.
#[derive(Message)]
#[rtype(result = "()")]
pub enum FromRoom {
    /// The room has taken the session in; `seq` is the last event that will not be delivered.
    Joined { seq: u64 },
    /// The server is shutting down: close with 1001, so the client reconnects elsewhere or later.
    GoingAway,
    /// The user has as many sessions open as allowed: this one is refused (4004).
    TooManySessions,
    /// The room cannot take the session now (it cannot read the database): close with 1011, so
    /// the client comes back with backoff.
    Unavailable,
    /// The session follows `channel` from now on: its events after `seq` are delivered (the
    /// answer to a `subscribe`, which `request` was).
    Subscribed {
        channel: crate::channel::Channel,
        seq: u64,
        request: FollowRequest,
    },
    /// The application revoked the session's user, or the session (control API): close with
    /// 4005.
    Revoked,
    /// Event `seq` was not queued for this session, which is replaying history: the replay
    /// reads it from the database (see [`Backlog::reserve_stored`]).
    Missed { seq: u64 },
    /// Panics, as a bug would: for exercising the isolation of sessions.
    #[doc(hidden)]
    Fail,
}

/// What every session shares (one allocation for all of them).
pub struct Shared {
    pub broker: Addr<Broker>,
    pub store: Store,
    /// What the user's sends, reads and typing mean: the services, behind the engine's port.
    pub service: Arc<dyn Service>,
    pub heartbeat: Heartbeat,
    pub max_frame_bytes: usize,
    /// Bytes queued for a client and not yet taken by the socket writer before the session is
    /// closed as a slow consumer.
    pub max_queued_bytes: usize,
    pub tokens: Tokens,
    /// Frames a client may send per second (twice as many in a burst).
    pub frames_per_second: std::num::NonZeroU32,
}

/// What a live session needs to know about tokens.
pub struct Tokens {
    /// Verifies a fresh token (`auth`), counting a failure against the client's address.
    pub authenticator: Arc<Authenticator>,
    /// The JWT leeway: a token is honoured this long past its `exp`, as at the handshake.
    pub leeway: std::time::Duration,
    /// How long before expiry the client is asked for a fresh token.
    pub refresh_lead: std::time::Duration,
}

pub struct Session<W: Wire> {
    id: SessionId,
    identity: Identity,
    /// The client's address: a fresh token that does not verify counts against it, as at the
    /// handshake.
    peer: Option<IpAddr>,
    /// The account's sequence number at authorisation, if it was read (for `?since=`), handed
    /// to the room on joining.
    seen_seq: Option<u64>,
    shared: Arc<Shared>,
    limits: requests::Limits,
    resume: replay::Resume,
    following: channels::Following,
    lifetime: lifetime::Lifetime,
    /// Bytes written for the client that the transport has not yet taken.
    backlog: Arc<Backlog>,
    /// When the client last showed it is alive (any frame, pongs included).
    last_heard: Instant,
    /// Why the session ended, for the disconnect log line; set once it is closing.
    end_reason: Option<String>,
    /// The transport registered the session with its room before starting it (see
    /// [`Session::join_before_start`]); otherwise the session does as it starts.
    joined_before_start: bool,
    wire: W,
}

impl<W: Wire> Session<W> {
    /// `peer`: the client's address; `since`: the last sequence number the client processed,
    /// when it reconnects (`?since=`).
    pub fn new(
        identity: Identity,
        peer: Option<IpAddr>,
        seen_seq: Option<u64>,
        since: Option<u64>,
        shared: Arc<Shared>,
        wire: W,
    ) -> Self {
        let backlog = wire
            .backlog()
            .unwrap_or_else(|| Arc::new(Backlog::new(shared.max_queued_bytes)));
        // Set before joining: an event the room cannot queue before the replay starts is read
        // with the rest, not a reason to close the session.
        backlog.set_replaying(since.is_some());
        backlog.set_stall_limit(shared.heartbeat.interval);
        Self {
            id: SessionId::random(),
            identity,
            peer,
            seen_seq,
            limits: requests::Limits::new(shared.frames_per_second),
            resume: replay::Resume::new(since),
            following: channels::Following::default(),
            lifetime: lifetime::Lifetime::default(),
            shared,
            backlog,
            last_heard: Instant::now(),
            end_reason: None,
            joined_before_start: false,
            wire,
        }
    }

    fn closing(&self) -> bool {
        self.end_reason.is_some()
    }

    /// The session's id, as its welcome tells the client.
    pub fn id(&self) -> SessionId {
        self.id
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The count of bytes queued for the client, for the transport to take down.
    pub fn backlog(&self) -> Arc<Backlog> {
        self.backlog.clone()
    }

    /// The wire's own state, for the transport that implements it.
    pub(crate) fn wire_mut(&mut self) -> &mut W {
        &mut self.wire
    }

    /// For a transport that registers the session with its room before starting it, so that
    /// the room's answer is in its mailbox when it starts: the request to send the broker once
    /// the session has an address.
    pub fn join_before_start(
        &mut self,
    ) -> impl FnOnce(Addr<Self>, Option<oneshot::Sender<()>>) -> Join {
        self.joined_before_start = true;
        self.join()
    }

    /// Ends the session for `close`, telling the client why on its wire.
    pub(crate) fn close(&mut self, ctx: &mut W::Context, close: Close) {
        if self.closing() {
            return;
        }
        self.end_reason = Some(close.reason().to_owned());
        match close {
            Close::HeartbeatTimeout => metrics::heartbeat_timeout(),
            Close::SlowConsumer => metrics::slow_consumer(),
            Close::TokenExpired => metrics::auth_failure("token-expired"),
            Close::TokenRefused => metrics::auth_failure("token-refused"),
            _ => {}
        }
        self.wire.close(ctx, close, self.lifetime.welcomed);
        ctx.stop();
    }

    /// Writes a frame of the session's own for the client, counting it against the backlog
    /// bound: a client that does not read is closed (4001) rather than allowed to grow the
    /// server's memory. It resumes from its last sequence number, so it loses nothing.
    pub(crate) fn write(&mut self, ctx: &mut W::Context, frame: &ServerFrame) {
        let text = self.wire.frame(frame);
        self.write_framed(text, ctx);
    }

    /// Writes text already framed for the wire, counting it like any frame of the session's.
    pub(crate) fn write_framed(&mut self, text: ByteString, ctx: &mut W::Context) {
        if self.reserve(ctx, text.len()) {
            self.wire.send(ctx, text);
        }
    }

    /// The client ended the session (its socket closed, or it said goodbye).
    pub(crate) fn client_closed(&mut self, reason: String, ctx: &mut W::Context) {
        self.end_reason.get_or_insert(reason);
        ctx.stop();
    }

    /// Counts a frame with `payload` bytes; closes the session when the bound is passed.
    pub(crate) fn reserve(&mut self, ctx: &mut W::Context, payload: usize) -> bool {
        if self.closing() {
            return false;
        }
        if self.backlog.reserve(frame_size(payload)) {
            return true;
        }
        self.slow_consumer(ctx);
        false
    }

    fn slow_consumer(&mut self, ctx: &mut W::Context) {
        log::warn!(
            "slow consumer account={} user={} session={} queued={}",
            self.identity.account,
            self.identity.user,
            self.id,
            self.backlog.queued()
        );
        self.close(ctx, Close::SlowConsumer);
    }

    fn send_error(&mut self, ctx: &mut W::Context, error: &FrameError) {
        log::debug!(
            "bad frame account={} user={} session={} code={}",
            self.identity.account,
            self.identity.user,
            self.id,
            error.code()
        );
        self.write(ctx, &ServerFrame::error(error));
    }

    /// A frame from the client, in the native protocol's terms whatever its wire.
    pub(crate) fn on_frame(
        &mut self,
        frame: Result<ClientFrame, FrameError>,
        ctx: &mut W::Context,
    ) {
        match frame {
            Ok(ClientFrame::Ping { reference }) => {
                self.write(ctx, &ServerFrame::Pong { reference });
            }
            Ok(ClientFrame::Send {
                conversation_id,
                text,
                attachments,
                client_msg_id,
                reference,
            }) => {
                let send = SendRequest {
                    conversation_id,
                    text,
                    attachments: attachments.map(|a| a.to_string()),
                    client_msg_id,
                };
                self.on_send(send, reference, ctx);
            }
            Ok(ClientFrame::Read {
                conversation_id,
                up_to,
                reference,
            }) => self.on_read(conversation_id, up_to, reference, ctx),
            Ok(ClientFrame::Typing { conversation_id }) => self.on_typing(conversation_id, ctx),
            Ok(ClientFrame::Resume { since }) => self.on_resume(&since, ctx),
            Ok(ClientFrame::Presence { reference }) => self.on_presence(reference, ctx),
            Ok(ClientFrame::Auth { token, reference }) => self.on_auth(&token, reference, ctx),
            Ok(ClientFrame::Subscribe {
                channel,
                since,
                reference,
            }) => self.on_subscribe(&channel, since, reference, ctx),
            Ok(ClientFrame::Publish {
                channel,
                event,
                data,
                reference,
            }) => {
                self.on_channel_message(&channel, &event, data, reference, ctx);
            }
            Ok(ClientFrame::Unsubscribe { channel, reference }) => {
                self.on_unsubscribe(&channel, reference, ctx)
            }
            Err(error) => self.send_error(ctx, &error),
        }
    }
}

impl<W: Wire> Actor for Session<W> {
    type Context = W::Context;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::session_opened(W::TRANSPORT);
        log::info!(
            "connect account={} user={} session={}",
            self.identity.account,
            self.identity.user,
            self.id
        );
        ctx.run_interval(self.shared.heartbeat.interval, |session, ctx| {
            session.limits.frames_refused = 0;
            session.check_token(ctx);
            if session.closing() {
                return;
            }
            if session.wire.heard_since_last_asked() {
                session.last_heard = Instant::now();
            }
            if session.last_heard.elapsed() > session.shared.heartbeat.timeout {
                session.close(ctx, Close::HeartbeatTimeout);
            } else if session.backlog.overflowed() {
                // The room stopped queueing events for this client.
                session.slow_consumer(ctx);
            } else if session.backlog.stalled() {
                // It stopped reading in the middle of a replay.
                session.slow_consumer(ctx);
            } else if session.reserve(ctx, W::PING_BYTES) {
                session.wire.ping(ctx);
            }
        });
        if !self.joined_before_start {
            self.shared.broker.do_send(self.join()(ctx.address(), None));
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        metrics::session_closed(W::TRANSPORT);
        self.shared.broker.do_send(Leave {
            session: self.id,
            account: self.identity.account.clone(),
        });
        self.wire.stopped();
        log::info!(
            "disconnect account={} user={} session={} reason={}",
            self.identity.account,
            self.identity.user,
            self.id,
            self.end_reason.as_deref().unwrap_or("connection lost")
        );
    }
}

impl<W: Wire> Session<W> {
    /// The request registering this session with its account's room, for once the session has
    /// an address (its transport gives it one, or it has started).
    fn join(&self) -> impl FnOnce(Addr<Self>, Option<oneshot::Sender<()>>) -> Join {
        let (session, seen_seq, backlog) = (self.id, self.seen_seq, self.backlog.clone());
        let channels = self.following.channels.clone();
        let (account, user) = (self.identity.account.clone(), self.identity.user.clone());
        move |address, answered| Join {
            session,
            account,
            user,
            seen_seq,
            framing: W::FRAMING,
            // SSE shares the native framing: the wire itself says which it is.
            transport: match W::TRANSPORT {
                "ws" => "websocket",
                other => other,
            },
            deliver: address.clone().recipient(),
            notices: address.recipient(),
            backlog,
            answered,
            channels,
            connected_at: crate::store::now_ms(),
        }
    }
}

impl<W: Wire> Handler<FromRoom> for Session<W> {
    type Result = ();

    fn handle(&mut self, notice: FromRoom, ctx: &mut Self::Context) {
        self.guarded(ctx, |session, ctx| match notice {
            FromRoom::Joined { seq } => session.joined(seq, ctx),
            FromRoom::GoingAway => session.close(ctx, Close::ServerShutdown),
            FromRoom::TooManySessions => session.close(ctx, Close::TooManySessions),
            FromRoom::Unavailable => session.close(ctx, Close::ServerError),
            FromRoom::Missed { seq } => session.missed(seq, ctx),
            FromRoom::Revoked => session.close(ctx, Close::Revoked),
            FromRoom::Subscribed {
                channel,
                seq,
                request,
            } => session.subscribed(channel, seq, request, ctx),
            FromRoom::Fail => panic!("session failing on request"),
        });
    }
}

impl<W: Wire> Handler<Deliver> for Session<W> {
    type Result = ();

    fn handle(&mut self, deliver: Deliver, ctx: &mut Self::Context) {
        self.guarded(ctx, |session, ctx| session.deliver(deliver, ctx));
    }
}

impl<W: Wire> Session<W> {
    /// Runs a handler so that a panic in it — a bug — closes this session (1011) and nothing
    /// else: it must not unwind through the worker thread, which serves other sessions too.
    pub(crate) fn guarded(
        &mut self,
        ctx: &mut W::Context,
        handler: impl FnOnce(&mut Self, &mut W::Context),
    ) {
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&mut *self, ctx)));
        if outcome.is_err() {
            log::error!(
                "session failed account={} user={} session={}; closing it",
                self.identity.account,
                self.identity.user,
                self.id
            );
            self.close(ctx, Close::ServerError);
        }
    }

    /// The client showed it is alive; `counted`: it asked for something, which counts against
    /// its frame rate. Answers whether to act on what it sent.
    pub(crate) fn heard(&mut self, counted: bool, ctx: &mut W::Context) -> bool {
        self.last_heard = Instant::now();
        !counted || self.admit_frame(ctx)
    }
}
