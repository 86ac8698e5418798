//! Conversations with external contacts, their messages, and the receipts that make webhook
//! ingestion idempotent. Every query that a user can reach takes the caller's account, so another
//! account's conversation is simply not found.

use diesel::prelude::*;
use serde::Serialize;
use serde_json::value::RawValue;

use super::integrations::Integration;
use super::schema::{conversations, messages, participants, webhook_receipts};
use super::{now_ms, DbConnection, StoreError};
use crate::ids::{random_id, AccountId, UserId};

#[derive(Debug, Clone, Queryable)]
pub struct Conversation {
    pub id: String,
    pub account_id: String,
    /// `external`, `direct` or `group`.
    pub kind: String,
    pub integration_id: Option<String>,
    pub provider: Option<String>,
    pub contact_id: Option<String>,
    pub direct_key: Option<String>,
    pub title: Option<String>,
    pub last_message_at: i64,
    pub last_message_preview: Option<String>,
    /// For an external conversation: unread by the account.
    pub unread_count: i64,
    pub created_at: i64,
    /// The number of its latest message (see [`Message::position`]); 0 before the first.
    pub last_position: i64,
}

impl Conversation {
    /// With an external contact, seen by the whole account (rather than by participants only).
    pub fn is_external(&self) -> bool {
        self.kind == EXTERNAL
    }
}

pub const EXTERNAL: &str = "external";
pub const DIRECT: &str = "direct";
pub const GROUP: &str = "group";

/// How a conversation is shown to one user: their own unread count, and the participants of a
/// conversation between users.
#[derive(Serialize)]
pub struct ConversationView<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub account_id: &'a str,
    pub integration_id: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub contact_id: Option<&'a str>,
    pub title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participants: Option<&'a [String]>,
    pub last_message_at: i64,
    pub last_message_preview: Option<&'a str>,
    pub unread_count: i64,
    pub created_at: i64,
}

impl Conversation {
    pub fn view<'a>(
        &'a self,
        participants: Option<&'a [String]>,
        unread_count: i64,
    ) -> ConversationView<'a> {
        ConversationView {
            id: &self.id,
            kind: &self.kind,
            account_id: &self.account_id,
            integration_id: self.integration_id.as_deref(),
            provider: self.provider.as_deref(),
            contact_id: self.contact_id.as_deref(),
            title: self.title.as_deref(),
            participants,
            last_message_at: self.last_message_at,
            last_message_preview: self.last_message_preview.as_deref(),
            unread_count,
            created_at: self.created_at,
        }
    }
}

/// Which way a message went, seen from the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// From a contact, through a provider's webhook.
    Inbound,
    /// To a contact: a reply from the account (through Switchboard or, echoed, the provider).
    Outbound,
    /// Between users of the account (a direct or group conversation).
    Internal,
}

/// Where a message stands. An outbound one moves forward only, along pending → forwarded → sent
/// → delivered → read, or ends `failed`; `not-forwarded` when its integration has no outbound
/// URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageStatus {
    /// An inbound message, stored.
    Received,
    /// Waiting for its outbound delivery to the application.
    Pending,
    NotForwarded,
    /// Handed to the application (its outbound webhook answered 2xx).
    Forwarded,
    /// Gone out: the provider echoed it, or (internal) it is stored.
    Sent,
    Delivered,
    Read,
    /// Its outbound delivery was given up on.
    Failed,
}

/// The stored names: what the API shows, what the database holds.
macro_rules! stored_names {
    ($type:ident { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $type {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }

        impl TryFrom<String> for $type {
            type Error = String;

            fn try_from(stored: String) -> Result<Self, String> {
                match stored.as_str() {
                    $($name => Ok(Self::$variant),)*
                    _ => Err(format!("unknown {}: {stored:?}", stringify!($type))),
                }
            }
        }
    };
}

stored_names!(Direction {
    Inbound => "inbound",
    Outbound => "outbound",
    Internal => "internal",
});

stored_names!(MessageStatus {
    Received => "received",
    Pending => "pending",
    NotForwarded => "not-forwarded",
    Forwarded => "forwarded",
    Sent => "sent",
    Delivered => "delivered",
    Read => "read",
    Failed => "failed",
});

#[derive(Debug, Clone, Queryable)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub account_id: String,
    #[diesel(deserialize_as = String)]
    pub direction: Direction,
    pub provider_message_id: Option<String>,
    pub sender_id: String,
    pub text: Option<String>,
    pub attachments: Option<String>,
    #[diesel(deserialize_as = String)]
    pub status: MessageStatus,
    pub client_msg_id: Option<String>,
    pub ack_seq: Option<i64>,
    pub created_at: i64,
    /// Its place in the conversation: 1, 2, 3… in the order messages were stored (the commit
    /// order of the account's writes). What listings, cursors, the latest message and unread
    /// counts go by — not `created_at`, which ties within a millisecond and, for a provider's
    /// message, is the provider's time.
    pub position: i64,
}

