//! Webhook ingestion: provider payloads become conversations, messages and events of the account
//! that owns the integration — and of no other.
//!
//! Each provider module ([`facebook`], [`zalo`], [`generic`]) finds the integration (the only way
//! a webhook finds its account), verifies the signature over the raw body with that integration's
//! secret alone — one MAC per request — and parses the payload into typed [`Inbound`] items;
//! for a large body that work runs off the HTTP worker ([`cpu_bound`]). [`ingest`] then stores
//! them in one short transaction — skipping any provider message id already ingested, so retries
//! store and emit nothing — and the events are handed to the broker without waiting for
//! delivery.
//!
//! An adapter: uses the services' commit path, the store and the base layer, never the HTTP
//! layer nor any HTTP library's types — the HTTP layer hands it each provider's [`Request`] and
//! answers with what it returns, the server hands it [`Webhooks`], and it refuses with its own
//! [`WebhookError`].

pub mod error;
pub mod facebook;
pub mod generic;
pub mod zalo;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

use crate::auth::signature::SignatureError;
use crate::commit::{Changes, Committer};
use crate::config::Secret;
use crate::event::RoomEvent;
use crate::ids::AccountId;
use crate::inbox;
use crate::store::conversations::{self, Direction, MessageStatus, NewMessage, Receipt};
use crate::store::integrations::{Integration, Provider};
use crate::store::{now_ms, DbConnection, Store, StoreError};
pub use error::WebhookError;

/// What the webhook handlers share, handed to them by the server that routes to them.
pub struct Webhooks {
    pub stats: Stats,
    pub facebook_verify_token: Option<Secret>,
    pub max_body_bytes: usize,
    pub tolerance: Duration,
    pub store: Store,
    /// Where the ingested items are written and their events handed on.
    pub commits: Committer,
}

/// One thing a webhook reported, parsed and typed.
#[derive(Debug, Clone)]
pub enum Inbound {
    Message {
        /// The provider's message id: ingested at most once.
        provider_message_id: String,
        contact_id: String,
        sender_id: String,
        /// Inbound from the contact, or outbound from the page or OA itself (an echo of its
        /// own reply).
        direction: Direction,
        text: Option<String>,
        /// JSON array.
        attachments: Option<Value>,
        /// Milliseconds since the epoch.
        sent_at: i64,
        /// For an echo: the Switchboard message it echoes, when the app passed our id along.
        echo_of: Option<String>,
    },
    /// The contact received or read the account's messages up to `watermark` (ms).
    Status {
        receipt: String,
        contact_id: String,
        status: Receipt,
        watermark: i64,
    },
    /// The contact followed or unfollowed the OA.
    Follow {
        receipt: String,
        contact_id: String,
        following: bool,
        at: i64,
    },
}

impl Inbound {
    fn receipt(&self) -> &str {
        match self {
            Self::Message {
                provider_message_id,
                ..
            } => provider_message_id,
            Self::Status { receipt, .. } | Self::Follow { receipt, .. } => receipt,
        }
    }
}

/// What a webhook request stored; the answer's body.
#[derive(Debug, Default, Serialize)]
pub struct Ingested {
    pub stored: usize,
    pub duplicates: usize,
    #[serde(skip)]
    events: Vec<RoomEvent>,
}

impl Changes for Ingested {
    fn take_events(&mut self) -> Vec<RoomEvent> {
        std::mem::take(&mut self.events)
    }
}

/// Stores the items for the integration's account (inside the account's write transaction) and
/// returns the events.
fn ingest_in(
    conn: &mut DbConnection,
    integration: &Integration,
    account: &AccountId,
    items: &[Inbound],
) -> Result<Ingested, StoreError> {
    let mut out = Ingested::default();
    for item in items {
        if !conversations::record_receipt(conn, &integration.id, item.receipt())? {
            out.duplicates += 1;
            continue;
        }
        out.stored += 1;
        match item {
            Inbound::Message { .. } => {
                message_in(conn, integration, account, item, &mut out.events)?
            }
            Inbound::Status {
                contact_id,
                status,
                watermark,
                ..
            } => out.events.push(status_changed(
                conn,
                integration,
                account,
                contact_id,
                *status,
                *watermark,
            )?),
            Inbound::Follow {
                contact_id,
                following,
                at,
                ..
            } => out.events.push(follow_changed(
                conn,
                integration,
                account,
                contact_id,
                *following,
                *at,
            )?),
        }
    }
    Ok(out)
}

