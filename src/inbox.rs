//! The inbox as events: storing messages of conversations and emitting the persisted, sequenced
//! events that tell the right sessions about them. Shared by the webhooks (inbound), the
//! conversations API and the WebSocket (sends, reads), and the outbound dispatcher (status).
//!
//! Who hears about a conversation depends on its kind: an external conversation (a customer on
//! Facebook, Zalo, …) belongs to the whole account, so its events go to every session of the
//! account; a conversation between users goes to its participants only, each with their own
//! unread count. Everything here runs inside the one commit path ([`crate::commit`]) for the
//! account, so the events get the account's next sequence numbers in the same transaction as the
//! change they describe, and reach the broker once that transaction has committed.
//!
//! Services layer: uses `store`, `event`, `protocol` and `commit`; no actor, no HTTP.
//!
//! A user's sends, whichever way they arrive (WebSocket, Socket.IO, REST), draw on one allowance
//! per user, [`SendRate`].

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::channel::Channel;
use crate::commit::Changes;
use crate::event::{Handed, RoomEvent};
use crate::ids::{random_id, AccountId, UserId};
use crate::protocol::{event_frame, ECHO_METADATA_PREFIX};
use crate::store::conversations::{
    self, Conversation, Direction, Message, MessageStatus, NewMessage,
};
use crate::store::events::{self, NewEvent};
use crate::store::{deliveries, integrations, now_ms, DbConnection, StoreError};

/// Longest message text, in characters.
pub const MAX_TEXT: usize = 10_000;

/// Why a user's send or read was refused.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("no such conversation, or you are not a participant")]
    NotParticipant,
    #[error("the message has no text")]
    EmptyText,
    #[error("the text is longer than {MAX_TEXT} characters")]
    TooLong,
    #[error("`up_to` is not a message of this conversation")]
    UnknownMessage,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl InboxError {
    /// The code of the WebSocket `error` frame.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotParticipant => "not-a-participant",
            Self::EmptyText => "empty-text",
            Self::TooLong => "text-too-long",
            Self::UnknownMessage => "unknown-message",
            Self::Store(_) => "internal-error",
        }
    }
}

/// Checks between sweeps of the users whose allowance has refilled.
const SWEEP_EVERY: u32 = 1024;

/// Each user's allowance of sends on this node (`SWITCHBOARD_SENDS_PER_SECOND`, twice as many in
/// a burst), shared by every way a send arrives, so that no way around the limit is open (another
/// tab, another transport). Users whose allowance has refilled are swept out every
/// [`SWEEP_EVERY`] checks: the map holds the users who sent in the last two seconds (the refill of
/// a full burst), plus at most [`SWEEP_EVERY`] more.
pub struct SendRate {
    allowance:
        RateLimiter<(AccountId, UserId), HashMapStateStore<(AccountId, UserId)>, DefaultClock>,
    since_sweep: AtomicU32,
}

impl SendRate {
    pub fn new(per_second: NonZeroU32) -> Self {
        let burst = per_second.saturating_mul(NonZeroU32::new(2).expect("two is not zero"));
        Self {
            allowance: RateLimiter::hashmap(Quota::per_second(per_second).allow_burst(burst)),
            since_sweep: AtomicU32::new(0),
        }
    }

