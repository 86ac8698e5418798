//! The wire protocol of `/ws`: frames a client sends, frames the server sends, and the close codes.
//!
//! Every frame is a JSON text message with a `"type"`. Client frames are parsed into a
//! [`ClientFrame`] first and acted on separately (in the session), so every way a frame can be
//! wrong is a [`FrameError`] with a stable code. Event frames are serialized once per publish by
//! [`event_frame`]; the same bytes go to every recipient.
//!
//! [`socket_io`] holds the other wire's framing: Engine.IO and Socket.IO packets.
//!
//! Base layer: uses only `config` (secrets) and `json`.

pub mod socket_io;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::config::Secret;
use crate::json;

/// A frame from the client, after parsing.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Application-level ping (for clients that cannot see WebSocket pings); answered by `pong`.
    Ping {
        /// Echoed back, so a client can match the answer.
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    /// A message into a conversation; answered by `ack` (or `error`) with the same `ref`.
    Send {
        conversation_id: String,
        #[serde(default)]
        text: Option<String>,
        #[serde(default)]
        attachments: Option<Value>,
        /// Makes the send idempotent: a retry gets the first ack and stores nothing.
        #[serde(default)]
        client_msg_id: Option<String>,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    /// The conversation is read up to a message (the latest when absent); answered by `ack`.
    Read {
        conversation_id: String,
        #[serde(default)]
        up_to: Option<String>,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    /// The user is typing: shown to the other participants, not stored.
    Typing { conversation_id: String },
    /// As the first frame: replay what was missed after `since`, then continue live. (Connecting
    /// with `?since=` does the same without the race against live events.)
    Resume { since: Value },
    /// Who of the account is online; answered by `presence`.
    Presence {
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    /// A fresh token for the same account and user, usually after `token-expiring`; answered by
    /// `authenticated`. A token that does not verify, or names someone else, closes the session.
    Auth {
        token: Secret,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    /// Follow a channel the token allows; answered by `subscribed` (or `error`). With `since`,
    /// the channel's events after it are replayed first.
    Subscribe {
        channel: String,
        #[serde(default)]
        since: Option<Value>,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    /// An ephemeral message to a channel's other followers, where the token's `publish` claim
    /// allows it; not stored, answered only when refused (an `error` with the same `ref`).
    Publish {
        channel: String,
        event: String,
        #[serde(default)]
        data: Option<Value>,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    /// Stop following a channel; answered by `unsubscribed`.
    Unsubscribe {
        channel: String,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
}

/// The client frame types this server knows, for telling "unknown" from "malformed".
const CLIENT_FRAME_TYPES: &[&str] = &[
    "ping",
    "send",
    "read",
    "typing",
    "resume",
    "presence",
    "auth",
    "subscribe",
    "unsubscribe",
    "publish",
];

/// Why a client frame was refused; answered with an `error` frame, the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the frame is not valid JSON")]
    MalformedJson,
    #[error("the frame must be a JSON object with a string \"type\"")]
    MissingType,
    #[error("unknown frame type; known types: ping, send, read, typing, resume, presence, auth, subscribe, unsubscribe, publish")]
    UnknownType,
    #[error("invalid frame: {0}")]
    Invalid(String),
    #[error("binary frames are not supported; send JSON text frames")]
    Binary,
}

impl FrameError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed-json",
            Self::MissingType => "missing-type",
            Self::UnknownType => "unknown-type",
            Self::Invalid(_) => "invalid-frame",
            Self::Binary => "binary-not-supported",
        }
    }
}

impl ClientFrame {
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        json::check_depth(text.as_bytes()).map_err(too_deep)?;
        let value: Value = serde_json::from_str(text).map_err(|_| FrameError::MalformedJson)?;
        Self::from_checked_value(value)
    }

    /// A frame already parsed as JSON (a Socket.IO emit, say).
    pub fn from_value(value: Value) -> Result<Self, FrameError> {
        json::check_value_depth(&value).map_err(too_deep)?;
        Self::from_checked_value(value)
    }

    fn from_checked_value(value: Value) -> Result<Self, FrameError> {
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .ok_or(FrameError::MissingType)?;
        if !CLIENT_FRAME_TYPES.contains(&kind) {
            return Err(FrameError::UnknownType);
        }
        serde_json::from_value(value).map_err(|e| FrameError::Invalid(e.to_string()))
    }
}

fn too_deep(error: json::JsonError) -> FrameError {
    FrameError::Invalid(error.to_string())
}

/// A frame from the server, other than events (see [`event_frame`]).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerFrame<'a> {
    /// First frame of every session: who it is, and the account's sequence number at joining.
    Welcome {
        session_id: String,
        account_id: &'a str,
        user_id: &'a str,
        /// Events with a higher `seq` than this will be delivered on this connection.
        seq: u64,
        heartbeat_interval_ms: u64,
        client_timeout_ms: u64,
        /// When the token expires (seconds since the Unix epoch): `token-expiring` comes before.
        token_expires_at: u64,
        /// The session replays the events after `since` (given with `?since=`) before `seq`.
        resumed: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// The channels the session follows (given on connecting).
        channels: Vec<&'a str>,
    },
    /// Answer to `subscribe`: the channel's events after `seq` are delivered live; with `since`,
    /// those after `since` are replayed first.
    Subscribed {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Value>,
        channel: &'a str,
        seq: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// Answer to `unsubscribe`; or, with `reason`, the server ended the subscription (a fresh
    /// token no longer allows the channel: `channel-forbidden`).
    Unsubscribed {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Value>,
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
    },
    /// Answer to a `resume` frame that could be honoured: events after `since` follow.
    Resumed { since: u64, seq: u64 },
    /// The events after `since` are no longer all kept (the oldest kept is `oldest_seq`): reload
    /// the state, then carry on from `seq`, which live events continue after.
    ResumeFailed {
        since: u64,
        oldest_seq: u64,
        seq: u64,
    },
    /// A Socket.IO client's recovery offset failed the resume-point check (`code`: it is not a
    /// sequence number, or it is ahead of the account): the session started afresh. Reload the
    /// state, then carry on from `seq`, which live events continue after.
    #[serde(rename = "resume-failed")]
    ResumeRefused {
        code: &'static str,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        seq: u64,
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Value>,
    },
    /// The token expires at `expires_at` (seconds since the Unix epoch): send `auth` with a fresh
    /// one before then, or the session closes with 4002.
    TokenExpiring { expires_at: u64 },
    /// Answer to `auth`: the session goes on under the new token.
    Authenticated {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Value>,
        expires_at: u64,
    },
    /// A `send` or `read` was carried out. For a send: the stored message and the sequence
    /// number of the `new-message` event this user receives for it.
    Ack {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Value>,
        conversation_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// The `client_msg_id` had been sent before; nothing new was stored.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    Presence {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Value>,
        users: &'a [String],
    },
    Error {
        code: &'static str,
        message: String,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Value>,
        /// For `rate-limited` and `too-many-auth-failures`: when to try again.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerFrame<'_> {
    /// The frame's `"type"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Welcome { .. } => "welcome",
            Self::Resumed { .. } => "resumed",
            Self::Subscribed { .. } => "subscribed",
            Self::Unsubscribed { .. } => "unsubscribed",
            Self::ResumeFailed { .. } | Self::ResumeRefused { .. } => "resume-failed",
            Self::Pong { .. } => "pong",
            Self::TokenExpiring { .. } => "token-expiring",
            Self::Authenticated { .. } => "authenticated",
            Self::Ack { .. } => "ack",
            Self::Presence { .. } => "presence",
            Self::Error { .. } => "error",
        }
    }

    /// The `ref` of the client frame this answers, if any.
    pub fn reference(&self) -> Option<&Value> {
        match self {
            Self::Pong { reference }
            | Self::Authenticated { reference, .. }
            | Self::Ack { reference, .. }
            | Self::Presence { reference, .. }
            | Self::Subscribed { reference, .. }
            | Self::Unsubscribed { reference, .. }
            | Self::Error { reference, .. } => reference.as_ref(),
            _ => None,
        }
    }

    pub fn to_text(&self) -> ByteString {
        serde_json::to_string(self)
            .expect("server frames always serialize")
            .into()
    }

    pub fn error(error: &FrameError) -> ServerFrame<'static> {
        ServerFrame::Error {
            code: error.code(),
            message: error.to_string(),
            reference: None,
            retry_after_ms: None,
        }
    }
}

