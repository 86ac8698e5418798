//! The control API (server API key): the application's backend revokes a user or one session,
//! and inspects an account's live sessions, online users (of the account, of a channel) and
//! stored events — everything a support engineer needs to answer "why didn't Alice see it?".
//! Every call names one account and touches nothing of any other.
//!
//! - `POST /api/v1/accounts/{account}/users/{user}/revoke` — stored, so every node and every
//!   restart refuses the user's earlier tokens; this node closes their sessions at once, the
//!   others within [`crate::revocation::REFRESH`].
//! - `POST /api/v1/accounts/{account}/sessions/{session}/revoke` — closed here at once; in a
//!   cluster, also stored, and closed by the node that holds it within a second.
//! - `GET /api/v1/accounts/{account}/sessions[?user_id=]`, `…/online`,
//!   `…/channels/{channel}/online`, `…/events?since=&limit=`

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::ServerKey;
use super::AppState;
use crate::actors::broker::{ChannelUsers, ListSessions, OnlineUsers, Revoke};
use crate::channel::Channel;
use crate::error::{field, ApiError};
use crate::ids::{AccountId, SessionId, UserId};
use crate::protocol::SinceError;
use crate::store::{self, events, revocations};

/// Events one page lists at most, and by default.
const MAX_EVENTS: i64 = 500;
const DEFAULT_EVENTS: i64 = 100;

fn account(id: &str) -> Result<AccountId, ApiError> {
    field("account", AccountId::new(id))
}

fn broker_failed(e: actix::MailboxError) -> ApiError {
    ApiError::Internal(format!("broker: {e}"))
}

pub async fn revoke_user(
    _: ServerKey,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (account, user) = path.into_inner();
    let (account, user) = (self::account(&account)?, field("user", UserId::new(&user))?);
    let now = crate::auth::unix_now();
    let (a, u) = (account.clone(), user.clone());
    let stored = state
        .store
        .run(move |conn| store::write(conn, &a, |conn| revocations::revoke(conn, &a, &u, now)))
        .await?;
    let revoked_at = stored.revoked_at.max(0) as u64;
    state
        .authenticator
        .revoked()
        .record(account.clone(), user.clone(), revoked_at);
    let closed = state
        .broker
        .send(Revoke::user(account.clone(), user.clone()))
        .await
        .map_err(broker_failed)?;
    log::info!("revoked account={account} user={user} sessions_closed={closed}");
    Ok(HttpResponse::Ok().json(json!({
        "account_id": account.as_str(),
        "user_id": user.as_str(),
        "revoked_at": revoked_at,
        "sessions_closed": closed,
    })))
}

pub async fn revoke_session(
    _: ServerKey,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (account, session) = path.into_inner();
    let account = self::account(&account)?;
    let id = SessionId::parse(&session).ok_or(ApiError::NoSuch("session"))?;
    if state.cluster.is_some() {
        // Another node may hold it: each reads this within a second and closes its own.
        let (a, s) = (account.clone(), session.clone());
        state
            .store
            .run(move |conn| revocations::revoke_session(conn, &a, &s))
            .await?;
    }
    let revoke = Revoke {
        account,
        user: None,
        session: Some(id),
    };
    let closed = state.broker.send(revoke).await.map_err(broker_failed)? > 0;
    if !closed && state.cluster.is_none() {
        return Err(ApiError::NoSuch("session"));
    }
    Ok(HttpResponse::Ok().json(json!({ "session_id": session, "closed_here": closed })))
}

#[derive(Deserialize)]
pub struct SessionsQuery {
    user_id: Option<String>,
}

pub async fn sessions(
    _: ServerKey,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<SessionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let account = self::account(&path.into_inner())?;
    let user = query
        .into_inner()
        .user_id
        .map(|u| field("user_id", UserId::new(&u)))
        .transpose()?;
    let list = ListSessions { account, user };
    let sessions = state.broker.send(list).await.map_err(broker_failed)?;
    let node = &state.node;
    let sessions: Vec<Value> = sessions
        .into_iter()
        .map(|s| {
            let mut s = json!(s);
            s["node"] = json!(node);
            s
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "sessions": sessions })))
}

pub async fn online(
    _: ServerKey,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let account = self::account(&path.into_inner())?;
    let users = state
        .broker
        .send(OnlineUsers { account })
        .await
        .map_err(broker_failed)?;
    Ok(HttpResponse::Ok().json(json!({ "users": users })))
}

pub async fn channel_online(
    _: ServerKey,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (account, channel) = path.into_inner();
    let account = self::account(&account)?;
    let channel = field("channel", Channel::new(&channel))?;
    let name = channel.as_str().to_owned();
    let users = state
        .broker
        .send(ChannelUsers { account, channel })
        .await
        .map_err(broker_failed)?;
    Ok(HttpResponse::Ok().json(json!({ "channel": name, "users": users })))
}

/// Taken as text, so that a bad value gets its own code rather than `invalid-query`.
#[derive(Deserialize)]
pub struct EventsQuery {
    since: Option<String>,
    limit: Option<String>,
}

/// `limit`: 1 to [`MAX_EVENTS`], [`DEFAULT_EVENTS`] when absent.
fn events_limit(limit: Option<&str>) -> Result<i64, ApiError> {
    let Some(limit) = limit else {
        return Ok(DEFAULT_EVENTS);
    };
    match limit.parse::<i64>() {
        Ok(limit) if (1..=MAX_EVENTS).contains(&limit) => Ok(limit),
        _ => Err(ApiError::InvalidField {
            field: "limit",
            reason: format!("must be an integer from 1 to {MAX_EVENTS}"),
        }),
    }
}

/// `since`: a sequence number, which the store keeps as an `i64`.
fn events_since(since: Option<&str>) -> Result<u64, ApiError> {
    let Some(since) = since else { return Ok(0) };
    match since.parse::<u64>() {
        Ok(since) if i64::try_from(since).is_ok() => Ok(since),
        _ => Err(ApiError::Since(SinceError::Malformed)),
    }
}

pub async fn stored_events(
    _: ServerKey,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let account = self::account(&path.into_inner())?;
    let query = query.into_inner();
    let limit = events_limit(query.limit.as_deref())?;
    let since = events_since(query.since.as_deref())?;
    // One more than the page: only a further event makes this page not the last.
    let mut rows = state
        .store
        .run(move |conn| events::after(conn, &account, since, limit + 1))
        .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more.then(|| rows.last().map(|r| r.seq)).flatten();
    let events: Vec<Value> = rows
        .into_iter()
        .map(|row| {
            let data: Value = serde_json::from_str(&row.data).unwrap_or(Value::Null);
            json!({
                "seq": row.seq,
                "user_id": row.user_id,
                "channel": row.channel,
                "event": row.event,
                "data": data,
                "created_at": row.created_at,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "events": events, "next_since": next })))
}
