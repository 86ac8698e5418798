//! Admission of what arrives on the cluster channel: a message is checked where it enters —
//! size, signature, shape, ids, and the frame it carries — and becomes typed news for the broker,
//! or a reason to drop it. Nothing past this point handles another node's bytes: the frames a
//! room delivers are built here by this node, from checked parts, with the same functions that
//! frame its own events, so a frame of another shape (another version of Switchboard, or
//! anything else published on the channel) can never reach a session or a re-framing.
//!
//! Pure functions; uses the wire format, the signing key, ids and the protocol's frame builders.

use std::borrow::Cow;
use std::time::Duration;

use bytestring::ByteString;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::signing::{Key, Unsigned};
use super::wire::ChannelMessage;
use crate::actors::broker::{Ephemeral, FromPeers};
use crate::channel::Channel;
use crate::event::{Handed, RoomEvent};
use crate::ids::{AccountId, UserId};
use crate::protocol::{check_event_name, ephemeral_frame, event_frame};

/// Largest message accepted from the channel: well above any event the publish API or a webhook
/// can store with the default limits. A larger one is dropped (its event, if it was one, is
/// still read from the database by the rooms that miss it).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A message from the channel, checked.
pub enum Admitted {
    News(FromPeers),
    /// This node's own message, back from Redis.
    Own,
}

/// Why a message was dropped; the label of its metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    TooLarge,
    /// Not signed, and not a presence change (the one kind Redis itself publishes).
    Unsigned,
    BadSignature,
    /// Not JSON, or not a message this version knows.
    Malformed,
    /// An account or user id that is not one.
    BadId,
    /// A frame that is not an event frame of the announced event, or a sequence number out of
    /// range.
    BadFrame,
}

impl Refusal {
    pub fn kind(self) -> &'static str {
        match self {
            Self::TooLarge => "too-large",
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad-signature",
            Self::Malformed => "malformed",
            Self::BadId => "bad-id",
            Self::BadFrame => "bad-frame",
        }
    }
}

/// A dropped message.
pub struct Refused {
    pub why: Refusal,
    /// For a signed message (so from a node of this cluster) that names its account: a
    /// [`FromPeers::CatchUp`] for that account's rooms, so an event in a message this version
    /// cannot read is still delivered, from the database.
    pub catch_up: Option<FromPeers>,
}

impl From<Refusal> for Refused {
    fn from(why: Refusal) -> Self {
        Self {
            why,
            catch_up: None,
        }
    }
}

/// Checks a message from the channel; `node` is this node's name.
pub fn admit(payload: &[u8], key: &Key, node: &str) -> Result<Admitted, Refused> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(Refusal::TooLarge.into());
    }
    let (json, signed) = match key.verify(payload) {
        Ok(json) => (json, true),
        Err(Unsigned::Missing) => (payload, false),
        Err(Unsigned::Invalid) => return Err(Refusal::BadSignature.into()),
    };
    let refused = |why: Refusal, head: Option<u64>| Refused {
        why,
        catch_up: signed
            .then(|| named_account(json))
            .flatten()
            .map(|account| FromPeers::CatchUp {
                account: Some(account),
                head,
            }),
    };
    let wire: ChannelMessage = match serde_json::from_slice(json) {
        Ok(wire) => wire,
        Err(_) => return Err(refused(Refusal::Malformed, None)),
    };
    if !signed && !matches!(wire, ChannelMessage::Presence { .. }) {
        return Err(Refusal::Unsigned.into());
    }
    if wire.node() == Some(node) {
        return Ok(Admitted::Own);
    }
    let head = match &wire {
        ChannelMessage::Event { seq, .. } => Some(*seq),
        _ => None,
    };
    typed(wire).map_err(|why| refused(why, head))
}

