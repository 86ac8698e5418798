//! A session: one WebSocket connection, as an actor.
//!
//! It joins its account's room through the broker when it starts and leaves when it stops; it
//! writes the frames its room delivers; it pings the client every heartbeat interval and closes a
//! connection that stays silent past the timeout; it answers bad frames with an `error` frame and
//! carries on. It carries out the user's frames — `send`, `read` (through [`inbox`], on the
//! blocking pool, exactly as the REST API does), `typing` and `presence` (through the broker) —
//! without ever waiting on them in its own mailbox. The transport (actix-web-actors, deprecated upstream in favour of actix-ws) is used
//! only in this module and in `api::ws`, so moving off it touches those two places.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web::web::{Bytes, BytesMut};
use actix_web_actors::ws::{self, CloseCode, CloseReason};
use bytestring::ByteString;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{json, Value};

use super::broker::{Broker, Ephemeral, Join, Leave, OnlineUsers};
use crate::auth::Identity;
use crate::config::Heartbeat;
use crate::ids::SessionId;
use crate::inbox::{self, InboxError, Send};
use crate::outbound::{Dispatch, Dispatcher};
use crate::protocol::{ephemeral_frame, ClientFrame, Close, FrameError, ServerFrame};
use crate::store::{self, conversations, Store};

/// Sends a session may make: a burst of this many …
const SEND_BURST: u32 = 20;
/// … refilled at this many per second.
const SENDS_PER_SECOND: u32 = 10;
/// `typing` frames forwarded per session: one per this interval; the rest are dropped.
const TYPING_INTERVAL: Duration = Duration::from_secs(1);

/// A frame for the client, already serialized (the same bytes go to every recipient).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub ByteString);

/// The room has taken the session in; `seq` is the last event that will not be delivered.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Joined {
    pub seq: u64,
}

/// What every session shares (one allocation for all of them).
pub struct Shared {
    pub broker: Addr<Broker>,
    pub store: Store,
    pub dispatcher: Addr<Dispatcher>,
    pub heartbeat: Heartbeat,
    pub max_frame_bytes: usize,
}

pub struct Session {
    id: SessionId,
    identity: Identity,
    /// The account's sequence number at authorisation, handed to the room on joining.
    seen_seq: u64,
    shared: Arc<Shared>,
    sends: DefaultDirectRateLimiter,
    typing: DefaultDirectRateLimiter,
    /// When the client last showed it is alive (any frame, pongs included).
    last_heard: Instant,
    /// A fragmented message being reassembled; `None` almost always.
    fragments: Option<BytesMut>,
    /// Why the session ended, for the disconnect log line.
    end_reason: Option<String>,
}