    /// Takes one send from the user's allowance; when it is spent, how long until the next.
    pub fn check(&self, account: &AccountId, user: &UserId) -> Result<(), Duration> {
        if self.since_sweep.fetch_add(1, Ordering::Relaxed) >= SWEEP_EVERY {
            self.since_sweep.store(0, Ordering::Relaxed);
            self.allowance.retain_recent();
        }
        self.allowance
            .check_key(&(account.clone(), user.clone()))
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Appends an event (JSON `data`) for the account, or for one user of it; returns it ready to
/// deliver, serialized once.
pub fn emit(
    conn: &mut DbConnection,
    account: &AccountId,
    user: Option<&UserId>,
    event: &str,
    data: &RawValue,
) -> Result<RoomEvent, StoreError> {
    emit_to(conn, account, (user, None), event, data)
}

/// [`emit`], for the sessions that follow a channel (of those, the user's when `user` is set).
pub fn emit_to(
    conn: &mut DbConnection,
    account: &AccountId,
    (user, channel): (Option<&UserId>, Option<&Channel>),
    event: &str,
    data: &RawValue,
) -> Result<RoomEvent, StoreError> {
    let seq = events::append(
        conn,
        &NewEvent {
            account,
            user,
            channel,
            event,
            data: data.get(),
        },
    )?;
    Ok(stored_event(seq, (user, channel), event, data))
}

/// The event just stored under `seq`, for the broker.
pub fn stored_event(
    seq: u64,
    (user, channel): (Option<&UserId>, Option<&Channel>),
    event: &str,
    data: &RawValue,
) -> RoomEvent {
    RoomEvent {
        seq,
        user: user.cloned(),
        channel: channel.cloned(),
        frame: event_frame(seq, channel.map(Channel::as_str), event, data),
        handed: Some(Handed::stored_ago(Duration::ZERO)),
    }
}

/// One of our own views, serialized once as event data (never parsed back).
fn raw(view: &impl Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(view).expect("our views serialize")
}

/// Who hears about a conversation: `None` for the whole account, else its participants.
fn audience(
    conn: &mut DbConnection,
    conversation: &Conversation,
) -> Result<Option<Vec<UserId>>, StoreError> {
    if conversation.is_external() {
        return Ok(None);
    }
    let ids = conversations::participants_of(conn, &conversation.id)?;
    Ok(Some(
        ids.iter().filter_map(|u| UserId::new(u).ok()).collect(),
    ))
}

/// The conversation as `viewer` (or, for `None`, the account) sees it, as JSON.
pub fn view_json(
    conn: &mut DbConnection,
    conversation: &Conversation,
    viewer: Option<&UserId>,
) -> Result<Box<RawValue>, StoreError> {
    Ok(match (conversation.is_external(), viewer) {
        (false, Some(viewer)) => {
            let participants = conversations::participants_of(conn, &conversation.id)?;
            let unread = conversations::participant(conn, &conversation.id, viewer)?
                .map_or(0, |p| p.unread_count);
            raw(&conversation.view(Some(&participants), unread))
        }
        _ => raw(&conversation.view(None, conversation.unread_count)),
    })
}

/// `update-conversation` to everyone who sees the conversation, each with their own view.
fn conversation_updated(
    conn: &mut DbConnection,
    account: &AccountId,
    conversation: &Conversation,
) -> Result<Vec<RoomEvent>, StoreError> {
    if conversation.is_external() {
        let data = view_json(conn, conversation, None)?;
        return Ok(vec![emit(
            conn,
            account,
            None,
            "update-conversation",
            &data,
        )?]);
    }
    // Participants and their unread counts read once, not once per participant.
    let participants = conversations::participants_of(conn, &conversation.id)?;
    let unread = conversations::unread_counts_in(conn, &conversation.id)?;
    let mut events = Vec::with_capacity(participants.len());
    for id in &participants {
        let Ok(user) = UserId::new(id) else { continue };
        let count = unread.iter().find(|(u, _)| u == id).map_or(0, |(_, n)| *n);
        let data = raw(&conversation.view(Some(&participants), count));
        events.push(emit(
            conn,
            account,
            Some(&user),
            "update-conversation",
            &data,
        )?);
    }
    Ok(events)
}

/// A stored message, its events, and the sequence number of the `new-message` its sender sees
/// (what an ack carries).
pub struct Added {
    pub message: Message,
    pub events: Vec<RoomEvent>,
    pub seq: u64,
}

/// Stores a message and emits `new-message` and `update-conversation` to everyone who sees the
/// conversation.
pub fn add_message(
    conn: &mut DbConnection,
    account: &AccountId,
    new: &NewMessage<'_>,
) -> Result<Added, StoreError> {
    let (message, conversation) = conversations::add_message(conn, new)?;
    let data = raw(&message.view());
    let mut events = Vec::new();
    let mut seq = None;
    match audience(conn, &conversation)? {
        None => events.push(emit(conn, account, None, "new-message", &data)?),
        Some(users) => {
            for user in &users {
                let event = emit(conn, account, Some(user), "new-message", &data)?;
                if user.as_str() == message.sender_id {
                    seq = Some(event.seq);
                }
                events.push(event);
            }
        }
    }
    let seq = seq.or(events.first().map(|e| e.seq)).unwrap_or_default();
    events.extend(conversation_updated(conn, account, &conversation)?);
    Ok(Added {
        message,
        events,
        seq,
    })
}

/// What a user sends.
pub struct Send<'a> {
    pub conversation_id: &'a str,
    pub text: Option<&'a str>,
    /// JSON array.
    pub attachments: Option<&'a str>,
    /// Makes the send idempotent: a retry returns the first result.
    pub client_msg_id: Option<&'a str>,
}

impl Send<'_> {
    /// The checks that need no database.
    pub fn validate(&self) -> Result<(), InboxError> {
        match self.text {
            Some(text) if text.chars().count() > MAX_TEXT => Err(InboxError::TooLong),
            Some(text) if !text.trim().is_empty() => Ok(()),
            _ if self.attachments.is_some() => Ok(()),
            _ => Err(InboxError::EmptyText),
        }
    }
}

