//! Engine.IO v4 and Socket.IO v5 packets as text: what the client sends, decoded; what the
//! server sends, encoded. No I/O here.
//!
//! An Engine.IO packet is a type digit and its data (`4` + a Socket.IO packet is a message); a
//! Socket.IO packet is `<type>[<namespace>,][<ack id>][<JSON>]`. Over HTTP long-polling several
//! Engine.IO packets travel in one body, separated by [`SEPARATOR`].
//!
//! Base layer, beside the native frames: the sessions frame events with it, and the Socket.IO
//! adapter (the `socket_io` module) parses and answers with it. Uses nothing of the crate.

use std::borrow::Cow;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// Between the Engine.IO packets of one long-polling body.
pub const SEPARATOR: char = '\x1e';

/// Engine.IO packets from the server that carry no Socket.IO packet.
pub const CLOSE: &str = "1";
pub const PING: &str = "2";
pub const NOOP: &str = "6";
/// The answer to the client's `2probe` on a WebSocket it wants to upgrade to.
pub const PROBE_ANSWER: &str = "3probe";
/// Socket.IO DISCONNECT on the default namespace: the server ends the session.
pub const DISCONNECT: &str = "41";

/// An Engine.IO packet from the client.
#[derive(Debug, PartialEq)]
pub enum FromClient<'a> {
    Close,
    Ping(&'a str),
    Pong,
    /// A Socket.IO packet.
    Message(&'a str),
    Upgrade,
    Noop,
}

impl<'a> FromClient<'a> {
    pub fn decode(packet: &'a str) -> Option<Self> {
        let mut chars = packet.chars();
        let kind = chars.next()?;
        let data = chars.as_str();
        Some(match kind {
            '1' => Self::Close,
            '2' => Self::Ping(data),
            '3' => Self::Pong,
            '4' => Self::Message(data),
            '5' => Self::Upgrade,
            '6' => Self::Noop,
            _ => return None,
        })
    }
}

/// A Socket.IO packet from the client.
#[derive(Debug, PartialEq)]
pub enum Packet {
    /// `auth` is the object the client passed as `auth` (with `pid` and `offset` when it asks
    /// to recover its state).
    Connect {
        auth: Value,
    },
    Disconnect,
    /// `socket.emit(name, ...args[, ack])`.
    Event {
        name: String,
        args: Vec<Value>,
        ack: Option<u64>,
    },
    /// The client acknowledging an emit of ours; the server asks for none.
    Ack,
    /// A packet with binary attachments, which Switchboard does not take.
    Binary {
        ack: Option<u64>,
    },
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum PacketError {
    #[error("not a Socket.IO packet")]
    Malformed,
    #[error("an event must be a JSON array starting with the event name")]
    BadEvent,
}

impl Packet {
    /// The packet, and the namespace it is for.
    pub fn decode(text: &str) -> Result<(String, Self), PacketError> {
        let mut chars = text.chars();
        let kind = chars.next().ok_or(PacketError::Malformed)?;
        let mut rest = chars.as_str();
        if matches!(kind, '5' | '6') {
            // `<n>-` attachments follow the type.
            let dash = rest.find('-').ok_or(PacketError::Malformed)?;
            rest = &rest[dash + 1..];
        }
        let mut namespace = "/";
        if rest.starts_with('/') {
            let end = rest.find(',').unwrap_or(rest.len());
            namespace = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or("");
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let ack = match digits {
            0 => None,
            _ => Some(rest[..digits].parse().map_err(|_| PacketError::Malformed)?),
        };
        let json = &rest[digits..];
        let data = || -> Result<Value, PacketError> {
            match json {
                "" => Ok(Value::Null),
                json => serde_json::from_str(json).map_err(|_| PacketError::Malformed),
            }
        };
        let packet = match kind {
            '0' => Self::Connect { auth: data()? },
            '1' => Self::Disconnect,
            '2' => {
                let Value::Array(mut args) = data()? else {
                    return Err(PacketError::BadEvent);
                };
                if !args.first().is_some_and(Value::is_string) {
                    return Err(PacketError::BadEvent);
                }
                let Value::String(name) = args.remove(0) else {
                    unreachable!("checked above")
                };
                Self::Event { name, args, ack }
            }
            '3' => Self::Ack,
            '5' | '6' => Self::Binary { ack },
            _ => return Err(PacketError::Malformed),
        };
        Ok((namespace.to_owned(), packet))
    }
}

/// The Engine.IO open packet.
pub fn open(
    sid: &str,
    upgrades: &[&str],
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    max_payload: usize,
) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Open<'a> {
        sid: &'a str,
        upgrades: &'a [&'a str],
        ping_interval: u64,
        ping_timeout: u64,
        max_payload: usize,
    }
    let open = Open {
        sid,
        upgrades,
        ping_interval: ping_interval_ms,
        ping_timeout: ping_timeout_ms,
        max_payload,
    };
    format!(
        "0{}",
        serde_json::to_string(&open).expect("open packets serialize")
    )
}

/// CONNECT answered: `sid` names the session; `pid` is what the client sends back (with the
/// last offset it saw) to recover its state after a reconnect.
pub fn connected(sid: &str, pid: &str) -> ByteString {
    format!("40{}", serde_json::json!({ "sid": sid, "pid": pid })).into()
}