/// The message's parts as typed values, its frame rebuilt by this node.
fn typed(wire: ChannelMessage) -> Result<Admitted, Refusal> {
    let account = |a: &str| AccountId::new(a).map_err(|_| Refusal::BadId);
    let user = |u: &str| UserId::new(u).map_err(|_| Refusal::BadId);
    Ok(match wire {
        ChannelMessage::Event {
            account: a,
            seq,
            user: u,
            stored_ms,
            frame,
            ..
        } => Admitted::News(FromPeers::Event {
            account: account(&a)?,
            event: {
                let (frame, channel) = event_frame_from(seq, frame)?;
                RoomEvent {
                    seq,
                    user: u.as_deref().map(user).transpose()?,
                    channel,
                    frame,
                    handed: Some(Handed::stored_ago(Duration::from_millis(
                        crate::store::now_ms().saturating_sub(stored_ms).max(0) as u64,
                    ))),
                }
            },
        }),
        ChannelMessage::Ephemeral {
            account: a,
            users,
            except,
            frame,
            ..
        } => Admitted::News(FromPeers::Ephemeral(Ephemeral {
            account: account(&a)?,
            users: users
                .map(|users| users.iter().map(|u| user(u)).collect())
                .transpose()?,
            except: except.as_deref().map(user).transpose()?,
            frame: ephemeral_frame_from(frame)?,
        })),
        ChannelMessage::Presence {
            account: a,
            user: u,
            online,
            decided,
        } => Admitted::News(FromPeers::Presence {
            account: account(&a)?,
            user: user(&u)?,
            online,
            // Digits, as the scripts write them; anything else is as good as none.
            decided: decided.and_then(|d| d.parse().ok()),
        }),
        ChannelMessage::CatchUp {
            account: a, head, ..
        } => Admitted::News(FromPeers::CatchUp {
            account: a.as_deref().map(account).transpose()?,
            head,
        }),
    })
}

/// An event or ephemeral frame as another node sent it: `{"type":"event",["seq":…,]"event":…,
/// "data":…}`. Other fields (a later version's) are left out of the frame rebuilt from it.
#[derive(Deserialize)]
struct PeerFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    seq: Option<u64>,
    /// A channel event's channel (checked, and the frame rebuilt with it).
    #[serde(default, borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl<'a> PeerFrame<'a> {
    fn parse(frame: &'a RawValue) -> Result<Self, Refusal> {
        let parsed: Self = serde_json::from_str(frame.get()).map_err(|_| Refusal::BadFrame)?;
        if parsed.kind != "event" || check_event_name(&parsed.event).is_err() {
            return Err(Refusal::BadFrame);
        }
        Ok(parsed)
    }
}

/// The event frame for sequence number `seq`, built from the peer's frame of that event, and the
/// event's channel.
fn event_frame_from(seq: u64, frame: &RawValue) -> Result<(ByteString, Option<Channel>), Refusal> {
    let parsed = PeerFrame::parse(frame)?;
    // Stored sequence numbers start at 1 and are `BIGINT`s.
    if parsed.seq != Some(seq) || seq == 0 || seq > i64::MAX as u64 {
        return Err(Refusal::BadFrame);
    }
    let channel = parsed
        .channel
        .as_deref()
        .map(Channel::new)
        .transpose()
        .map_err(|_| Refusal::BadFrame)?;
    let name = channel.as_ref().map(Channel::as_str);
    Ok((event_frame(seq, name, &parsed.event, parsed.data), channel))
}

/// An ephemeral frame (no sequence number), built from the peer's.
fn ephemeral_frame_from(frame: &RawValue) -> Result<ByteString, Refusal> {
    let parsed = PeerFrame::parse(frame)?;
    if parsed.seq.is_some() {
        return Err(Refusal::BadFrame);
    }
    let data: serde_json::Value =
        serde_json::from_str(parsed.data.get()).map_err(|_| Refusal::BadFrame)?;
    Ok(ephemeral_frame(&parsed.event, &data))
}