/// How a message is shown to clients: attachments as JSON, not as the text they are stored as.
#[derive(Serialize)]
pub struct MessageView<'a> {
    pub id: &'a str,
    pub conversation_id: &'a str,
    pub direction: Direction,
    pub provider_message_id: Option<&'a str>,
    pub sender_id: &'a str,
    pub text: Option<&'a str>,
    pub attachments: Option<&'a RawValue>,
    pub status: MessageStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<&'a str>,
    pub created_at: i64,
}

impl Message {
    pub fn view(&self) -> MessageView<'_> {
        // Stored from JSON we took in; should a row hold anything else, it shows as no attachments.
        let attachments = self
            .attachments
            .as_deref()
            .and_then(|a| serde_json::from_str::<&RawValue>(a).ok());
        MessageView {
            id: &self.id,
            conversation_id: &self.conversation_id,
            direction: self.direction,
            provider_message_id: self.provider_message_id.as_deref(),
            sender_id: &self.sender_id,
            text: self.text.as_deref(),
            attachments,
            status: self.status,
            client_msg_id: self.client_msg_id.as_deref(),
            created_at: self.created_at,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.view()).expect("messages serialize")
    }
}

/// Records a provider message id (or webhook id) as ingested; `false` if it already was. Run
/// inside the account's write transaction, which makes the check and the insert atomic.
pub fn record_receipt(
    conn: &mut DbConnection,
    integration_id: &str,
    receipt_id: &str,
) -> Result<bool, StoreError> {
    let seen = webhook_receipts::table
        .find((integration_id, receipt_id))
        .count()
        .get_result::<i64>(conn)?
        > 0;
    if seen {
        return Ok(false);
    }
    diesel::insert_into(webhook_receipts::table)
        .values((
            webhook_receipts::integration_id.eq(integration_id),
            webhook_receipts::receipt_id.eq(receipt_id),
            webhook_receipts::created_at.eq(now_ms()),
        ))
        .execute(conn)?;
    Ok(true)
}

/// The conversation with `contact_id` on the integration, created on first contact.
pub fn for_contact(
    conn: &mut DbConnection,
    integration: &Integration,
    contact_id: &str,
    at: i64,
) -> Result<Conversation, StoreError> {
    let existing = conversations::table
        .filter(conversations::integration_id.eq(&integration.id))
        .filter(conversations::contact_id.eq(contact_id))
        .first(conn)
        .optional()?;
    if let Some(conversation) = existing {
        return Ok(conversation);
    }
    let id = random_id("conv");
    diesel::insert_into(conversations::table)
        .values((
            conversations::id.eq(&id),
            conversations::account_id.eq(integration.account_id.as_str()),
            conversations::kind.eq(EXTERNAL),
            conversations::integration_id.eq(&integration.id),
            conversations::provider.eq(&integration.provider),
            conversations::contact_id.eq(contact_id),
            conversations::last_message_at.eq(at),
            conversations::unread_count.eq(0_i64),
            conversations::created_at.eq(now_ms()),
        ))
        .execute(conn)?;
    Ok(conversations::table.find(&id).first(conn)?)
}

pub struct NewMessage<'a> {
    pub conversation: &'a Conversation,
    pub direction: Direction,
    pub provider_message_id: Option<&'a str>,
    pub sender_id: &'a str,
    pub text: Option<&'a str>,
    /// JSON text.
    pub attachments: Option<&'a str>,
    pub status: MessageStatus,
    pub client_msg_id: Option<&'a str>,
    pub created_at: i64,
}

