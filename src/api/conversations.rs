//! The conversations API for users of an account (JWT): list conversations, read messages, reply,
//! mark read. Every lookup is scoped to the caller's account, so another account's conversation
//! answers 404 — never 403, never its data.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::extract::User;
use super::AppState;
use crate::error::ApiError;
use crate::ids::{random_id, AccountId};
use crate::inbox;
use crate::outbound::Dispatch;
use crate::store::conversations::{self, Conversation, Cursor, Message, NewMessage};
use crate::store::{self, deliveries, integrations, now_ms};
use crate::webhooks::facebook::ECHO_METADATA_PREFIX;

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;
/// Longest reply text, in characters.
const MAX_TEXT: usize = 10_000;

#[derive(Deserialize)]
pub struct PageQuery {
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl PageQuery {
    fn parse(self) -> Result<(i64, Option<Cursor>), ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::InvalidField {
                field: "limit",
                reason: format!("must be 1 to {MAX_PAGE}"),
            });
        }
        let cursor = self
            .cursor
            .map(|c| {
                Cursor::decode(&c).ok_or(ApiError::InvalidField {
                    field: "cursor",
                    reason: "not a cursor this API gave out".into(),
                })
            })
            .transpose()?;
        Ok((limit, cursor))
    }
}

/// The caller's conversation, or 404.
fn owned(
    conn: &mut store::DbConnection,
    account: &AccountId,
    id: &str,
) -> Result<Conversation, ApiError> {
    conversations::get(conn, account, id)?.ok_or(ApiError::NoSuch("conversation"))
}

/// `GET /api/v1/conversations` — newest activity first.
pub async fn list(
    User(user): User,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, cursor) = query.into_inner().parse()?;
    let page = state
        .store
        .run(move |conn| conversations::list(conn, &user.account, limit, cursor.as_ref()))
        .await?;
    let next = (page.len() as i64 == limit)
        .then(|| page.last())
        .flatten()
        .map(|c| {
            Cursor {
                time: c.last_message_at,
                id: c.id.clone(),
            }
            .encode()
        });
    Ok(HttpResponse::Ok().json(json!({ "conversations": page, "next_cursor": next })))
}

/// `GET /api/v1/conversations/{id}`
pub async fn show(
    User(user): User,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let conversation = state
        .store
        .run(move |conn| owned(conn, &user.account, &id))
        .await?;
    Ok(HttpResponse::Ok().json(conversation))
}

fn messages_json(messages: &[Message]) -> Box<RawValue> {
    let items: Vec<String> = messages.iter().map(Message::to_json).collect();
    RawValue::from_string(format!("[{}]", items.join(","))).expect("messages are JSON")
}

/// `GET /api/v1/conversations/{id}/messages` — newest first.
pub async fn messages(
    User(user): User,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, cursor) = query.into_inner().parse()?;
    let id = path.into_inner();
    let page = state
        .store
        .run(move |conn| {
            let conversation = owned(conn, &user.account, &id)?;
            Ok::<_, ApiError>(conversations::messages(
                conn,
                &conversation.id,
                limit,
                cursor.as_ref(),
            )?)
        })
        .await?;
    let next = (page.len() as i64 == limit)
        .then(|| page.last())
        .flatten()
        .map(|m| {
            Cursor {
                time: m.created_at,
                id: m.id.clone(),
            }
            .encode()
        });
    Ok(HttpResponse::Ok().json(json!({ "messages": messages_json(&page), "next_cursor": next })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyRequest {
    text: Option<String>,
    attachments: Option<Box<RawValue>>,
}

/// `POST /api/v1/conversations/{id}/messages` — a reply from the calling user: stored, shown to
/// the account's sessions, and handed to the application by outbound webhook.
pub async fn reply(
    User(user): User,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<ReplyRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    let text = request.text.filter(|t| !t.trim().is_empty());
    if text.is_none() && request.attachments.is_none() {
        return Err(ApiError::InvalidField {
            field: "text",
            reason: "a reply needs a non-empty `text` or `attachments`".into(),
        });
    }
    if text.as_ref().is_some_and(|t| t.chars().count() > MAX_TEXT) {
        return Err(ApiError::InvalidField {
            field: "text",
            reason: format!("must be at most {MAX_TEXT} characters"),
        });
    }
    let id = path.into_inner();
    let broker = state.broker.clone();
    let (message, delivery) = state
        .store
        .run(move |conn| {
            let conversation = owned(conn, &user.account, &id)?;
            let integration = integrations::get(conn, &conversation.integration_id)?.ok_or(
                ApiError::Internal(format!("conversation {id} lost its integration")),
            )?;
            let forward = integration.outbound_url.is_some();
            let attachments = request.attachments.as_ref().map(|a| a.get());
            let (message, delivery, events) = store::write(conn, &user.account, |conn| {
                let (message, events) = inbox::add_message(
                    conn,
                    &user.account,
                    &NewMessage {
                        conversation: &conversation,
                        direction: "outbound",
                        provider_message_id: None,
                        sender_id: user.user.as_str(),
                        text: text.as_deref(),
                        attachments,
                        status: if forward { "pending" } else { "not-forwarded" },
                        created_at: now_ms(),
                    },
                )?;
                let delivery = if forward {
                    let delivery_id = random_id("whk");
                    let payload = outbound_payload(
                        &message,
                        &conversation,
                        &integration.external_id,
                        user.user.as_str(),
                    );
                    deliveries::create(conn, &delivery_id, &integration.id, &message.id, &payload)?;
                    Some(delivery_id)
                } else {
                    None
                };
                Ok((message, delivery, events))
            })?;
            inbox::hand_off(&broker, &user.account, events);
            Ok::<_, ApiError>((message, delivery))
        })
        .await?;
    if let Some(delivery_id) = delivery {
        state.dispatcher.do_send(Dispatch { delivery_id });
    }
    Ok(HttpResponse::Created()
        .content_type("application/json")
        .body(message.to_json()))
}

/// The outbound webhook's body (Standard Webhooks envelope). `metadata` is for the app to pass to
/// the provider (Facebook's Send API `metadata`), so the provider's echo is matched to this
/// message instead of being shown twice.
fn outbound_payload(
    message: &Message,
    conversation: &Conversation,
    external_id: &str,
    sent_by: &str,
) -> String {
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
            "sent_by": sent_by,
            "metadata": format!("{ECHO_METADATA_PREFIX}{}", message.id),
        }
    })
    .to_string()
}

/// `POST /api/v1/conversations/{id}/read`
pub async fn mark_read(
    User(user): User,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let broker = state.broker.clone();
    let conversation = state
        .store
        .run(move |conn| {
            owned(conn, &user.account, &id)?;
            let (conversation, events) = store::write(conn, &user.account, |conn| {
                let conversation = conversations::mark_read(conn, &id)?;
                let event = inbox::conversation_updated(conn, &user.account, &conversation)?;
                Ok((conversation, vec![event]))
            })?;
            inbox::hand_off(&broker, &user.account, events);
            Ok::<_, ApiError>(conversation)
        })
        .await?;
    Ok(HttpResponse::Ok().json(conversation))
}
