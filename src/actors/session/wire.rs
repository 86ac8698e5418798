//! What a session needs from the protocol its client speaks: how its frames are framed, how they
//! reach the client, how the client is pinged and how the connection is closed.
//!
//! Everything else — rooms, requests, resuming, token lifetime, backpressure — is the session's
//! own and the same on every wire. Events are framed once per publish by the room, for each
//! [`Framing`] among its members, not once per recipient.

use std::sync::Arc;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use bytestring::ByteString;

use super::{Backlog, Deliver, FromRoom, Session};
use crate::protocol::{Close, ServerFrame};

/// How event frames are encoded for a session; the room keeps one encoding of each event per
/// framing in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `{"type":"event",…}` JSON text frames (`/ws`).
    Native,
    /// Socket.IO EVENT packets (`/socket.io/`).
    SocketIo,
}

impl Framing {
    /// An event's native frame in this framing; `None` if it is not an event frame.
    pub fn encode(self, native: &ByteString) -> Option<ByteString> {
        match self {
            Self::Native => Some(native.clone()),
            Self::SocketIo => crate::protocol::socket_io::event(native),
        }
    }
}

pub trait Wire: Sized + Unpin + 'static {
    type Context: ActorContext
        + AsyncContext<Session<Self>>
        + ToEnvelope<Session<Self>, Deliver>
        + ToEnvelope<Session<Self>, FromRoom>;

    /// How the room frames events for this wire.
    const FRAMING: Framing;
    /// The transport's name in metrics (`transport` label).
    const TRANSPORT: &'static str;
    /// What a ping costs in the client's backlog.
    const PING_BYTES: usize;

    /// A frame of the session's own (welcome, ack, error, …), framed for this wire.
    fn frame(&mut self, frame: &ServerFrame) -> ByteString;

    /// The count of bytes queued for the client, when the transport keeps it (an Engine.IO
    /// connection counts what it holds for the session); otherwise the session makes one.
    fn backlog(&self) -> Option<Arc<Backlog>> {
        None
    }

    /// Hands a framed text to the client's transport (already counted in the backlog).
    fn send(&mut self, ctx: &mut Self::Context, text: ByteString);

    /// [`Wire::send`], for a frame after which the client may resume from `resume_point`: an
    /// event's sequence number, or a fresh session's welcome's. For a transport that tells its
    /// client where it stands with each frame (SSE's `id:`); the others resume from the frames
    /// themselves.
    fn send_at(&mut self, ctx: &mut Self::Context, text: ByteString, resume_point: Option<u64>) {
        let _ = resume_point;
        self.send(ctx, text);
    }

    /// Whether the client has shown it is alive since last asked, by the transport's own means:
    /// for a transport whose client cannot answer a ping (SSE), that it took bytes. Asked on
    /// each heartbeat tick.
    fn heard_since_last_asked(&mut self) -> bool {
        false
    }

    /// The heartbeat's ping; the client's answer (any sign of life) resets its timeout.
    fn ping(&mut self, ctx: &mut Self::Context);

    /// Ends the connection for `close`; `welcomed`: the client was told it is connected. The
    /// session stops itself afterwards.
    fn close(&mut self, ctx: &mut Self::Context, close: Close, welcomed: bool);

    fn stopped(&mut self) {}
}
