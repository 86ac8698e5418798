//! The event as the engine moves it: stored, sequenced, serialized once into its frame, and
//! shared by every recipient. Producers (the publisher, the inbox, webhooks, outbound, the
//! cluster, the long-poll API) build a [`RoomEvent`] and hand it to the broker; they need not
//! know the actors.
//!
//! Engine layer: may use `ids`, `channel`, `protocol`, `store::events` (a stored row) and `metrics`.

mod handed;

use bytestring::ByteString;
use serde_json::value::RawValue;

pub use handed::Handed;
pub(crate) use handed::Pacing;

use crate::channel::Channel;
use crate::ids::UserId;
use crate::protocol::event_frame;
use crate::store::events;

/// An event as the room handles it: serialized once, shared by every recipient.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub struct RoomEvent {
    pub seq: u64,
    /// When set, only this user's sessions receive it.
    pub user: Option<UserId>,
    /// When set, only the sessions following this channel receive it.
    pub channel: Option<Channel>,
    pub frame: ByteString,
    /// Set for newly stored events (not for those read back from the database).
    pub handed: Option<Handed>,
}

impl RoomEvent {
    /// `None` for a row that cannot be delivered faithfully. Rows are checked when they are
    /// published, so only one edited by hand can be; it is skipped rather than guessed at (a
    /// user id that does not parse must not widen the audience to the whole account).
    pub fn from_stored(row: events::StoredEvent) -> Option<Self> {
        let seq = row.seq as u64;
        let user = row.user_id.as_deref().map(UserId::new).transpose();
        let channel = row.channel.as_deref().map(Channel::new).transpose();
        let data = RawValue::from_string(row.data);
        let (Ok(user), Ok(channel), Ok(data)) = (user, channel, data) else {
            log::error!(
                "stored event is malformed, skipped account={} seq={seq}",
                row.account_id
            );
            return None;
        };
        Some(Self {
            seq,
            frame: event_frame(
                seq,
                channel.as_ref().map(Channel::as_str),
                &row.event,
                &data,
            ),
            user,
            channel,
            handed: None,
        })
    }
}
