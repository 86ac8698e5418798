//! `POST /api/v1/publish`: the application's backend hands Switchboard an event for an account
//! (optionally for one user of it, or for the sessions following a channel). The event is stored first — by the group-committing
//! [`crate::publisher`] — then delivered.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::extract::{Json, ServerKey};
use super::AppState;
use crate::channel::Channel;
use crate::error::{field, ApiError};
use crate::ids::{AccountId, UserId};
use crate::protocol::check_event_name;
use crate::publisher::Request;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    account_id: String,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// The header that makes a publish idempotent.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on the answer to a retry: the first publish's answer, nothing new stored.
const REPLAYED: &str = "idempotent-replayed";
const MAX_IDEMPOTENCY_KEY: usize = 255;

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().ok().filter(|k| {
        !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && k.bytes().all(|b| b.is_ascii_graphic())
    });
    match key {
        Some(key) => Ok(Some(key.to_owned())),
        None => Err(ApiError::InvalidField {
            field: "Idempotency-Key",
            reason: format!("must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        }),
    }
}

pub async fn publish(
    _: ServerKey,
    req: HttpRequest,
    state: web::Data<AppState>,
    body: Json<PublishRequest>,
) -> Result<HttpResponse, ApiError> {
    let idempotency_key = idempotency_key(&req)?;
    let request = body.into_inner();
    let account = field("account_id", AccountId::new(&request.account_id))?;
    let user = request
        .user_id
        .as_deref()
        .map(|u| field("user_id", UserId::new(u)))
        .transpose()?;
    let channel = request
        .channel
        .as_deref()
        .map(|c| field("channel", Channel::new(c)))
        .transpose()?;
    field("event", check_event_name(&request.event))?;
    let data = match request.data {
        Some(data) => data,
        None => RawValue::from_string("null".into()).expect("null is JSON"),
    };

    let response_account = account.clone();
    let published = state
        .publisher
        .publish(Request {
            account,
            user,
            channel,
            event: request.event,
            data,
            idempotency_key,
        })
        .await?;
    let seq = published.seq;
    log::debug!(
        "publish account={response_account} seq={seq} replayed={}",
        published.replayed
    );
    let mut response = HttpResponse::Ok();
    if published.replayed {
        response.insert_header((REPLAYED, "true"));
    }
    Ok(response.json(json!({ "account_id": response_account.as_str(), "seq": seq })))
}