/// The account a message names, read loosely (`{"<kind>":{"account":"…",…}}`) from one this
/// version cannot read whole.
fn named_account(json: &[u8]) -> Option<AccountId> {
    let message: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json).ok()?;
    let (_, body) = message.iter().next()?;
    AccountId::new(body.get("account")?.as_str()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use proptest::prelude::*;

    fn key() -> Key {
        Key::derive(&Secret::new("a secret of at least thirty-two bytes".into()))
    }

    fn signed(json: &str) -> Vec<u8> {
        key().sign(json)
    }

    fn refusal(payload: &[u8]) -> Refusal {
        match admit(payload, &key(), "me") {
            Err(refused) => refused.why,
            Ok(_) => panic!("admitted: {}", String::from_utf8_lossy(payload)),
        }
    }

    const EVENT: &str = r#"{"event":{"node":"n2","account":"acme","seq":7,"user":null,"stored_ms":1,"frame":{"type":"event","seq":7,"event":"tick","data":{"a":"\u00e9"}}}}"#;

    #[test]
    fn a_signed_event_becomes_a_frame_built_here() {
        let Ok(Admitted::News(FromPeers::Event { account, event })) =
            admit(&signed(EVENT), &key(), "me")
        else {
            panic!("not admitted");
        };
        assert_eq!(account.as_str(), "acme");
        assert_eq!(
            &*event.frame,
            r#"{"type":"event","seq":7,"event":"tick","data":{"a":"\u00e9"}}"#
        );
        assert!(matches!(
            admit(&signed(&EVENT.replace("n2", "me")), &key(), "me"),
            Ok(Admitted::Own)
        ));
    }

    #[test]
    fn unsigned_messages_other_than_presence_are_refused() {
        assert_eq!(refusal(EVENT.as_bytes()), Refusal::Unsigned);
        let presence = r#"{"presence":{"online":true,"user":"u","account":"acme"}}"#;
        assert!(matches!(
            admit(presence.as_bytes(), &key(), "me"),
            Ok(Admitted::News(FromPeers::Presence { .. }))
        ));
        let forged = Key::derive(&Secret::new("not this cluster's secret, 32 bytes".into()));
        assert_eq!(refusal(&forged.sign(EVENT)), Refusal::BadSignature);
    }

    #[test]
    fn frames_of_another_shape_are_refused_and_name_their_account() {
        for (frame, why) in [
            (r#"{"foo":1}"#, Refusal::BadFrame),
            (
                r#"{"type":"event","seq":8,"event":"tick","data":1}"#,
                Refusal::BadFrame,
            ),
            (
                r#"{"type":"welcome","seq":7,"event":"tick","data":1}"#,
                Refusal::BadFrame,
            ),
            (
                r#"{"type":"event","seq":7,"event":"bad name","data":1}"#,
                Refusal::BadFrame,
            ),
            (r#"[1,2]"#, Refusal::BadFrame),
            (r#""text""#, Refusal::BadFrame),
        ] {
            let message = EVENT.replace(
                r#"{"type":"event","seq":7,"event":"tick","data":{"a":"\u00e9"}}"#,
                frame,
            );
            let Err(refused) = admit(&signed(&message), &key(), "me") else {
                panic!("admitted {frame}");
            };
            assert_eq!(refused.why, why, "{frame}");
            let Some(FromPeers::CatchUp { account, head }) = refused.catch_up else {
                panic!("a signed message names its account");
            };
            assert_eq!(account.unwrap().as_str(), "acme");
            assert_eq!(head, Some(7));
        }
        let truncated = &EVENT[..EVENT.len() - 9];
        assert_eq!(refusal(&signed(truncated)), Refusal::Malformed);
        assert_eq!(
            refusal(&signed(&EVENT.replace(r#""acme""#, r#""""#))),
            Refusal::BadId
        );
        assert_eq!(
            refusal(&signed(
                &EVENT.replace(r#""seq":7,"user""#, r#""seq":0,"user""#)
            )),
            Refusal::BadFrame
        );
    }

    proptest! {
        #[test]
        fn nothing_on_the_channel_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = admit(&bytes, &key(), "me");
            let _ = admit(&signed(&String::from_utf8_lossy(&bytes)), &key(), "me");
        }

        #[test]
        fn no_cut_of_a_real_message_panics(cut in 0..EVENT.len()) {
            let _ = admit(&signed(&EVENT[..cut]), &key(), "me");
            let _ = admit(&EVENT.as_bytes()[..cut], &key(), "me");
        }
    }
}