/// A message from the contact, or an echo of one the account sent: stored with its events, or,
/// for an echo of a reply sent through Switchboard, that reply marked sent.
fn message_in(
    conn: &mut DbConnection,
    integration: &Integration,
    account: &AccountId,
    item: &Inbound,
    events: &mut Vec<RoomEvent>,
) -> Result<(), StoreError> {
    let Inbound::Message {
        provider_message_id,
        contact_id,
        sender_id,
        direction,
        text,
        attachments,
        sent_at,
        echo_of,
    } = item
    else {
        return Ok(());
    };
    let conversation = conversations::for_contact(conn, integration, contact_id, *sent_at)?;
    if let Some(id) = echo_of {
        let echo = echoed(conn, account, &conversation, id, provider_message_id)?;
        if let Some(event) = echo {
            events.push(event);
            return Ok(());
        }
    }
    let attachments = attachments.as_ref().map(Value::to_string);
    let status = match direction {
        Direction::Outbound => MessageStatus::Sent,
        _ => MessageStatus::Received,
    };
    let added = inbox::add_message(
        conn,
        account,
        &NewMessage {
            conversation: &conversation,
            direction: *direction,
            provider_message_id: Some(provider_message_id),
            sender_id,
            text: text.as_deref(),
            attachments: attachments.as_deref(),
            status,
            client_msg_id: None,
            created_at: *sent_at,
        },
    )?;
    events.extend(added.events);
    Ok(())
}

/// The provider echoes a reply sent through Switchboard (`ours`, in this conversation): it is
/// already shown, so it is only marked sent, and that announced. `None` when `ours` is no
/// message of this conversation.
fn echoed(
    conn: &mut DbConnection,
    account: &AccountId,
    conversation: &conversations::Conversation,
    ours: &str,
    provider_message_id: &str,
) -> Result<Option<RoomEvent>, StoreError> {
    let Some(ours) = conversations::message(conn, account.as_str(), ours)?
        .filter(|m| m.conversation_id == conversation.id)
    else {
        return Ok(None);
    };
    let message = conversations::set_message_status(
        conn,
        &ours.id,
        MessageStatus::Sent,
        Some(provider_message_id),
    )?;
    Ok(Some(inbox::one_message_status(conn, account, &message)?))
}

/// The provider says how far the contact got with our messages (delivered, read): marks the
/// conversation's outbound messages up to `watermark`, and announces it.
fn status_changed(
    conn: &mut DbConnection,
    integration: &Integration,
    account: &AccountId,
    contact_id: &str,
    status: Receipt,
    watermark: i64,
) -> Result<RoomEvent, StoreError> {
    let conversation = conversations::for_contact(conn, integration, contact_id, watermark)?;
    conversations::mark_outbound_up_to(conn, &conversation.id, watermark, status)?;
    let data = json!({
        "conversation_id": conversation.id,
        "status": status.as_str(),
        "watermark": watermark,
    });
    inbox::message_status(conn, account, data)
}

/// The contact followed or unfollowed the account's page: announced on their conversation.
fn follow_changed(
    conn: &mut DbConnection,
    integration: &Integration,
    account: &AccountId,
    contact_id: &str,
    following: bool,
    at: i64,
) -> Result<RoomEvent, StoreError> {
    let conversation = conversations::for_contact(conn, integration, contact_id, at)?;
    let data = json!({
        "conversation_id": conversation.id,
        "contact_id": contact_id,
        "following": following,
    });
    let data = serde_json::value::to_raw_value(&data).expect("JSON");
    inbox::emit(conn, account, None, "contact-follow", &data)
}

