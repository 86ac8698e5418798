//! The Socket.IO wire of a [`Session`]: its frames as Socket.IO packets on an Engine.IO
//! [`Link`], and the client's packets as the native protocol's frames.
//!
//! - The welcome is the CONNECT answer, carrying the `pid` the client sends back (with the last
//!   event's sequence number as its offset) to recover after a reconnect.
//! - A frame answering an emit that asked for an acknowledgement is that acknowledgement; any
//!   other frame (`error`, `token-expiring`, `resume-failed`, …) is an event named by its type.
//! - `socket.emit(<type>, {…}, ack)` is the native frame `{"type": <type>, …}` with the ack id as
//!   its `ref` (`mark_read` and `send_message` are taken for `read` and `send`).

use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::link::Link;
use crate::actors::session::{Backlog, Framing, Session, Wire};
use crate::ids::random_id;
use crate::protocol::socket_io::{self as packet, Packet, PacketError};
use crate::protocol::{ClientFrame, Close, FrameError, ServerFrame};

pub struct Engine {
    link: Arc<Link>,
    /// The `pid` the client sent back on connecting, kept if its state is recovered.
    offered_pid: Option<String>,
}

impl Engine {
    pub fn new(link: Arc<Link>, offered_pid: Option<String>) -> Self {
        Self { link, offered_pid }
    }
}

/// A `pid` for a session of `account`: random, ending in a tag of the account, so that one
/// sent back under another account's token is not taken for a resume point of this one.
pub fn new_pid(account: &str) -> String {
    format!("{}.{}", random_id("pid"), account_tag(account))
}

/// Whether `pid` was given to a session of `account`.
pub fn pid_of(pid: &str, account: &str) -> bool {
    pid.rsplit_once('.')
        .is_some_and(|(_, tag)| tag == account_tag(account))
}

fn account_tag(account: &str) -> String {
    hex::encode(&Sha256::digest(account.as_bytes())[..6])
}

impl Wire for Engine {
    type Context = Context<Session<Self>>;
    const FRAMING: Framing = Framing::SocketIo;
    const TRANSPORT: &'static str = "socket.io";
    const PING_BYTES: usize = packet::PING.len();

    fn frame(&mut self, frame: &ServerFrame) -> ByteString {
        if let ServerFrame::Welcome {
            session_id,
            account_id,
            resumed,
            ..
        } = frame
        {
            let pid = match (&self.offered_pid, resumed) {
                (Some(pid), true) => pid.clone(),
                _ => new_pid(account_id),
            };
            return packet::connected(session_id, &pid);
        }
        let text = frame.to_text();
        match frame.reference().and_then(Value::as_u64) {
            Some(id) => packet::ack(id, &text),
            None => packet::emit(frame.kind(), &text),
        }
    }

    fn backlog(&self) -> Option<Arc<Backlog>> {
        Some(self.link.backlog.clone())
    }

    fn send(&mut self, _: &mut Self::Context, text: ByteString) {
        self.link.send(text);
    }

    fn ping(&mut self, _: &mut Self::Context) {
        self.link.send(packet::PING.into());
    }

    fn close(&mut self, _: &mut Self::Context, close: Close, welcomed: bool) {
        let mut last = Vec::new();
        if !welcomed {
            // Refused before it was connected (too many sessions, say): the client's
            // `connect_error` handler says why.
            last.push(packet::connect_error("/", close.name(), close.reason()));
        } else {
            let closing = serde_json::json!({
                "type": "closing",
                "code": close.code(),
                "name": close.name(),
                "reason": close.reason(),
            });
            last.push(packet::emit("closing", &closing.to_string()));
            if !close.reconnect() {
                // "io server disconnect": the client does not reconnect by itself.
                last.push(packet::DISCONNECT.into());
            }
        }
        self.link.close_with(last);
    }

    fn stopped(&mut self) {
        self.link.close();
    }
}

/// What the link hands its session.
#[derive(Message)]
#[rtype(result = "()")]
pub enum FromLink {
    /// The answer to a ping.
    Pong,
    Packet(Result<Packet, PacketError>),
    /// The client's socket closed, or the connection was closed for it.
    TransportClosed,
}

