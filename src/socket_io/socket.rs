//! The WebSocket transport of an Engine.IO connection: an actor that carries a [`Link`]'s
//! packets both ways — from the start (`transport=websocket`), or after the client upgraded a
//! long-polling connection (`2probe` → `3probe`, then `5`).

use std::sync::Arc;

use actix::prelude::*;
use actix_web_actors::ws;
use bytestring::ByteString;

use super::link::Link;
use super::SocketIo;
use crate::actors::session::frame_size;
use crate::protocol::socket_io::{self as packet, FromClient};

/// A packet for the client.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Write(pub ByteString);

/// The connection is over: close the socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shut;

pub struct Socket {
    link: Arc<Link>,
    state: Arc<SocketIo>,
    /// Carrying the link's packets (not still being probed for an upgrade).
    attached: bool,
    /// The open packet, for a connection that starts on this socket.
    open: Option<String>,
}

impl Socket {
    /// A connection that starts on this socket: it sends the open packet first.
    pub fn opening(link: Arc<Link>, state: Arc<SocketIo>, open: String) -> Self {
        Self {
            link,
            state,
            attached: true,
            open: Some(open),
        }
    }

    /// A socket the client probes to upgrade its long-polling connection to.
    pub fn upgrading(link: Arc<Link>, state: Arc<SocketIo>) -> Self {
        Self {
            link,
            state,
            attached: false,
            open: None,
        }
    }

    fn on_text(&mut self, text: String, ctx: &mut ws::WebsocketContext<Self>) {
        if !self.attached {
            match FromClient::decode(&text) {
                Some(FromClient::Ping("probe")) => {
                    if self.counted(packet::PROBE_ANSWER.len()) {
                        ctx.text(packet::PROBE_ANSWER);
                    }
                    self.link.upgrading();
                }
                Some(FromClient::Upgrade) => {
                    self.attached = true;
                    self.link.upgraded(ctx.address());
                }
                _ => {}
            }
            return;
        }
        // One packet at a time, in order: a CONNECT reads the database before the next is
        // taken.
        let (state, link) = (self.state.clone(), self.link.clone());
        ctx.wait(async move { super::receive(&state, &link, &text).await }.into_actor(self));
    }

    /// Counts a frame of the socket's own (a pong, the probe's answer) with what is queued for
    /// the client, as the session counts its frames: the socket runs while its client reads
    /// nothing, so a client that sends pings cannot pile answers up. Past the bound the answer is
    /// dropped, and the session closes as for any frame (4001).
    fn counted(&self, payload: usize) -> bool {
        self.link.backlog.reserve(frame_size(payload))
    }
}

impl Actor for Socket {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(open) = self.open.take() {
            ctx.text(open);
            self.link.upgraded(ctx.address());
        } else {
            // A probe that does not complete the upgrade (the client's does at once) is not
            // kept open.
            ctx.run_later(self.state.engines.handshake_timeout(), |socket, ctx| {
                if !socket.attached {
                    ctx.stop();
                }
            });
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if self.attached {
            self.link.close();
        } else {
            // The probe failed: the connection carries on polling.
            self.link.upgrade_abandoned();
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Socket {
    fn handle(&mut self, message: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match message {
            Ok(ws::Message::Text(text)) => self.on_text(text.to_string(), ctx),
            // Binary attachments were refused with their packet; their frames are dropped.
            Ok(ws::Message::Binary(_) | ws::Message::Pong(_) | ws::Message::Nop) => {}
            Ok(ws::Message::Continuation(_)) => {
                // Socket.IO clients do not fragment; a client that does is not one.
                ctx.stop();
            }
            Ok(ws::Message::Ping(payload)) => {
                if self.counted(payload.len()) {
                    ctx.pong(&payload);
                }
            }
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(error) => {
                log::debug!("socket.io websocket error: {error}");
                ctx.stop();
            }
        }
    }
}

impl Handler<Write> for Socket {
    type Result = ();

    fn handle(&mut self, Write(packet): Write, ctx: &mut Self::Context) {
        ctx.text(packet);
    }
}

impl Handler<Shut> for Socket {
    type Result = ();

    fn handle(&mut self, _: Shut, ctx: &mut Self::Context) {
        ctx.close(None);
        ctx.stop();
    }
}
