//! The native wire: the `/ws` protocol's JSON text frames on a WebSocket, with WebSocket pings
//! for the heartbeat and close codes that say why a session ended. Uses the session's wire
//! contract and `protocol`.

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web::web::{Bytes, BytesMut};
use actix_web_actors::ws::{self, CloseCode, CloseReason};
use bytestring::ByteString;

use crate::actors::session::{Framing, Session, Wire};
use crate::protocol::{ClientFrame, Close, FrameError, ServerFrame};

#[derive(Default)]
pub struct Native {
    /// A fragmented message being reassembled; `None` almost always.
    fragments: Option<BytesMut>,
}

impl Wire for Native {
    type Context = ws::WebsocketContext<Session<Self>>;
    const FRAMING: Framing = Framing::Native;
    const TRANSPORT: &'static str = "ws";
    const PING_BYTES: usize = 0;

    fn frame(&mut self, frame: &ServerFrame) -> ByteString {
        frame.to_text()
    }

    fn send(&mut self, ctx: &mut Self::Context, text: ByteString) {
        ctx.text(text);
    }

    fn ping(&mut self, ctx: &mut Self::Context) {
        ctx.ping(b"");
    }

    fn close(&mut self, ctx: &mut Self::Context, close: Close, _welcomed: bool) {
        ctx.close(Some(CloseReason {
            code: CloseCode::from(close.code()),
            description: Some(close.reason().to_owned()),
        }));
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session<Native> {
    fn handle(&mut self, message: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.guarded(ctx, |session, ctx| session.on_message(message, ctx));
    }
}

impl Session<Native> {
    fn on_message(
        &mut self,
        message: Result<ws::Message, ws::ProtocolError>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let message = match message {
            Ok(message) => message,
            Err(ws::ProtocolError::Overflow) => return self.close(ctx, Close::FrameTooLarge),
            Err(error) => {
                log::debug!("websocket protocol error session={}: {error}", self.id());
                return self.close(ctx, Close::ProtocolError);
            }
        };
        let counted = matches!(
            message,
            ws::Message::Text(_)
                | ws::Message::Binary(_)
                | ws::Message::Ping(_)
                | ws::Message::Continuation(Item::FirstText(_) | Item::FirstBinary(_))
        );
        if !self.heard(counted, ctx) {
            return;
        }
        match message {
            ws::Message::Text(text) => self.on_frame(ClientFrame::parse(&text), ctx),
            ws::Message::Binary(_) => self.on_frame(Err(FrameError::Binary), ctx),
            ws::Message::Continuation(item) => self.on_fragment(item, ctx),
            ws::Message::Ping(payload) => {
                if self.reserve(ctx, payload.len()) {
                    ctx.pong(&payload);
                }
            }
            ws::Message::Pong(_) | ws::Message::Nop => {}
            ws::Message::Close(reason) => {
                let code = reason.as_ref().map_or(1005, |r| u16::from(r.code));
                ctx.close(reason);
                self.client_closed(format!("client closed ({code})"), ctx);
            }
        }
    }

    fn on_fragment(&mut self, item: Item, ctx: &mut ws::WebsocketContext<Self>) {
        let (first, bytes, last) = match item {
            Item::FirstText(b) => (Some(true), b, false),
            Item::FirstBinary(b) => (Some(false), b, false),
            Item::Continue(b) => (None, b, false),
            Item::Last(b) => (None, b, true),
        };
        let fragments = &mut self.wire_mut().fragments;
        match (first, fragments.as_mut()) {
            (Some(false), _) => {
                *fragments = None;
                self.on_frame(Err(FrameError::Binary), ctx);
                return;
            }
            (Some(true), _) => *fragments = Some(BytesMut::from(&bytes[..])),
            (None, Some(buffer)) => buffer.extend_from_slice(&bytes),
            // The rest of a binary message we already refused.
            (None, None) => return,
        }
        let size = self.wire_mut().fragments.as_ref().map_or(0, BytesMut::len);
        if size > self.shared().max_frame_bytes {
            self.close(ctx, Close::FrameTooLarge);
        } else if last {
            let message: Bytes = self
                .wire_mut()
                .fragments
                .take()
                .unwrap_or_default()
                .freeze();
            match std::str::from_utf8(&message) {
                Ok(text) => self.on_frame(ClientFrame::parse(text), ctx),
                Err(_) => self.close(ctx, Close::ProtocolError),
            }
        }
    }
}