/// Stores the message as the conversation's next and moves its activity forward: an inbound
/// message counts as unread for the account, a user's message as unread for the other
/// participants. Returns both as they now are. Call inside [`super::write`] for the account.
pub fn add_message(
    conn: &mut DbConnection,
    new: &NewMessage<'_>,
) -> Result<(Message, Conversation), StoreError> {
    let preview = new
        .text
        .map(|t| t.chars().take(PREVIEW_CHARS).collect::<String>())
        .or_else(|| new.attachments.map(|_| "[attachment]".to_owned()));
    let unread = i64::from(new.direction == Direction::Inbound);
    let target = conversations::table.find(&new.conversation.id);
    // The row lock this takes (and the account's write lock around it) orders concurrent
    // writers: each message gets the next number, in commit order.
    let position: i64 = diesel::update(target)
        .set((
            conversations::last_position.eq(conversations::last_position + 1),
            conversations::last_message_preview.eq(preview),
            conversations::unread_count.eq(conversations::unread_count + unread),
        ))
        .returning(conversations::last_position)
        .get_result(conn)?;
    let id = random_id("msg");
    diesel::insert_into(messages::table)
        .values((
            messages::id.eq(&id),
            messages::conversation_id.eq(&new.conversation.id),
            messages::account_id.eq(&new.conversation.account_id),
            messages::direction.eq(new.direction.as_str()),
            messages::provider_message_id.eq(new.provider_message_id),
            messages::sender_id.eq(new.sender_id),
            messages::text.eq(new.text),
            messages::attachments.eq(new.attachments),
            messages::status.eq(new.status.as_str()),
            messages::client_msg_id.eq(new.client_msg_id),
            messages::created_at.eq(new.created_at),
            messages::position.eq(position),
        ))
        .execute(conn)?;
    if !new.conversation.is_external() {
        diesel::update(
            participants::table
                .filter(participants::conversation_id.eq(&new.conversation.id))
                .filter(participants::user_id.ne(new.sender_id)),
        )
        .set(participants::unread_count.eq(participants::unread_count + 1))
        .execute(conn)?;
    }
    // Providers may deliver out of order: activity time only moves forward.
    diesel::update(target)
        .filter(conversations::last_message_at.lt(new.created_at))
        .set(conversations::last_message_at.eq(new.created_at))
        .execute(conn)?;
    let message = messages::table.find(&id).first(conn)?;
    Ok((message, target.first(conn)?))
}

/// Characters of the last message shown in a conversation list.
const PREVIEW_CHARS: usize = 120;

/// A page position: items strictly older than (time, id), newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub time: i64,
    pub id: String,
}

/// A page position in a conversation's messages: those numbered below `before`, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageCursor {
    pub before: i64,
}

/// The conversations `user` sees — the account's external ones and those they take part in —
/// most recent activity first.
pub fn list(
    conn: &mut DbConnection,
    account: &AccountId,
    user: &UserId,
    limit: i64,
    before: Option<&Cursor>,
) -> Result<Vec<Conversation>, StoreError> {
    let theirs = participants::table
        .filter(participants::user_id.eq(user.as_str()))
        .select(participants::conversation_id);
    let mut query = conversations::table
        .filter(conversations::account_id.eq(account.as_str()))
        .filter(
            conversations::kind
                .eq(EXTERNAL)
                .or(conversations::id.eq_any(theirs)),
        )
        .order((
            conversations::last_message_at.desc(),
            conversations::id.desc(),
        ))
        .limit(limit)
        .into_boxed();
    if let Some(c) = before {
        query = query.filter(
            conversations::last_message_at
                .lt(c.time)
                .or(conversations::last_message_at
                    .eq(c.time)
                    .and(conversations::id.lt(c.id.clone()))),
        );
    }
    Ok(query.load(conn)?)
}

/// The conversation, if it is the account's.
pub fn get(
    conn: &mut DbConnection,
    account: &AccountId,
    id: &str,
) -> Result<Option<Conversation>, StoreError> {
    Ok(conversations::table
        .find(id)
        .filter(conversations::account_id.eq(account.as_str()))
        .first(conn)
        .optional()?)
}

/// The conversation, if `user` may see it: it is their account's, and external or theirs.
pub fn visible(
    conn: &mut DbConnection,
    account: &AccountId,
    user: &UserId,
    id: &str,
) -> Result<Option<Conversation>, StoreError> {
    let Some(conversation) = get(conn, account, id)? else {
        return Ok(None);
    };
    if conversation.is_external() || participant(conn, id, user)?.is_some() {
        Ok(Some(conversation))
    } else {
        Ok(None)
    }
}