impl Session {
    pub fn new(identity: Identity, seen_seq: u64, shared: Arc<Shared>) -> Self {
        let per_second = |n| NonZeroU32::new(n).expect("a positive rate");
        Self {
            id: SessionId::random(),
            identity,
            seen_seq,
            shared,
            sends: RateLimiter::direct(
                Quota::per_second(per_second(SENDS_PER_SECOND)).allow_burst(per_second(SEND_BURST)),
            ),
            typing: RateLimiter::direct(
                Quota::with_period(TYPING_INTERVAL).expect("a positive interval"),
            ),
            last_heard: Instant::now(),
            fragments: None,
            end_reason: None,
        }
    }

    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, close: Close) {
        self.end_reason = Some(close.reason().to_owned());
        ctx.close(Some(CloseReason {
            code: CloseCode::from(close.code()),
            description: Some(close.reason().to_owned()),
        }));
        ctx.stop();
    }

    fn send_error(&self, ctx: &mut ws::WebsocketContext<Self>, error: &FrameError) {
        log::debug!(
            "bad frame account={} user={} session={} code={}",
            self.identity.account,
            self.identity.user,
            self.id,
            error.code()
        );
        ctx.text(ServerFrame::error(error).to_text());
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        match ClientFrame::parse(text) {
            Ok(ClientFrame::Ping { reference }) => {
                ctx.text(ServerFrame::Pong { reference }.to_text());
            }
            Ok(ClientFrame::Send {
                conversation_id,
                text,
                attachments,
                client_msg_id,
                reference,
            }) => {
                let send = OwnedSend {
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
            Ok(ClientFrame::Presence { reference }) => self.on_presence(reference, ctx),
            Err(error) => self.send_error(ctx, &error),
        }
    }

    fn refuse(ctx: &mut ws::WebsocketContext<Self>, error: &InboxError, reference: Option<Value>) {
        if let InboxError::Store(e) = error {
            log::error!("session request failed: {e}");
        }
        let message = match error {
            InboxError::Store(_) => "internal error; try again".to_owned(),
            other => other.to_string(),
        };
        let frame = ServerFrame::Error {
            code: error.code(),
            message,
            reference,
            retry_after_ms: None,
        };
        ctx.text(frame.to_text());
    }

    fn on_send(
        &mut self,
        send: OwnedSend,
        reference: Option<Value>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        if let Err(not_until) = self.sends.check() {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let frame = ServerFrame::Error {
                code: "rate-limited",
                message: "too many messages; slow down".to_owned(),
                reference,
                retry_after_ms: Some(wait.as_millis().max(1) as u64),
            };
            ctx.text(frame.to_text());
            return;
        }
        if let Err(error) = send.borrow().validate() {
            return Self::refuse(ctx, &error, reference);
        }
        let shared = self.shared.clone();
        let (account, user) = (self.identity.account.clone(), self.identity.user.clone());
        let work = async move {
            let store = shared.store.clone();
            let broker = shared.broker.clone();
            let result = store
                .run(move |conn| {
                    let mut sent = store::write(conn, &account, |conn| {
                        inbox::send(conn, &account, &user, &send.borrow())
                    })?;
                    inbox::hand_off(&broker, &account, std::mem::take(&mut sent.events));
                    Ok::<_, InboxError>(sent)
                })
                .await;
            if let Ok(sent) = &result {
                if let Some(delivery_id) = sent.delivery.clone() {
                    shared.dispatcher.do_send(Dispatch { delivery_id });
                }
            }
            result
        };
        ctx.spawn(
            work.into_actor(self)
                .map(move |result, _, ctx| match result {
                    Ok(sent) => {
                        let ack = ServerFrame::Ack {
                            reference,
                            conversation_id: &sent.message.conversation_id,
                            message_id: Some(&sent.message.id),
                            seq: Some(sent.seq),
                            duplicate: sent.duplicate,
                        };
                        ctx.text(ack.to_text());
                    }
                    Err(error) => Self::refuse(ctx, &error, reference),
                }),
        );
    }

    fn on_read(
        &mut self,
        conversation_id: String,
        up_to: Option<String>,
        reference: Option<Value>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let (store, broker) = (self.shared.store.clone(), self.shared.broker.clone());
        let (account, user) = (self.identity.account.clone(), self.identity.user.clone());
        let id = conversation_id.clone();
        let work = async move {
            store
                .run(move |conn| {
                    let (_, events) = store::write(conn, &account, |conn| {
                        inbox::mark_read(conn, &account, &user, &id, up_to.as_deref())
                    })?;
                    inbox::hand_off(&broker, &account, events);
                    Ok::<_, InboxError>(())
                })
                .await
        };
        ctx.spawn(
            work.into_actor(self)
                .map(move |result, _, ctx| match result {
                    Ok(()) => {
                        let ack = ServerFrame::Ack {
                            reference,
                            conversation_id: &conversation_id,
                            message_id: None,
                            seq: None,
                            duplicate: false,
                        };
                        ctx.text(ack.to_text());
                    }
                    Err(error) => Self::refuse(ctx, &error, reference),
                }),
        );
    }

    /// Forwards "typing" to the others who see the conversation; at most one per
    /// [`TYPING_INTERVAL`], the rest dropped (a typing indicator loses nothing by it).
    fn on_typing(&mut self, conversation_id: String, ctx: &mut ws::WebsocketContext<Self>) {
        if self.typing.check().is_err() {
            return;
        }
        let (store, broker) = (self.shared.store.clone(), self.shared.broker.clone());
        let (account, user) = (self.identity.account.clone(), self.identity.user.clone());
        let work = async move {
            let (lookup_account, lookup_user, id) =
                (account.clone(), user.clone(), conversation_id.clone());
            let audience = store
                .run(move |conn| {
                    let conversation =
                        conversations::visible(conn, &lookup_account, &lookup_user, &id)?
                            .ok_or(InboxError::NotParticipant)?;
                    if conversation.is_external() {
                        return Ok(None);
                    }
                    let ids = conversations::participants_of(conn, &conversation.id)?;
                    Ok::<_, InboxError>(Some(
                        ids.iter()
                            .filter_map(|u| crate::ids::UserId::new(u).ok())
                            .collect(),
                    ))
                })
                .await?;
            let data = json!({ "conversation_id": conversation_id, "user_id": user.as_str() });
            broker.do_send(Ephemeral {
                account,
                users: audience,
                except: Some(user),
                frame: ephemeral_frame("typing", &data),
            });
            Ok::<_, InboxError>(())
        };
        ctx.spawn(work.into_actor(self).map(|result, _, ctx| {
            if let Err(error) = result {
                Self::refuse(ctx, &error, None);
            }
        }));
    }

    fn on_presence(&mut self, reference: Option<Value>, ctx: &mut ws::WebsocketContext<Self>) {
        let query = self.shared.broker.send(OnlineUsers {
            account: self.identity.account.clone(),
        });
        ctx.spawn(query.into_actor(self).map(move |users, _, ctx| {
            let users = users.unwrap_or_default();
            ctx.text(
                ServerFrame::Presence {
                    reference,
                    users: &users,
                }
                .to_text(),
            );
        }));
    }

    /// Reassembles a fragmented message, held to the same size limit as a whole one.
    fn on_fragment(&mut self, item: Item, ctx: &mut ws::WebsocketContext<Self>) {
        let (first, bytes, last) = match item {
            Item::FirstText(b) => (Some(true), b, false),
            Item::FirstBinary(b) => (Some(false), b, false),
            Item::Continue(b) => (None, b, false),
            Item::Last(b) => (None, b, true),
        };
        match (first, self.fragments.as_mut()) {
            (Some(false), _) => {
                self.fragments = None;
                self.send_error(ctx, &FrameError::Binary);
                return;
            }
            (Some(true), _) => self.fragments = Some(BytesMut::from(&bytes[..])),
            (None, Some(buffer)) => buffer.extend_from_slice(&bytes),
            // The rest of a binary message we already refused.
            (None, None) => return,
        }
        let size = self.fragments.as_ref().map_or(0, BytesMut::len);
        if size > self.shared.max_frame_bytes {
            self.close(ctx, Close::FrameTooLarge);
        } else if last {
            let message: Bytes = self.fragments.take().unwrap_or_default().freeze();
            match std::str::from_utf8(&message) {
                Ok(text) => self.on_text(text, ctx),
                Err(_) => self.close(ctx, Close::ProtocolError),
            }
        }
    }
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        log::info!(
            "connect account={} user={} session={}",
            self.identity.account,
            self.identity.user,
            self.id
        );
        ctx.run_interval(self.shared.heartbeat.interval, |session, ctx| {
            if session.last_heard.elapsed() > session.shared.heartbeat.timeout {
                session.close(ctx, Close::HeartbeatTimeout);
            } else {
                ctx.ping(b"");
            }
        });
        self.shared.broker.do_send(Join {
            session: self.id,
            account: self.identity.account.clone(),
            user: self.identity.user.clone(),
            seen_seq: self.seen_seq,
            deliver: ctx.address().recipient(),
            joined: ctx.address().recipient(),
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shared.broker.do_send(Leave {
            session: self.id,
            account: self.identity.account.clone(),
        });
        log::info!(
            "disconnect account={} user={} session={} reason={}",
            self.identity.account,
            self.identity.user,
            self.id,
            self.end_reason.as_deref().unwrap_or("connection lost")
        );
    }
}

impl Handler<Joined> for Session {
    type Result = ();

    fn handle(&mut self, joined: Joined, ctx: &mut Self::Context) {
        let welcome = ServerFrame::Welcome {
            session_id: self.id.to_string(),
            account_id: self.identity.account.as_str(),
            user_id: self.identity.user.as_str(),
            seq: joined.seq,
            heartbeat_interval_ms: self.shared.heartbeat.interval.as_millis() as u64,
            client_timeout_ms: self.shared.heartbeat.timeout.as_millis() as u64,
        };
        ctx.text(welcome.to_text());
    }
}

impl Handler<Deliver> for Session {
    type Result = ();

    fn handle(&mut self, Deliver(frame): Deliver, ctx: &mut Self::Context) {
        ctx.text(frame);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, message: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let message = match message {
            Ok(message) => message,
            Err(ws::ProtocolError::Overflow) => return self.close(ctx, Close::FrameTooLarge),
            Err(error) => {
                log::debug!("websocket protocol error session={}: {error}", self.id);
                return self.close(ctx, Close::ProtocolError);
            }
        };
        self.last_heard = Instant::now();
        match message {
            ws::Message::Text(text) => self.on_text(&text, ctx),
            ws::Message::Binary(_) => self.send_error(ctx, &FrameError::Binary),
            ws::Message::Continuation(item) => self.on_fragment(item, ctx),
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Pong(_) | ws::Message::Nop => {}
            ws::Message::Close(reason) => {
                let code = reason.as_ref().map_or(1005, |r| u16::from(r.code));
                self.end_reason = Some(format!("client closed ({code})"));
                ctx.close(reason);
                ctx.stop();
            }
        }
    }
}

/// A `send` frame's content, owned so it can move to the blocking pool.
struct OwnedSend {
    conversation_id: String,
    text: Option<String>,
    attachments: Option<String>,
    client_msg_id: Option<String>,
}

impl OwnedSend {
    fn borrow(&self) -> Send<'_> {
        Send {
            conversation_id: &self.conversation_id,
            text: self.text.as_deref(),
            attachments: self.attachments.as_deref(),
            client_msg_id: self.client_msg_id.as_deref(),
        }
    }
}
