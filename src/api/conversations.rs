//! The conversations API for users of an account (JWT): open a direct or group conversation,
//! list conversations, read messages, send, mark read. The WebSocket's `send` and `read` frames
//! do the same through the same [`inbox`] functions, so REST and live views agree.
//!
//! A user sees the account's external conversations and the conversations they take part in;
//! any other id — another account's, or a conversation between other users — answers 404, never
//! 403 and never its data.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use super::extract::{Json, User};
use super::{json_text, list_json, optional_json, AppState};
use crate::error::ApiError;
use crate::ids::UserId;
use crate::inbox::{self, InboxError, Send};
use crate::store::conversations::{self, Cursor, Message, MessageCursor, MessageView};

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;
/// Most users in a group conversation.
const MAX_PARTICIPANTS: usize = 100;

impl From<InboxError> for ApiError {
    fn from(error: InboxError) -> Self {
        match error {
            InboxError::NotParticipant => ApiError::NoSuch("conversation"),
            InboxError::Store(e) => ApiError::Store(e),
            e @ (InboxError::EmptyText | InboxError::TooLong) => ApiError::InvalidField {
                field: "text",
                reason: e.to_string(),
            },
            e @ InboxError::UnknownMessage => ApiError::InvalidField {
                field: "up_to",
                reason: e.to_string(),
            },
        }
    }
}

#[derive(Deserialize)]
pub struct PageQuery {
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl PageQuery {
    pub fn new(limit: Option<i64>, cursor: Option<String>) -> Self {
        Self { limit, cursor }
    }

    pub fn parse<C: PageCursor>(self) -> Result<(i64, Option<C>), ApiError> {
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
                C::decode(&c).map_err(|reason| ApiError::InvalidField {
                    field: "cursor",
                    reason: reason.into(),
                })
            })
            .transpose()?;
        Ok((limit, cursor))
    }
}

/// A page position as the opaque `cursor` a listing gives out and takes back.
pub trait PageCursor: Sized {
    fn encode(&self) -> String;
    /// The position, or why the text is not a cursor of this listing.
    fn decode(text: &str) -> Result<Self, &'static str>;
}

const NOT_A_CURSOR: &str = "not a cursor this API gave out";

/// Lists ordered by time: `<time>.<id>`.
impl PageCursor for Cursor {
    fn encode(&self) -> String {
        format!("{}.{}", self.time, self.id)
    }

    fn decode(text: &str) -> Result<Self, &'static str> {
        let (time, id) = text.split_once('.').ok_or(NOT_A_CURSOR)?;
        Ok(Self {
            time: time.parse().map_err(|_| NOT_A_CURSOR)?,
            id: id.to_owned(),
        })
    }
}

/// A conversation's messages: the position below which the next page starts.
impl PageCursor for MessageCursor {
    fn encode(&self) -> String {
        self.before.to_string()
    }

    fn decode(text: &str) -> Result<Self, &'static str> {
        // Before 2026-12 messages were listed by time, with time cursors; such a cursor would
        // now mean another place, so it is refused rather than followed.
        if text.contains('.') {
            return Err("a cursor from before messages were numbered (2026-12); list again from the first page");
        }
        match text.parse() {
            Ok(before) if before > 0 => Ok(Self { before }),
            _ => Err(NOT_A_CURSOR),
        }
    }
}

/// The next page's cursor, when this page was full.
pub fn next_cursor<T, C: PageCursor>(
    page: &[T],
    limit: i64,
    key: impl Fn(&T) -> C,
) -> Option<String> {
    (page.len() as i64 == limit)
        .then(|| page.last().map(|last| key(last).encode()))
        .flatten()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    /// The other users; the caller is always a participant.
    participants: Vec<String>,
    /// Makes it a group even with one other user.
    title: Option<String>,
}

/// `POST /api/v1/conversations` — the direct conversation with one other user (the existing one
/// if there is one: 200), or a new group (201).
pub async fn open(
    User(user): User,
    state: web::Data<AppState>,
    body: Json<OpenRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    let mut others = Vec::new();
    for id in &request.participants {
        let other = UserId::new(id).map_err(|e| ApiError::InvalidField {
            field: "participants",
            reason: e.to_string(),
        })?;
        if other != user.user && !others.contains(&other) {
            others.push(other);
        }
    }
    if others.is_empty() || others.len() >= MAX_PARTICIPANTS {
        return Err(ApiError::InvalidField {
            field: "participants",
            reason: format!("name 1 to {} other users", MAX_PARTICIPANTS - 1),
        });
    }
    let ((view, created), _) = state
        .commits
        .commit(user.account.clone(), move |conn| {
            let (view, created, events) = inbox::open(
                conn,
                &user.account,
                &user.user,
                &others,
                request.title.as_deref(),
            )?;
            Ok::<_, ApiError>(((view, created), events))
        })
        .await?;
    let response = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(json_text(response, view.get().to_owned()))
}