/// Longest event name.
pub const MAX_EVENT_NAME: usize = 64;

/// Prefix of the `metadata` in an outbound message webhook, which the app passes on to the
/// provider (Facebook's Send API): the provider's echo carries it back, so the echo is matched
/// to the message it repeats instead of being shown twice.
pub const ECHO_METADATA_PREFIX: &str = "switchboard:";

/// An event name as the publish API accepts it (and as a node accepts it from another).
pub fn check_event_name(name: &str) -> Result<(), &'static str> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if !name.is_empty() && name.len() <= MAX_EVENT_NAME && name.chars().all(allowed) {
        Ok(())
    } else {
        Err("must be 1 to 64 characters of letters, digits, '.', '_', ':' or '-'")
    }
}

#[derive(Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    event: &'a str,
    data: &'a RawValue,
}

/// `{"type":"event","seq":…,["channel":…,]"event":…,"data":…}`, built once per publish. `data`
/// is embedded as the JSON text it was stored as, not parsed again.
pub fn event_frame(seq: u64, channel: Option<&str>, event: &str, data: &RawValue) -> ByteString {
    let frame = EventFrame {
        kind: "event",
        seq,
        channel,
        event,
        data,
    };
    serde_json::to_string(&frame)
        .expect("event frames always serialize")
        .into()
}

