//! One outbox row as read from the table, and what makes it a publish — or why it cannot be one.
//! The same checks as `POST /api/v1/publish`, so that both entry points accept the same events.

use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;
use serde_json::value::RawValue;

use crate::channel::{Channel, InvalidChannel};
use crate::config::TableName;
use crate::ids::{AccountId, IdError, UserId};
use crate::protocol::check_event_name;
use crate::publisher::Request;

/// Longest idempotency key, as for the publish API's header.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A row, as the consumer selects it (`data` as JSON text).
#[derive(Debug, QueryableByName)]
pub struct Row {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub account_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub user_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub channel: Option<String>,
    #[diesel(sql_type = Text)]
    pub event: String,
    /// The data as JSON text; `None` when it is larger than a publish may carry (the query
    /// leaves it unread).
    #[diesel(sql_type = Nullable<Text>)]
    pub data: Option<String>,
    /// The data's size in bytes, as JSON text.
    #[diesel(sql_type = BigInt)]
    pub size: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub idempotency_key: Option<String>,
}

/// Why a row cannot be published: stored beside it in `<table>_refused.error`.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("account_id: {0}")]
    Account(IdError),
    #[error("user_id: {0}")]
    User(IdError),
    #[error("channel: {0}")]
    Channel(InvalidChannel),
    #[error("event: {0}")]
    Event(&'static str),
    #[error("data: {size} bytes, more than the {max} a publish may carry")]
    TooLarge { size: usize, max: usize },
    #[error("data: not JSON ({0})")]
    Data(String),
    #[error("idempotency_key: must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters")]
    IdempotencyKey,
}

impl Row {
    /// The publish this row asks for. Without a key of its own, a row's key is its id in its
    /// table, so that publishing it again (after a node died before deleting it) stores nothing.
    pub fn request(&self, table: &TableName, max_data: usize) -> Result<Request, Refusal> {
        let account = AccountId::new(&self.account_id).map_err(Refusal::Account)?;
        let user = self
            .user_id
            .as_deref()
            .map(UserId::new)
            .transpose()
            .map_err(Refusal::User)?;
        let channel = self
            .channel
            .as_deref()
            .map(Channel::new)
            .transpose()
            .map_err(Refusal::Channel)?;
        check_event_name(&self.event).map_err(Refusal::Event)?;
        let data = match &self.data {
            Some(data) if data.len() <= max_data => data,
            _ => {
                return Err(Refusal::TooLarge {
                    size: usize::try_from(self.size).unwrap_or(usize::MAX),
                    max: max_data,
                })
            }
        };
        let data = RawValue::from_string(data.clone()).map_err(|e| Refusal::Data(e.to_string()))?;
        let idempotency_key = match &self.idempotency_key {
            Some(key) if valid_key(key) => key.clone(),
            Some(_) => return Err(Refusal::IdempotencyKey),
            None => format!("outbox:{table}:{}", self.id),
        };
        Ok(Request {
            account,
            user,
            channel,
            event: self.event.clone(),
            data,
            idempotency_key: Some(idempotency_key),
        })
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY && key.bytes().all(|b| b.is_ascii_graphic())
}