/// A user's place in a conversation between users.
#[derive(Debug, Clone, Queryable)]
pub struct Participant {
    pub conversation_id: String,
    pub user_id: String,
    pub unread_count: i64,
    /// The last message this user has read (its position orders it).
    pub last_read_message_id: Option<String>,
    pub joined_at: i64,
}

pub fn participant(
    conn: &mut DbConnection,
    conversation_id: &str,
    user: &UserId,
) -> Result<Option<Participant>, StoreError> {
    Ok(participants::table
        .find((conversation_id, user.as_str()))
        .first(conn)
        .optional()?)
}

/// The user ids taking part, sorted.
pub fn participants_of(
    conn: &mut DbConnection,
    conversation_id: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(participants::table
        .filter(participants::conversation_id.eq(conversation_id))
        .select(participants::user_id)
        .order(participants::user_id.asc())
        .load(conn)?)
}

/// Every participant's unread count in a conversation.
pub fn unread_counts_in(
    conn: &mut DbConnection,
    conversation_id: &str,
) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(participants::table
        .filter(participants::conversation_id.eq(conversation_id))
        .select((participants::user_id, participants::unread_count))
        .load(conn)?)
}

/// The direct conversation of two users of an account, created on first use; `true` if new. Run
/// inside the account's write transaction, which makes find-or-create atomic.
pub fn direct(
    conn: &mut DbConnection,
    account: &AccountId,
    a: &UserId,
    b: &UserId,
) -> Result<(Conversation, bool), StoreError> {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    // Ids never contain control characters, so the separator cannot be forged.
    let key = format!("{first}\u{1f}{second}");
    let existing = conversations::table
        .filter(conversations::account_id.eq(account.as_str()))
        .filter(conversations::direct_key.eq(&key))
        .first(conn)
        .optional()?;
    if let Some(conversation) = existing {
        return Ok((conversation, false));
    }
    let members = [first.clone(), second.clone()];
    Ok((
        create_between(conn, account, DIRECT, Some(&key), None, &members)?,
        true,
    ))
}

/// A new group conversation of `members` (the creator included).
pub fn group(
    conn: &mut DbConnection,
    account: &AccountId,
    title: Option<&str>,
    members: &[UserId],
) -> Result<Conversation, StoreError> {
    create_between(conn, account, GROUP, None, title, members)
}

