//! `GET /api/v1/events?since=N&timeout=S[&channels=a,b]` (user JWT): the long-poll fallback for a client whose
//! WebSocket is blocked. It answers at once with the events after N the user may see, or waits
//! up to S seconds for the next one — woken by the broker when one is published, never by
//! polling the database — and answers with the same event frames, in the same order.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::extract::User;
use super::{json_text, list_json, AppState};
use crate::actors::broker::Wait;
use crate::auth::Identity;
use crate::channel::{split_list, Channel};
use crate::error::ApiError;
use crate::event::RoomEvent;
use crate::protocol::{ResumePoint, SinceError};
use crate::store::events;

/// Events in one answer at most; the client asks again from the last one.
const PAGE: i64 = 500;
/// The wait when the client names none.
const DEFAULT_WAIT: Duration = Duration::from_secs(25);

#[derive(Deserialize)]
pub struct PollQuery {
    since: Option<String>,
    /// `a,b`: the channels whose events are read besides the account's and the user's own.
    channels: Option<String>,
    /// Seconds.
    timeout: Option<String>,
}

/// The events after `since`, checked against retention.
async fn read(
    state: &AppState,
    user: &Identity,
    channels: &[Channel],
    since: u64,
) -> Result<Vec<RoomEvent>, ApiError> {
    let (account, who) = (user.account.clone(), user.user.clone());
    let channels = channels.to_vec();
    let (oldest, last, rows) = state
        .store
        .run(move |conn| {
            let (oldest, last) = events::history(conn, &account)?;
            let reader = events::Reader {
                user: &who,
                channels: &channels,
                unchanneled: true,
            };
            let rows = events::visible(conn, &account, reader, since, None, PAGE)?;
            Ok::<_, ApiError>((oldest, last, rows))
        })
        .await?;
    match ResumePoint::check(since, (oldest, last)).map_err(ApiError::Since)? {
        ResumePoint::Kept => {}
        ResumePoint::Pruned { oldest } => {
            return Err(ApiError::ResumeFailed {
                since,
                oldest_seq: oldest,
            })
        }
    }
    Ok(rows
        .into_iter()
        .filter_map(RoomEvent::from_stored)
        .collect())
}

pub async fn poll(
    User(user): User,
    state: web::Data<AppState>,
    query: web::Query<PollQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let channels = user
        .channels
        .admit(split_list(query.channels.as_deref().unwrap_or_default()))?;
    let Some(since) = query.since else {
        // A client starting out (its WebSocket blocked from the first) asks where "now" is,
        // rather than being handed the account's whole history.
        let account = user.account.clone();
        let seq = state
            .store
            .run(move |conn| events::current_seq(conn, &account))
            .await?;
        let body = list_json("events", &[], &[("since", json!(seq))]);
        return Ok(json_text(HttpResponse::Ok(), body));
    };
    let since = SinceError::parse(&serde_json::Value::String(since)).map_err(ApiError::Since)?;
    let wait = match query.timeout {
        None => DEFAULT_WAIT,
        Some(s) => Duration::from_secs(s.parse().map_err(|_| ApiError::InvalidField {
            field: "timeout",
            reason: "must be a whole number of seconds".into(),
        })?),
    }
    .min(state.long_poll_max);

    // Registered before reading, so an event stored between the read and the wait still wakes.
    let (wake, woken) = tokio::sync::oneshot::channel();
    state.broker.do_send(Wait {
        account: user.account.clone(),
        user: user.user.clone(),
        channels: channels.clone(),
        wake,
    });
    let mut found = read(&state, &user, &channels, since).await?;
    if found.is_empty() && !wait.is_zero() {
        if let Ok(Ok(())) = actix_web::rt::time::timeout(wait, woken).await {
            found = read(&state, &user, &channels, since).await?;
        }
    }
    let next = found.last().map_or(since, |e| e.seq);
    // The very frames the WebSocket sends, not parsed and written again.
    let frames: Vec<String> = found.iter().map(|e| e.frame.to_string()).collect();
    let body = list_json("events", &frames, &[("since", json!(next))]);
    Ok(json_text(HttpResponse::Ok(), body))
}