#[derive(Serialize)]
struct Ephemeral<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    event: &'a str,
    data: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

/// A user's ephemeral message to a channel: `{"type":"event","channel":…,"event":…,"data":…,
/// "user_id":…}` — who sent it comes from their token, never from the message.
pub fn channel_message_frame(channel: &str, event: &str, data: &Value, user: &str) -> ByteString {
    let frame = Ephemeral {
        kind: "event",
        channel: Some(channel),
        event,
        data,
        user_id: Some(user),
    };
    serde_json::to_string(&frame)
        .expect("ephemeral frames always serialize")
        .into()
}

/// An ephemeral event — presence, typing — delivered live and never stored: it has no `seq`.
pub fn ephemeral_frame(event: &str, data: &Value) -> ByteString {
    let frame = Ephemeral {
        kind: "event",
        channel: None,
        event,
        data,
        user_id: None,
    };
    serde_json::to_string(&frame)
        .expect("ephemeral frames always serialize")
        .into()
}

/// Why a resume point is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SinceError {
    #[error("`since` must be a non-negative integer: the last sequence number processed")]
    Malformed,
    #[error("`since` is ahead of the account's latest sequence number")]
    InFuture,
    #[error("send `resume` as the first frame, before any event; or reconnect with ?since=")]
    TooLate,
}

impl SinceError {
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed => "invalid-since",
            Self::InFuture => "since-in-future",
            Self::TooLate => "resume-too-late",
        }
    }

    /// `since` as a query parameter or a frame field.
    pub fn parse(value: &Value) -> Result<u64, Self> {
        match value {
            Value::Number(n) => n.as_u64().ok_or(Self::Malformed),
            Value::String(s) => s.parse().map_err(|_| Self::Malformed),
            _ => Err(Self::Malformed),
        }
    }
}

/// A resume point, checked against its account's history. This is the one check behind every
/// way of resuming — `?since=` on `/ws` and on the long-poll, the `resume` frame, and Socket.IO's
/// recovery offset — each parsed first with [`SinceError::parse`]; each wire answers the outcome
/// in its own terms (docs/protocol.md, "Resume after a reconnect", lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumePoint {
    /// Every event after it is kept: they are replayed.
    Kept,
    /// The events after it are no longer all kept; `oldest` is the oldest that is.
    Pruned { oldest: u64 },
}

impl ResumePoint {
    /// `since` against the account's history as the store reads it (`events::history`): the
    /// oldest event kept, and the last sequence number.
    pub fn check(since: u64, (oldest, last): (u64, u64)) -> Result<Self, SinceError> {
        if since > last {
            Err(SinceError::InFuture)
        } else if since + 1 < oldest {
            Ok(Self::Pruned { oldest })
        } else {
            Ok(Self::Kept)
        }
    }
}

/// Every reason the server closes a WebSocket, with its close code. One table, so clients can
/// rely on it: docs/protocol.md lists what each means for reconnecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client answered no ping within the timeout. Reconnect (with resume).
    HeartbeatTimeout,
    /// A message over the size limit. Reconnect, but do not send it again.
    FrameTooLarge,
    /// The client broke the WebSocket protocol. Fix the client.
    ProtocolError,
    /// The server is shutting down. Reconnect, possibly to another node.
    ServerShutdown,
    /// The client read too slowly and too much was queued for it. Reconnect with `?since=`.
    SlowConsumer,
    /// The server could not carry on with the session (its database failed, or the session hit a
    /// bug). Reconnect later.
    ServerError,
    /// The token expired and no fresh one came. Get a new token, then reconnect (with resume).
    TokenExpired,
    /// An `auth` frame's token did not verify or named another account or user.
    TokenRefused,
    /// The client kept sending far over its frame rate.
    TooManyFrames,
    /// The user already has as many sessions open as allowed.
    TooManySessions,
    /// The application revoked the user (or this session) through the control API. Do not
    /// reconnect with this token.
    Revoked,
}