/// CONNECT refused, for the client's `connect_error` handler: `err.message` and `err.data.code`.
pub fn connect_error(namespace: &str, code: &str, message: &str) -> ByteString {
    let data = serde_json::json!({ "message": message, "data": { "code": code } });
    match namespace {
        "/" => format!("44{data}"),
        other => format!("44{other},{data}"),
    }
    .into()
}

/// `socket.on(name, frame)`: a frame of the session's own (an error, a notice) as an event.
pub fn emit(name: &str, frame: &str) -> ByteString {
    let name = serde_json::to_string(name).expect("strings serialize");
    format!("42[{name},{frame}]").into()
}

/// The answer to an emit the client sent with an acknowledgement callback.
pub fn ack(id: u64, frame: &str) -> ByteString {
    format!("43{id}[{frame}]").into()
}

/// An event's native frame (`{"type":"event","seq":…,"event":…,"data":…}`) as an EVENT packet,
/// `42["<event>",<data>,"<seq>"]`: the handler gets the data and then the sequence number — as a
/// string, which is how socket.io-client recognises the offset it sends back to recover.
/// Ephemeral events have no sequence number and so no last argument. A channel event has
/// `{"channel":"…"}` before the sequence number: `42["<event>",<data>,{"channel":"…"},"<seq>"]`;
/// a client's channel message has its sender there too: `{"channel":"…","user_id":"…"}`.
/// `None` for a frame that is not an event frame (the room drops it).
pub fn event(native: &ByteString) -> Option<ByteString> {
    #[derive(Deserialize)]
    struct Event<'a> {
        #[serde(borrow)]
        event: Cow<'a, str>,
        seq: Option<u64>,
        #[serde(default, borrow)]
        channel: Option<Cow<'a, str>>,
        /// The sender of a client's channel message.
        #[serde(default, borrow)]
        user_id: Option<Cow<'a, str>>,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    #[derive(Serialize)]
    struct Metadata<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
    }
    let event: Event = serde_json::from_str(native).ok()?;
    let name = serde_json::to_string(&event.event).ok()?;
    // Sized once: the data may be large, and this copy is the only one.
    let mut packet = String::with_capacity(native.len() + 8);
    packet.push_str("42[");
    packet.push_str(&name);
    packet.push(',');
    packet.push_str(event.data.get());
    if event.channel.is_some() || event.user_id.is_some() {
        let metadata = Metadata {
            channel: event.channel.as_deref(),
            user_id: event.user_id.as_deref(),
        };
        packet.push(',');
        packet.push_str(&serde_json::to_string(&metadata).ok()?);
    }
    if let Some(seq) = event.seq {
        packet.push_str(&format!(",\"{seq}\""));
    }
    packet.push(']');
    Some(packet.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_the_packets_clients_send() {
        let on = |namespace: &str, packet| Ok((namespace.to_owned(), packet));
        assert_eq!(
            Packet::decode(r#"0{"token":"t"}"#),
            on(
                "/",
                Packet::Connect {
                    auth: json!({"token": "t"})
                }
            )
        );
        assert_eq!(
            Packet::decode("0/admin,"),
            on("/admin", Packet::Connect { auth: Value::Null })
        );
        assert_eq!(
            Packet::decode(r#"212["send",{"text":"hi"}]"#),
            on(
                "/",
                Packet::Event {
                    name: "send".into(),
                    args: vec![json!({"text": "hi"})],
                    ack: Some(12)
                }
            )
        );
        assert_eq!(
            Packet::decode(r#"2/admin,3["x"]"#),
            on(
                "/admin",
                Packet::Event {
                    name: "x".into(),
                    args: vec![],
                    ack: Some(3)
                }
            )
        );
        assert_eq!(
            Packet::decode(r#"51-["upload",{"_placeholder":true,"num":0}]"#),
            on("/", Packet::Binary { ack: None })
        );
        assert_eq!(Packet::decode("2{}"), Err(PacketError::BadEvent));
        assert_eq!(Packet::decode("2[1]"), Err(PacketError::BadEvent));
        assert_eq!(Packet::decode("9"), Err(PacketError::Malformed));
        assert_eq!(Packet::decode("2[\"x\""), Err(PacketError::Malformed));
        assert_eq!(
            Packet::decode("299999999999999999999999[\"x\"]"),
            Err(PacketError::Malformed)
        );
    }

    #[test]
    fn events_carry_the_sequence_number_last_as_a_string() {
        let data = RawValue::from_string(r#"{"a":"\"q\""}"#.into()).unwrap();
        let native = crate::protocol::event_frame(7, None, "new-message", &data);
        assert_eq!(
            event(&native).as_deref(),
            Some(r#"42["new-message",{"a":"\"q\""},"7"]"#)
        );
        let native = crate::protocol::event_frame(8, Some("order:1"), "paid", &data);
        assert_eq!(
            event(&native).as_deref(),
            Some(r#"42["paid",{"a":"\"q\""},{"channel":"order:1"},"8"]"#)
        );
        let message = crate::protocol::channel_message_frame("doc:7", "cursor", &json!(3), "al");
        assert_eq!(
            event(&message).as_deref(),
            Some(r#"42["cursor",3,{"channel":"doc:7","user_id":"al"}]"#)
        );
        let typing = crate::protocol::ephemeral_frame("typing", &json!({"user_id": "u"}));
        assert_eq!(
            event(&typing).as_deref(),
            Some(r#"42["typing",{"user_id":"u"}]"#)
        );
        assert_eq!(event(&r#"{"foo":1}"#.into()), None);
    }
}