/// `GET /api/v1/conversations` — newest activity first.
pub async fn list(
    User(user): User,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, cursor) = query.into_inner().parse()?;
    let (views, next) = state
        .store
        .run(move |conn| {
            let page =
                conversations::list(conn, &user.account, &user.user, limit, cursor.as_ref())?;
            let views = page
                .iter()
                .map(|c| {
                    Ok(inbox::view_json(conn, c, Some(&user.user))?
                        .get()
                        .to_owned())
                })
                .collect::<Result<Vec<_>, ApiError>>()?;
            let next = next_cursor(&page, limit, |c| Cursor {
                time: c.last_message_at,
                id: c.id.clone(),
            });
            Ok::<_, ApiError>((views, next))
        })
        .await?;
    let body = list_json("conversations", &views, &[("next_cursor", json!(next))]);
    Ok(json_text(HttpResponse::Ok(), body))
}

/// `GET /api/v1/conversations/{id}`
pub async fn show(
    User(user): User,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let view = state
        .store
        .run(move |conn| {
            let conversation = conversations::visible(conn, &user.account, &user.user, &id)?
                .ok_or(ApiError::NoSuch("conversation"))?;
            Ok::<_, ApiError>(inbox::view_json(conn, &conversation, Some(&user.user))?)
        })
        .await?;
    Ok(json_text(HttpResponse::Ok(), view.get().to_owned()))
}

/// `GET /api/v1/conversations/{id}/messages` — newest first, in the order they were stored.
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
            let conversation = conversations::visible(conn, &user.account, &user.user, &id)?
                .ok_or(ApiError::NoSuch("conversation"))?;
            Ok::<_, ApiError>(conversations::messages(
                conn,
                &conversation.id,
                limit,
                cursor,
            )?)
        })
        .await?;
    let next = next_cursor(&page, limit, |m| MessageCursor { before: m.position });
    let items: Vec<String> = page.iter().map(Message::to_json).collect();
    let body = list_json("messages", &items, &[("next_cursor", json!(next))]);
    Ok(json_text(HttpResponse::Ok(), body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    text: Option<String>,
    attachments: Option<Box<RawValue>>,
    client_msg_id: Option<String>,
}

/// The answer to a send: the message, and the `seq` of its `new-message` for the sender.
#[derive(Serialize)]
struct SendAnswer<'a> {
    #[serde(flatten)]
    message: MessageView<'a>,
    seq: u64,
}

/// The message a send request asks for, as the inbox takes it.
fn message<'a>(conversation_id: &'a str, request: &'a SendRequest) -> Send<'a> {
    Send {
        conversation_id,
        text: request.text.as_deref(),
        attachments: request.attachments.as_deref().map(RawValue::get),
        client_msg_id: request.client_msg_id.as_deref(),
    }
}

/// `POST /api/v1/conversations/{id}/messages` — the message, with the `seq` of its `new-message`
/// (201; 200 with the first result when `client_msg_id` was sent before).
pub async fn send(
    User(user): User,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Json<SendRequest>,
) -> Result<HttpResponse, ApiError> {
    state
        .sends
        .check(&user.account, &user.user)
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    let request = body.into_inner();
    let id = path.into_inner();
    message(&id, &request).validate()?;
    let sent = state
        .commits
        .commit(user.account.clone(), move |conn| {
            inbox::send(conn, &user.account, &user.user, &message(&id, &request))
        })
        .await
        .map_err(ApiError::from)?;
    let answer = SendAnswer {
        message: sent.message.view(),
        seq: sent.seq,
    };
    let mut response = if sent.duplicate {
        HttpResponse::Ok()
    } else {
        HttpResponse::Created()
    };
    Ok(response.json(answer))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// The last message read; the latest when absent.
    up_to: Option<String>,
}

/// `POST /api/v1/conversations/{id}/read`
pub async fn mark_read(
    User(user): User,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let up_to = optional_json::<ReadRequest>(&body)?.up_to;
    let id = path.into_inner();
    let (view, _) = state
        .commits
        .commit(user.account.clone(), move |conn| {
            inbox::mark_read(conn, &user.account, &user.user, &id, up_to.as_deref())
        })
        .await
        .map_err(ApiError::from)?;
    Ok(json_text(HttpResponse::Ok(), view.get().to_owned()))
}
