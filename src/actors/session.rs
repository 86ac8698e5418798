//! A session: one WebSocket connection, as an actor.
//!
//! It joins its account's room through the broker when it starts and leaves when it stops; it
//! writes the frames its room delivers; it pings the client every heartbeat interval and closes a
//! connection that stays silent past the timeout; it answers bad frames with an `error` frame and
//! carries on. The transport (actix-web-actors, deprecated upstream in favour of actix-ws) is used
//! only in this module and in `api::ws`, so moving off it touches those two places.

use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web::web::{Bytes, BytesMut};
use actix_web_actors::ws::{self, CloseCode, CloseReason};
use bytestring::ByteString;

use super::broker::{Broker, Join, Leave};
use crate::auth::Identity;
use crate::config::Heartbeat;
use crate::ids::SessionId;
use crate::protocol::{ClientFrame, Close, FrameError, ServerFrame};

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

/// What every session shares.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    pub heartbeat: Heartbeat,
    pub max_frame_bytes: usize,
}

pub struct Session {
    id: SessionId,
    identity: Identity,
    /// The account's sequence number at authorisation, handed to the room on joining.
    seen_seq: u64,
    broker: Addr<Broker>,
    settings: SessionSettings,
    /// When the client last showed it is alive (any frame, pongs included).
    last_heard: Instant,
    /// A fragmented message being reassembled; `None` almost always.
    fragments: Option<BytesMut>,
    /// Why the session ended, for the disconnect log line.
    end_reason: Option<String>,
}

impl Session {
    pub fn new(
        identity: Identity,
        seen_seq: u64,
        broker: Addr<Broker>,
        settings: SessionSettings,
    ) -> Self {
        Self {
            id: SessionId::random(),
            identity,
            seen_seq,
            broker,
            settings,
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
            Err(error) => self.send_error(ctx, &error),
        }
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
        if size > self.settings.max_frame_bytes {
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
        ctx.run_interval(self.settings.heartbeat.interval, |session, ctx| {
            if session.last_heard.elapsed() > session.settings.heartbeat.timeout {
                session.close(ctx, Close::HeartbeatTimeout);
            } else {
                ctx.ping(b"");
            }
        });
        self.broker.do_send(Join {
            session: self.id,
            account: self.identity.account.clone(),
            user: self.identity.user.clone(),
            seen_seq: self.seen_seq,
            deliver: ctx.address().recipient(),
            joined: ctx.address().recipient(),
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.broker.do_send(Leave {
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
            heartbeat_interval_ms: self.settings.heartbeat.interval.as_millis() as u64,
            client_timeout_ms: self.settings.heartbeat.timeout.as_millis() as u64,
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