/// A user's message, stored (or found again by its `client_msg_id`).
pub struct Sent {
    pub message: Message,
    pub seq: u64,
    pub events: Vec<RoomEvent>,
    /// An outbound webhook to dispatch (a reply to an external contact).
    pub delivery: Option<String>,
    /// The `client_msg_id` had been sent before; nothing new was stored.
    pub duplicate: bool,
}

impl Changes for Sent {
    fn take_events(&mut self) -> Vec<RoomEvent> {
        std::mem::take(&mut self.events)
    }

    fn delivery(&self) -> Option<&str> {
        self.delivery.as_deref()
    }
}

/// A user sends a message: to the participants of a conversation between users, or as a reply
/// to an external contact (handed to the app by outbound webhook). Run inside [`crate::store::write`].
pub fn send(
    conn: &mut DbConnection,
    account: &AccountId,
    user: &UserId,
    send: &Send<'_>,
) -> Result<Sent, InboxError> {
    let conversation = conversations::visible(conn, account, user, send.conversation_id)?
        .ok_or(InboxError::NotParticipant)?;
    if let Some(key) = send.client_msg_id {
        if let Some(message) =
            conversations::by_client_msg_id(conn, &conversation.id, user.as_str(), key)?
        {
            return Ok(Sent {
                seq: message.ack_seq.unwrap_or_default() as u64,
                message,
                events: Vec::new(),
                delivery: None,
                duplicate: true,
            });
        }
    }
    let integration = match &conversation.integration_id {
        Some(id) => integrations::get(conn, id)?,
        None => None,
    };
    let forward = integration
        .as_ref()
        .is_some_and(|i| i.outbound_url.is_some());
    let (direction, status) = match (conversation.is_external(), forward) {
        (false, _) => (Direction::Internal, MessageStatus::Sent),
        (true, true) => (Direction::Outbound, MessageStatus::Pending),
        (true, false) => (Direction::Outbound, MessageStatus::NotForwarded),
    };
    let added = add_message(
        conn,
        account,
        &NewMessage {
            conversation: &conversation,
            direction,
            provider_message_id: None,
            sender_id: user.as_str(),
            text: send.text,
            attachments: send.attachments,
            status,
            client_msg_id: send.client_msg_id,
            created_at: now_ms(),
        },
    )?;
    conversations::set_ack_seq(conn, &added.message.id, added.seq)?;
    let delivery = match integration.filter(|_| forward) {
        Some(integration) => {
            let id = random_id("whk");
            let payload = outbound_payload(&added.message, &conversation, &integration.external_id);
            deliveries::create(
                conn,
                deliveries::Kind::Reply,
                &id,
                &integration.id,
                &added.message.id,
                &payload,
            )?;
            Some(id)
        }
        None => None,
    };
    Ok(Sent {
        message: added.message,
        seq: added.seq,
        events: added.events,
        delivery,
        duplicate: false,
    })
}

/// The outbound webhook's body (Standard Webhooks envelope). `metadata` is for the app to pass to
/// the provider (Facebook's Send API `metadata`), so the provider's echo is matched to this
/// message instead of being shown twice.
fn outbound_payload(message: &Message, conversation: &Conversation, external_id: &str) -> String {
    let attachments = message
        .attachments
        .as_deref()
        .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok());
    json!({
        "type": "message.outbound",
        "timestamp": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "data": {
            "message_id": message.id,
            "conversation_id": conversation.id,
            "account_id": conversation.account_id,
            "integration_id": conversation.integration_id,
            "provider": conversation.provider,
            "external_id": external_id,
            "contact_id": conversation.contact_id,
            "text": message.text,
            "attachments": attachments,
            "sent_by": message.sender_id,
            "metadata": format!("{ECHO_METADATA_PREFIX}{}", message.id),
        }
    })
    .to_string()
}

