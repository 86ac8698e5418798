//! Conversations with external contacts, their messages, and the receipts that make webhook
//! ingestion idempotent. Every query that a user can reach takes the caller's account, so another
//! account's conversation is simply not found.

use diesel::prelude::*;
use serde::Serialize;
use serde_json::value::RawValue;

use super::integrations::Integration;
use super::schema::{conversations, messages, webhook_receipts};
use super::{now_ms, DbConnection, StoreError};
use crate::ids::{random_id, AccountId};

#[derive(Debug, Clone, Queryable, Serialize)]
pub struct Conversation {
    pub id: String,
    pub account_id: String,
    pub integration_id: String,
    pub provider: String,
    pub contact_id: String,
    pub last_message_at: i64,
    pub last_message_preview: Option<String>,
    pub unread_count: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, Queryable)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub account_id: String,
    pub direction: String,
    pub provider_message_id: Option<String>,
    pub sender_id: String,
    pub text: Option<String>,
    pub attachments: Option<String>,
    pub status: String,
    pub created_at: i64,
}

/// How a message is shown to clients: attachments as JSON, not as the text they are stored as.
#[derive(Serialize)]
pub struct MessageView<'a> {
    pub id: &'a str,
    pub conversation_id: &'a str,
    pub direction: &'a str,
    pub provider_message_id: Option<&'a str>,
    pub sender_id: &'a str,
    pub text: Option<&'a str>,
    pub attachments: Option<&'a RawValue>,
    pub status: &'a str,
    pub created_at: i64,
}

impl Message {
    pub fn to_json(&self) -> String {
        let attachments = self
            .attachments
            .as_deref()
            .and_then(|a| serde_json::from_str::<&RawValue>(a).ok());
        let view = MessageView {
            id: &self.id,
            conversation_id: &self.conversation_id,
            direction: &self.direction,
            provider_message_id: self.provider_message_id.as_deref(),
            sender_id: &self.sender_id,
            text: self.text.as_deref(),
            attachments,
            status: &self.status,
            created_at: self.created_at,
        };
        serde_json::to_string(&view).expect("messages serialize")
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
            conversations::account_id.eq(&integration.account_id),
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
    pub direction: &'a str,
    pub provider_message_id: Option<&'a str>,
    pub sender_id: &'a str,
    pub text: Option<&'a str>,
    /// JSON text.
    pub attachments: Option<&'a str>,
    pub status: &'a str,
    pub created_at: i64,
}

/// Stores the message and moves the conversation's activity forward (an inbound message also
/// counts as unread). Returns both as they now are.
pub fn add_message(
    conn: &mut DbConnection,
    new: &NewMessage<'_>,
) -> Result<(Message, Conversation), StoreError> {
    let id = random_id("msg");
    diesel::insert_into(messages::table)
        .values((
            messages::id.eq(&id),
            messages::conversation_id.eq(&new.conversation.id),
            messages::account_id.eq(&new.conversation.account_id),
            messages::direction.eq(new.direction),
            messages::provider_message_id.eq(new.provider_message_id),
            messages::sender_id.eq(new.sender_id),
            messages::text.eq(new.text),
            messages::attachments.eq(new.attachments),
            messages::status.eq(new.status),
            messages::created_at.eq(new.created_at),
        ))
        .execute(conn)?;
    let preview = new
        .text
        .map(|t| t.chars().take(PREVIEW_CHARS).collect::<String>())
        .or_else(|| new.attachments.map(|_| "[attachment]".to_owned()));
    let unread = i64::from(new.direction == "inbound");
    let target = conversations::table.find(&new.conversation.id);
    diesel::update(target)
        .set((
            conversations::last_message_preview.eq(preview),
            conversations::unread_count.eq(conversations::unread_count + unread),
        ))
        .execute(conn)?;
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

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}.{}", self.time, self.id)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (time, id) = s.split_once('.')?;
        Some(Self {
            time: time.parse().ok()?,
            id: id.to_owned(),
        })
    }
}

/// The account's conversations, most recent activity first.
pub fn list(
    conn: &mut DbConnection,
    account: &AccountId,
    limit: i64,
    before: Option<&Cursor>,
) -> Result<Vec<Conversation>, StoreError> {
    let mut query = conversations::table
        .filter(conversations::account_id.eq(account.as_str()))
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

/// A conversation's messages, newest first.
pub fn messages(
    conn: &mut DbConnection,
    conversation_id: &str,
    limit: i64,
    before: Option<&Cursor>,
) -> Result<Vec<Message>, StoreError> {
    let mut query = messages::table
        .filter(messages::conversation_id.eq(conversation_id))
        .order((messages::created_at.desc(), messages::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(c) = before {
        query = query.filter(
            messages::created_at.lt(c.time).or(messages::created_at
                .eq(c.time)
                .and(messages::id.lt(c.id.clone()))),
        );
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
    status: &str,
    provider_message_id: Option<&str>,
) -> Result<Message, StoreError> {
    let target = messages::table.find(id);
    diesel::update(target)
        .set(messages::status.eq(status))
        .execute(conn)?;
    if let Some(pid) = provider_message_id {
        diesel::update(target)
            .set(messages::provider_message_id.eq(pid))
            .execute(conn)?;
    }
    Ok(target.first(conn)?)
}

/// Marks the conversation's outbound messages up to `watermark` (ms) as `status` (delivered or
/// read), never moving one backwards along pending → forwarded → sent → delivered → read;
/// returns how many changed.
pub fn mark_outbound_up_to(
    conn: &mut DbConnection,
    conversation_id: &str,
    watermark: i64,
    status: &str,
) -> Result<usize, StoreError> {
    let earlier: &[&str] = match status {
        "read" => &["pending", "forwarded", "sent", "delivered"],
        _ => &["pending", "forwarded", "sent"],
    };
    Ok(diesel::update(
        messages::table
            .filter(messages::conversation_id.eq(conversation_id))
            .filter(messages::direction.eq("outbound"))
            .filter(messages::created_at.le(watermark))
            .filter(messages::status.eq_any(earlier)),
    )
    .set(messages::status.eq(status))
    .execute(conn)?)
}