fn create_between(
    conn: &mut DbConnection,
    account: &AccountId,
    kind: &str,
    direct_key: Option<&str>,
    title: Option<&str>,
    members: &[UserId],
) -> Result<Conversation, StoreError> {
    let id = random_id("conv");
    let now = now_ms();
    diesel::insert_into(conversations::table)
        .values((
            conversations::id.eq(&id),
            conversations::account_id.eq(account.as_str()),
            conversations::kind.eq(kind),
            conversations::direct_key.eq(direct_key),
            conversations::title.eq(title),
            conversations::last_message_at.eq(now),
            conversations::unread_count.eq(0_i64),
            conversations::created_at.eq(now),
        ))
        .execute(conn)?;
    for member in members {
        diesel::insert_into(participants::table)
            .values((
                participants::conversation_id.eq(&id),
                participants::user_id.eq(member.as_str()),
                participants::unread_count.eq(0_i64),
                participants::joined_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(conversations::table.find(&id).first(conn)?)
}

/// A conversation's messages, newest (highest position) first.
pub fn messages(
    conn: &mut DbConnection,
    conversation_id: &str,
    limit: i64,
    cursor: Option<MessageCursor>,
) -> Result<Vec<Message>, StoreError> {
    let mut query = messages::table
        .filter(messages::conversation_id.eq(conversation_id))
        .order(messages::position.desc())
        .limit(limit)
        .into_boxed();
    if let Some(cursor) = cursor {
        query = query.filter(messages::position.lt(cursor.before));
    }
    Ok(query.load(conn)?)
}

pub fn mark_read(
    conn: &mut DbConnection,
    conversation_id: &str,
) -> Result<Conversation, StoreError> {
    let target = conversations::table.find(conversation_id);
    diesel::update(target)
        .set(conversations::unread_count.eq(0_i64))
        .execute(conn)?;
    Ok(target.first(conn)?)
}

/// A participant has read up to `up_to` (the latest message when `None`); returns their unread
/// count: the messages of others after it.
pub fn mark_read_by(
    conn: &mut DbConnection,
    conversation_id: &str,
    user: &UserId,
    up_to: Option<&Message>,
) -> Result<i64, StoreError> {
    let unread = match up_to {
        None => 0,
        Some(m) => messages::table
            .filter(messages::conversation_id.eq(conversation_id))
            .filter(messages::sender_id.ne(user.as_str()))
            .filter(messages::position.gt(m.position))
            .count()
            .get_result(conn)?,
    };
    let last_read = match up_to {
        Some(m) => Some(m.id.clone()),
        None => latest_message(conn, conversation_id)?.map(|m| m.id),
    };
    diesel::update(participants::table.find((conversation_id, user.as_str())))
        .set((
            participants::unread_count.eq(unread),
            participants::last_read_message_id.eq(last_read),
        ))
        .execute(conn)?;
    Ok(unread)
}

fn latest_message(
    conn: &mut DbConnection,
    conversation_id: &str,
) -> Result<Option<Message>, StoreError> {
    Ok(messages::table
        .filter(messages::conversation_id.eq(conversation_id))
        .order(messages::position.desc())
        .first(conn)
        .optional()?)
}

/// The message a sender already stored under this idempotency key.
pub fn by_client_msg_id(
    conn: &mut DbConnection,
    conversation_id: &str,
    sender: &str,
    client_msg_id: &str,
) -> Result<Option<Message>, StoreError> {
    Ok(messages::table
        .filter(messages::conversation_id.eq(conversation_id))
        .filter(messages::sender_id.eq(sender))
        .filter(messages::client_msg_id.eq(client_msg_id))
        .first(conn)
        .optional()?)
}

/// Remembers the sequence number of the sender's ack, for an idempotent retry.
pub fn set_ack_seq(conn: &mut DbConnection, message_id: &str, seq: u64) -> Result<(), StoreError> {
    diesel::update(messages::table.find(message_id))
        .set(messages::ack_seq.eq(seq as i64))
        .execute(conn)?;
    Ok(())
}

/// The account's message with this id.
pub fn message(
    conn: &mut DbConnection,
    account_id: &str,
    id: &str,
) -> Result<Option<Message>, StoreError> {
    Ok(messages::table
        .find(id)
        .filter(messages::account_id.eq(account_id))
        .first(conn)
        .optional()?)
}

pub fn set_message_status(
    conn: &mut DbConnection,
    id: &str,
    status: MessageStatus,
    provider_message_id: Option<&str>,
) -> Result<Message, StoreError> {
    let target = messages::table.find(id);
    diesel::update(target)
        .set(messages::status.eq(status.as_str()))
        .execute(conn)?;
    if let Some(pid) = provider_message_id {
        diesel::update(target)
            .set(messages::provider_message_id.eq(pid))
            .execute(conn)?;
    }
    Ok(target.first(conn)?)
}

/// How far a contact got with the account's messages, as a provider reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    Delivered,
    Read,
}

impl Receipt {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Read => "read",
        }
    }
}

/// Marks the conversation's outbound messages up to `watermark` (ms) as `status` (delivered or
/// read), never moving one backwards along pending → forwarded → sent → delivered → read;
/// returns how many changed.
pub fn mark_outbound_up_to(
    conn: &mut DbConnection,
    conversation_id: &str,
    watermark: i64,
    status: Receipt,
) -> Result<usize, StoreError> {
    use MessageStatus::{Delivered, Forwarded, Pending, Sent};
    let (status, earlier): (MessageStatus, &[MessageStatus]) = match status {
        Receipt::Read => (MessageStatus::Read, &[Pending, Forwarded, Sent, Delivered]),
        Receipt::Delivered => (Delivered, &[Pending, Forwarded, Sent]),
    };
    Ok(diesel::update(
        messages::table
            .filter(messages::conversation_id.eq(conversation_id))
            .filter(messages::direction.eq(Direction::Outbound.as_str()))
            .filter(messages::created_at.le(watermark))
            .filter(messages::status.eq_any(earlier.iter().map(|s| s.as_str()))),
    )
    .set(messages::status.eq(status.as_str()))
    .execute(conn)?)
}