/// A user has read a conversation up to a message (the latest when `None`). An external
/// conversation is read for the whole account; in a conversation between users the other
/// participants get `message-read`, and the reader's tabs their new unread count.
pub fn mark_read(
    conn: &mut DbConnection,
    account: &AccountId,
    user: &UserId,
    conversation_id: &str,
    up_to: Option<&str>,
) -> Result<(Box<RawValue>, Vec<RoomEvent>), InboxError> {
    let conversation = conversations::visible(conn, account, user, conversation_id)?
        .ok_or(InboxError::NotParticipant)?;
    if conversation.is_external() {
        let conversation = conversations::mark_read(conn, &conversation.id)?;
        let events = conversation_updated(conn, account, &conversation)?;
        return Ok((view_json(conn, &conversation, None)?, events));
    }
    let up_to = match up_to {
        Some(id) => Some(
            conversations::message(conn, account.as_str(), id)?
                .filter(|m| m.conversation_id == conversation.id)
                .ok_or(InboxError::UnknownMessage)?,
        ),
        None => None,
    };
    conversations::mark_read_by(conn, &conversation.id, user, up_to.as_ref())?;
    let mut events = Vec::new();
    let receipt = raw(&json!({
        "conversation_id": conversation.id,
        "user_id": user.as_str(),
        "up_to": up_to.as_ref().map(|m| m.id.as_str()),
    }));
    for other in audience(conn, &conversation)?.unwrap_or_default() {
        if &other != user {
            events.push(emit(conn, account, Some(&other), "message-read", &receipt)?);
        }
    }
    let view = view_json(conn, &conversation, Some(user))?;
    events.push(emit(
        conn,
        account,
        Some(user),
        "update-conversation",
        &view,
    )?);
    Ok((view, events))
}

/// Who should see `user` typing in a conversation they may see: `None` for the whole account
/// (an external conversation), else its participants.
pub fn typing_audience(
    conn: &mut DbConnection,
    account: &AccountId,
    user: &UserId,
    conversation_id: &str,
) -> Result<Option<Vec<UserId>>, InboxError> {
    let conversation = conversations::visible(conn, account, user, conversation_id)?
        .ok_or(InboxError::NotParticipant)?;
    Ok(audience(conn, &conversation)?)
}

/// Opens the direct conversation of two users (or gets the existing one), or a new group; tells
/// every participant's tabs. Returns the creator's view and whether it is new.
pub fn open(
    conn: &mut DbConnection,
    account: &AccountId,
    creator: &UserId,
    others: &[UserId],
    title: Option<&str>,
) -> Result<(Box<RawValue>, bool, Vec<RoomEvent>), StoreError> {
    let (conversation, created) = match (others, title) {
        ([other], None) => conversations::direct(conn, account, creator, other)?,
        _ => {
            let mut members = vec![creator.clone()];
            members.extend(others.iter().cloned());
            (conversations::group(conn, account, title, &members)?, true)
        }
    };
    let events = if created {
        conversation_updated(conn, account, &conversation)?
    } else {
        Vec::new()
    };
    Ok((
        view_json(conn, &conversation, Some(creator))?,
        created,
        events,
    ))
}

/// `message-status`: an outbound message (or several, up to a watermark) changed status.
pub fn message_status(
    conn: &mut DbConnection,
    account: &AccountId,
    data: serde_json::Value,
) -> Result<RoomEvent, StoreError> {
    emit(conn, account, None, "message-status", &raw(&data))
}

/// `message-status` for one message.
pub fn one_message_status(
    conn: &mut DbConnection,
    account: &AccountId,
    message: &Message,
) -> Result<RoomEvent, StoreError> {
    let data = json!({
        "conversation_id": message.conversation_id,
        "message_id": message.id,
        "status": message.status,
        "provider_message_id": message.provider_message_id,
    });
    message_status(conn, account, data)
}