impl Close {
    /// For clients that see no close code (Socket.IO): the same, as a word.
    pub fn name(self) -> &'static str {
        match self {
            Self::HeartbeatTimeout => "heartbeat-timeout",
            Self::FrameTooLarge => "message-too-large",
            Self::ProtocolError => "protocol-error",
            Self::ServerShutdown => "server-shutdown",
            Self::SlowConsumer => "slow-consumer",
            Self::ServerError => "server-error",
            Self::TokenExpired => "token-expired",
            Self::TokenRefused => "token-refused",
            Self::TooManyFrames => "too-many-frames",
            Self::TooManySessions => "too-many-sessions",
            Self::Revoked => "revoked",
        }
    }

    /// Whether the client should reconnect on its own (and resume) after this close.
    pub fn reconnect(self) -> bool {
        !matches!(
            self,
            Self::TokenExpired | Self::TokenRefused | Self::TooManySessions | Self::Revoked
        )
    }

    pub fn code(self) -> u16 {
        match self {
            Self::HeartbeatTimeout => 4000,
            Self::FrameTooLarge => 1009,
            Self::ProtocolError => 1002,
            Self::ServerShutdown => 1001,
            Self::SlowConsumer => 4001,
            Self::ServerError => 1011,
            Self::TokenExpired => 4002,
            Self::TokenRefused => 4003,
            Self::TooManyFrames => 1008,
            Self::TooManySessions => 4004,
            Self::Revoked => 4005,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::HeartbeatTimeout => "heartbeat timeout",
            Self::FrameTooLarge => "message too large",
            Self::ProtocolError => "protocol error",
            Self::ServerShutdown => "server shutting down; reconnect",
            Self::SlowConsumer => "slow consumer",
            Self::ServerError => "server error",
            Self::TokenExpired => "token expired",
            Self::TokenRefused => "token refused",
            Self::TooManyFrames => "too many frames",
            Self::TooManySessions => "too many sessions for this user",
            Self::Revoked => "revoked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Any JSON value, nested a few levels.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A frame of a known type whose other fields are anything at all.
    fn known_type_frame() -> impl Strategy<Value = String> {
        let kinds = prop::sample::select(CLIENT_FRAME_TYPES.to_vec());
        let fields = prop::collection::btree_map(
            prop::sample::select(vec![
                "ref",
                "conversation_id",
                "text",
                "attachments",
                "client_msg_id",
                "up_to",
                "since",
                "token",
                "channel",
                "event",
                "data",
                "other",
            ]),
            json(),
            0..6,
        );
        (kinds, fields).prop_map(|(kind, fields)| {
            let mut object: serde_json::Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            object.insert("type".into(), Value::String(kind.into()));
            Value::Object(object).to_string()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_text_never_panics_the_parser(text in ".{0,200}") {
            let _ = ClientFrame::parse(&text);
        }

        #[test]
        fn arbitrary_json_is_parsed_or_refused_with_a_code(value in json()) {
            if let Err(e) = ClientFrame::parse(&value.to_string()) {
                prop_assert!(!e.code().is_empty());
            }
        }

        #[test]
        fn known_types_with_arbitrary_fields_are_parsed_or_invalid(text in known_type_frame()) {
            match ClientFrame::parse(&text) {
                Ok(_) | Err(FrameError::Invalid(_)) => {}
                Err(other) => prop_assert!(false, "{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn frames_parse_or_say_why_not() {
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"ping","ref":7}"#),
            Ok(ClientFrame::Ping { reference: Some(_) })
        ));
        assert_eq!(
            ClientFrame::parse("{nope").unwrap_err(),
            FrameError::MalformedJson
        );
        assert_eq!(
            ClientFrame::parse("[1]").unwrap_err(),
            FrameError::MissingType
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"join","account_id":"x"}"#).unwrap_err(),
            FrameError::UnknownType
        );
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"ping","extra":1}"#),
            Err(FrameError::Invalid(_))
        ));
    }

    #[test]
    fn frames_nested_past_the_limit_are_invalid_as_text_or_as_parsed_json() {
        let nested = |levels| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        let frame = |levels| format!(r#"{{"type":"ping","ref":{}}}"#, nested(levels));
        assert!(ClientFrame::parse(&frame(json::MAX_DEPTH - 1)).is_ok());
        for levels in [json::MAX_DEPTH, 127, 10_000] {
            let refused = ClientFrame::parse(&frame(levels)).unwrap_err();
            assert_eq!(refused.code(), "invalid-frame", "{levels}");
        }
        // A Socket.IO emit arrives parsed (by serde_json, up to its own limit of 128).
        let parsed: Value = serde_json::from_str(&frame(100)).unwrap();
        assert_eq!(
            ClientFrame::from_value(parsed).unwrap_err().code(),
            "invalid-frame"
        );
    }

    #[test]
    fn event_frame_embeds_data_verbatim() {
        let data = RawValue::from_string(r#"{"a":[1,2]}"#.into()).unwrap();
        assert_eq!(
            &*event_frame(3, None, "new-message", &data),
            r#"{"type":"event","seq":3,"event":"new-message","data":{"a":[1,2]}}"#
        );
        assert_eq!(
            &*event_frame(4, Some("order:7"), "paid", &data),
            r#"{"type":"event","seq":4,"channel":"order:7","event":"paid","data":{"a":[1,2]}}"#
        );
    }
}
