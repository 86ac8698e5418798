//! Notifications: the application's backend creates them for a user (server API key); the user
//! lists, counts, reads and deletes their own (JWT) — someone else's id is 404. Every change
//! pushes the new unread count to all the user's tabs, so badges agree everywhere.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::conversations::{next_cursor, PageQuery};
use super::extract::{Json, ServerKey, User};
use super::{json_text, list_json, AppState};
use crate::error::{field, ApiError};
use crate::event::RoomEvent;
use crate::ids::{check_id, AccountId, UserId};
use crate::inbox;
use crate::store::conversations::Cursor;
use crate::store::notifications::{self, NewNotification, Notification};
use crate::store::{DbConnection, StoreError};

const MAX_TITLE: usize = 200;
const MAX_MESSAGE: usize = 2000;

/// A user-targeted event about their notifications; `data` is JSON text.
fn notify(
    conn: &mut DbConnection,
    account: &AccountId,
    user: &UserId,
    event: &str,
    data: String,
) -> Result<RoomEvent, StoreError> {
    let data = RawValue::from_string(data).expect("our own serialization is JSON");
    inbox::emit(conn, account, Some(user), event, &data)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    account_id: String,
    user_id: String,
    #[serde(rename = "type")]
    kind: String,
    title: String,
    message: Option<String>,
    data: Option<Box<RawValue>>,
}

/// `POST /api/v1/notifications` (server API key)
pub async fn create(
    _: ServerKey,
    state: web::Data<AppState>,
    body: Json<CreateRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    let account = field("account_id", AccountId::new(&request.account_id))?;
    let user = field("user_id", UserId::new(&request.user_id))?;
    field("type", check_id(&request.kind))?;
    let too_long = |max: usize| Err::<(), _>(format!("must be at most {max} characters"));
    if request.title.trim().is_empty() {
        field("title", Err::<(), _>("must not be empty"))?;
    }
    if request.title.chars().count() > MAX_TITLE {
        field("title", too_long(MAX_TITLE))?;
    }
    if request
        .message
        .as_ref()
        .is_some_and(|m| m.chars().count() > MAX_MESSAGE)
    {
        field("message", too_long(MAX_MESSAGE))?;
    }
    let (created, _) = state
        .commits
        .commit(account.clone(), move |conn| {
            let data = request.data.as_deref().map_or("null", RawValue::get);
            let created = notifications::create(
                conn,
                &account,
                &user,
                &NewNotification {
                    kind: &request.kind,
                    title: &request.title,
                    message: request.message.as_deref(),
                    data,
                },
            )?;
            let unread = notifications::unread_count(conn, &account, &user)?;
            let payload = format!(
                r#"{{"notification":{},"unread_count":{unread}}}"#,
                created.to_json()
            );
            let event = notify(conn, &account, &user, "notification", payload)?;
            Ok::<_, StoreError>((created, vec![event]))
        })
        .await?;
    Ok(json_text(HttpResponse::Created(), created.to_json()))
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    unread: bool,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// `GET /api/v1/notifications?unread=true&limit=…&cursor=…` — newest first.
pub async fn list(
    User(user): User,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let (limit, cursor) = PageQuery::new(query.limit, query.cursor).parse()?;
    let (page, unread) = state
        .store
        .run(move |conn| {
            let page = notifications::list(
                conn,
                &user.account,
                &user.user,
                query.unread,
                limit,
                cursor.as_ref(),
            )?;
            let unread = notifications::unread_count(conn, &user.account, &user.user)?;
            Ok::<_, StoreError>((page, unread))
        })
        .await?;
    let next = next_cursor(&page, limit, |n| Cursor {
        time: n.created_at,
        id: n.id.clone(),
    });
    let items: Vec<String> = page.iter().map(Notification::to_json).collect();
    let extra = [
        ("unread_count", json!(unread)),
        ("next_cursor", json!(next)),
    ];
    Ok(json_text(
        HttpResponse::Ok(),
        list_json("notifications", &items, &extra),
    ))
}

/// `GET /api/v1/notifications/unread-count`
pub async fn unread_count(
    User(user): User,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let unread = state
        .store
        .run(move |conn| notifications::unread_count(conn, &user.account, &user.user))
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "unread_count": unread })))
}

/// What changed, for the `notification-count` event.
enum Change {
    Read(String),
    ReadAll,
    Deleted(String),
}

/// Applies a change to the caller's notifications and pushes the new count to their tabs.
async fn change(
    state: &AppState,
    user: crate::auth::Identity,
    change: Change,
) -> Result<HttpResponse, ApiError> {
    let (unread, _) = state
        .commits
        .commit(user.account.clone(), move |conn| {
            let (account, who) = (&user.account, &user.user);
            let (found, detail) = match &change {
                Change::Read(id) => (
                    notifications::mark_read(conn, account, who, Some(id))?,
                    json!({ "read": id }),
                ),
                Change::ReadAll => (
                    notifications::mark_read(conn, account, who, None)?,
                    json!({ "read_all": true }),
                ),
                Change::Deleted(id) => (
                    notifications::delete(conn, account, who, id)?,
                    json!({ "deleted": id }),
                ),
            };
            if !found {
                return Ok((None, Vec::new()));
            }
            let unread = notifications::unread_count(conn, account, who)?;
            let mut data = detail;
            data["unread_count"] = json!(unread);
            let event = notify(conn, account, who, "notification-count", data.to_string())?;
            Ok::<_, StoreError>((Some(unread), vec![event]))
        })
        .await?;
    let unread = unread.ok_or(ApiError::NoSuch("notification"))?;
    Ok(HttpResponse::Ok().json(json!({ "unread_count": unread })))
}

/// `POST /api/v1/notifications/{id}/read`
pub async fn mark_read(
    User(user): User,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    change(&state, user, Change::Read(path.into_inner())).await
}

/// `POST /api/v1/notifications/read-all`
pub async fn mark_all_read(
    User(user): User,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    change(&state, user, Change::ReadAll).await
}

/// `DELETE /api/v1/notifications/{id}`
pub async fn delete(
    User(user): User,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    change(&state, user, Change::Deleted(path.into_inner())).await
}