impl Handler<FromLink> for Session<Engine> {
    type Result = ();

    fn handle(&mut self, inbound: FromLink, ctx: &mut Self::Context) {
        self.guarded(ctx, |session, ctx| match inbound {
            FromLink::Pong => {
                session.heard(false, ctx);
            }
            FromLink::TransportClosed => session.client_closed("connection lost".into(), ctx),
            FromLink::Packet(packet) => {
                if session.heard(true, ctx) {
                    session.on_packet(packet, ctx);
                }
            }
        });
    }
}

impl Session<Engine> {
    fn on_packet(&mut self, packet: Result<Packet, PacketError>, ctx: &mut Context<Self>) {
        let (name, args, ack) = match packet {
            Ok(Packet::Event { name, args, ack }) => (name, args, ack),
            Ok(Packet::Disconnect) => {
                return self.client_closed("client disconnected".into(), ctx);
            }
            // Already connected; the client asks for no acknowledgements of ours.
            Ok(Packet::Connect { .. } | Packet::Ack) => return,
            Ok(Packet::Binary { ack }) => return self.refuse_packet(FrameError::Binary, ack, ctx),
            Err(PacketError::Malformed) => {
                return self.refuse_packet(FrameError::MalformedJson, None, ctx)
            }
            Err(e @ PacketError::BadEvent) => {
                return self.refuse_packet(FrameError::Invalid(e.to_string()), None, ctx);
            }
        };
        let kind = native_name(&name);
        let answered = answers(kind);
        match client_frame(kind, args, ack.filter(|_| answered)) {
            Ok(ClientFrame::Publish {
                channel,
                event,
                data,
                reference,
            }) => {
                // Natively answered only when refused (the ack gets the error): taken, it is
                // acknowledged as such.
                let taken = self.on_channel_message(&channel, &event, data, reference, ctx);
                if let (Some(id), true) = (ack, taken) {
                    self.write_framed(packet::ack(id, r#"{"type":"ack"}"#), ctx);
                }
            }
            Ok(frame) => {
                self.on_frame(Ok(frame), ctx);
                if let (Some(id), false) = (ack, answered) {
                    // Fire-and-forget in the native protocol (`typing`): acknowledged as taken.
                    self.write_framed(packet::ack(id, r#"{"type":"ack"}"#), ctx);
                }
            }
            Err(error) => self.refuse_packet(error, ack, ctx),
        }
    }

    fn refuse_packet(&mut self, error: FrameError, ack: Option<u64>, ctx: &mut Context<Self>) {
        let frame = ServerFrame::Error {
            code: error.code(),
            message: error.to_string(),
            reference: ack.map(Value::from),
            retry_after_ms: None,
        };
        self.write(ctx, &frame);
    }
}

/// The native command an emit names: its own name, or the one our field reports' frontends use
/// for it.
fn native_name(emit: &str) -> &str {
    match emit {
        "mark_read" => "read",
        "send_message" => "send",
        other => other,
    }
}

/// Whether the native protocol answers frames of this type (with their `ref`).
fn answers(kind: &str) -> bool {
    !matches!(kind, "typing" | "resume")
}

/// `emit(name, {…})` as the native frame `{"type": name, …, "ref": ack}`. A `ref` of the
/// client's own is dropped: answers are matched by the acknowledgement id.
fn client_frame(kind: &str, args: Vec<Value>, ack: Option<u64>) -> Result<ClientFrame, FrameError> {
    let mut args = args.into_iter();
    let mut fields = match args.next() {
        None => Map::new(),
        Some(Value::Object(fields)) => fields,
        Some(_) => {
            return Err(FrameError::Invalid(
                "the emit's argument must be an object of the command's fields".into(),
            ))
        }
    };
    if args.next().is_some() {
        return Err(FrameError::Invalid(
            "an emit takes one object (and an acknowledgement callback)".into(),
        ));
    }
    fields.insert("type".into(), Value::from(kind));
    fields.remove("ref");
    if let Some(id) = ack {
        fields.insert("ref".into(), Value::from(id));
    }
    ClientFrame::from_value(Value::Object(fields))
}