/// Ingests the items and hands their events to the broker; fan-out never holds up the answer.
pub async fn ingest(
    commits: &Committer,
    integration: Integration,
    items: Vec<Inbound>,
) -> Result<Ingested, WebhookError> {
    let account = integration.account_id.clone();
    let ingested = commits
        .commit(account.clone(), move |conn| {
            ingest_in(conn, &integration, &account, &items)
        })
        .await?;
    Ok(ingested)
}

/// A provider's request, as the HTTP layer hands it over: its headers, and its body, read only
/// once the headers have passed (a request without a signature is refused unread).
pub trait Request {
    /// A header as text, if present and readable.
    fn header(&self, name: &str) -> Option<&str>;

    /// The raw body (signatures are over the exact bytes): [`WebhookError::PayloadTooLarge`]
    /// past `limit`, found before it is all read.
    fn body(self, limit: usize) -> impl Future<Output = Result<Bytes, WebhookError>>;
}

/// A header as an owned string.
fn header(req: &impl Request, name: &str) -> Option<String> {
    req.header(name).map(str::to_owned)
}

/// Bodies up to this size are verified and parsed on the HTTP worker, larger ones on the blocking
/// pool. A 1 MiB body costs ~1.5 ms of hashing and parsing (release build, 2026-12-05), for
/// which the worker's other requests — `/healthz` included — would wait; 64 KiB costs under
/// 0.1 ms, about what the hop to another thread and back adds.
const ON_WORKER_BYTES: usize = 64 * 1024;

/// Runs a webhook's work on its body — checking the signature, parsing — on the blocking pool when
/// the body is large, inline otherwise. A refused signature is counted and logged.
async fn cpu_bound<T: Send + 'static>(
    stats: &Stats,
    provider: Provider,
    body: &Bytes,
    work: impl FnOnce(Bytes) -> Result<T, WebhookError> + Send + 'static,
) -> Result<T, WebhookError> {
    let result = if body.len() <= ON_WORKER_BYTES {
        work(body.clone())
    } else {
        let body = body.clone();
        tokio::task::spawn_blocking(move || work(body))
            .await
            .map_err(|_| {
                WebhookError::Internal(format!(
                    "{provider} webhook: verifying the body did not finish"
                ))
            })?
    };
    result.map_err(|e| match e {
        WebhookError::Signature(reason) => stats.refused(provider, reason),
        other => other,
    })
}

/// Counts of refused webhook signatures, per provider (`GET /api/v1/webhooks/stats`).
#[derive(Debug, Default)]
pub struct Stats {
    facebook: AtomicU64,
    zalo: AtomicU64,
    generic: AtomicU64,
}

impl Stats {
    /// Counts and logs a refused signature — never the signature or the secret themselves.
    pub fn refused(&self, provider: Provider, error: SignatureError) -> WebhookError {
        let counter = match provider {
            Provider::Facebook => &self.facebook,
            Provider::Zalo => &self.zalo,
            // A presence integration receives nothing, so has no signature to refuse.
            Provider::Generic | Provider::Presence => &self.generic,
        };
        crate::metrics::webhook_signature_failure(provider.as_str());
        let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
        log::warn!(
            "webhook refused provider={provider} reason={} refused_total={total}",
            error.code()
        );
        WebhookError::Signature(error)
    }

    pub fn to_json(&self) -> Value {
        let count = |c: &AtomicU64| json!({ "signature_failures": c.load(Ordering::Relaxed) });
        json!({
            "facebook": count(&self.facebook),
            "zalo": count(&self.zalo),
            "generic": count(&self.generic),
        })
    }
}

/// A provider timestamp in seconds or milliseconds, as milliseconds; now when absent.
/// One before 1970 is refused: no provider sends one, and scaling it could overflow.
fn millis(value: Option<i64>) -> Result<i64, WebhookError> {
    match value {
        Some(t) if t < 0 => Err(WebhookError::InvalidField {
            field: "timestamp",
            reason: "must be seconds or milliseconds since 1970".into(),
        }),
        Some(t) if t < 100_000_000_000 => Ok(t * 1000),
        Some(t) => Ok(t),
        None => Ok(now_ms()),
    }
}
