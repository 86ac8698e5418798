//! What travels between nodes on the Redis channel: one JSON message per event, ephemeral
//! frame, presence change or catch-up request, signed (see [`super::signing`]). Frames are
//! already serialized for clients, so they are embedded as they are; the receiving node checks
//! them and builds its own from their parts (see [`super::admission`]).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The one channel every node publishes to and subscribes to.
pub const CHANNEL: &str = "switchboard:events";

/// Externally tagged (`{"event":{…}}`): serde reads such a message in one pass, which is what
/// lets the embedded frame be borrowed as raw JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelMessage<'a> {
    /// A stored event. `stored_ms`: when it was stored (Unix ms), for the latency histogram.
    Event {
        #[serde(borrow)]
        node: Cow<'a, str>,
        #[serde(borrow)]
        account: Cow<'a, str>,
        seq: u64,
        #[serde(borrow)]
        user: Option<Cow<'a, str>>,
        stored_ms: i64,
        #[serde(borrow)]
        frame: &'a RawValue,
    },
    /// An ephemeral frame (typing, presence status) for some users of an account, or all.
    Ephemeral {
        #[serde(borrow)]
        node: Cow<'a, str>,
        #[serde(borrow)]
        account: Cow<'a, str>,
        #[serde(borrow)]
        users: Option<Vec<Cow<'a, str>>>,
        #[serde(borrow)]
        except: Option<Cow<'a, str>>,
        #[serde(borrow)]
        frame: &'a RawValue,
    },
    /// A user came online or went offline across the cluster. Published by the presence scripts
    /// in Redis, so every node — the deciding one included — hears it once.
    Presence {
        #[serde(borrow)]
        account: Cow<'a, str>,
        #[serde(borrow)]
        user: Cow<'a, str>,
        online: bool,
        /// When Redis decided it: microseconds of its clock, as a string of digits (Lua's
        /// numbers would lose digits), strictly increasing per user.
        #[serde(borrow, default)]
        decided: Option<Cow<'a, str>>,
    },
    /// Events of the account (of every account, for `None`) may not have reached the other
    /// nodes — the node could not relay them, or a publish was answered as an idempotent replay
    /// of one whose relay may have been lost: rooms behind `head` (or any, without it) read them
    /// from the database.
    CatchUp {
        #[serde(borrow)]
        node: Cow<'a, str>,
        #[serde(borrow)]
        account: Option<Cow<'a, str>>,
        head: Option<u64>,
    },
}

impl ChannelMessage<'_> {
    /// The node that sent it; `None` for presence changes, which every node applies.
    pub fn node(&self) -> Option<&str> {
        match self {
            Self::Event { node, .. }
            | Self::Ephemeral { node, .. }
            | Self::CatchUp { node, .. } => Some(node),
            Self::Presence { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_keeps_its_frame_byte_for_byte() {
        let frame = r#"{"type":"event","seq":7,"event":"x","data":{"a":"\u00e9\/"}}"#;
        let raw: &RawValue = serde_json::from_str(frame).unwrap();
        let wire = ChannelMessage::Event {
            node: "n1".into(),
            account: "acme:\"eu\"".into(),
            seq: 7,
            user: Some("alice".into()),
            stored_ms: 1,
            frame: raw,
        };
        let text = serde_json::to_string(&wire).unwrap();
        let ChannelMessage::Event { frame, account, .. } = serde_json::from_str(&text).unwrap()
        else {
            panic!("not an event: {text}");
        };
        assert_eq!(
            frame.get(),
            r#"{"type":"event","seq":7,"event":"x","data":{"a":"\u00e9\/"}}"#
        );
        assert_eq!(account, "acme:\"eu\"");
    }

    #[test]
    fn presence_from_lua_cjson_is_understood() {
        // What the presence scripts' `cjson.encode` produces (it escapes `/`).
        let text = r#"{"presence":{"online":false,"user":"a\/b","account":"acme","decided":"1764960000123456"}}"#;
        let wire: ChannelMessage = serde_json::from_str(text).unwrap();
        let ChannelMessage::Presence {
            account,
            user,
            online,
            decided,
        } = wire
        else {
            panic!("not presence");
        };
        assert_eq!((&*account, &*user, online), ("acme", "a/b", false));
        assert_eq!(decided.as_deref(), Some("1764960000123456"));
    }
}
