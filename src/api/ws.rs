//! `GET /ws[?since=N][&channels=a,b]`: authenticate, then upgrade to a WebSocket served by a [`Session`] actor.
//!
//! Every refusal happens here, before the upgrade, as an HTTP error with a JSON body — a browser
//! or CLI client sees *why* (401 `token-expired`, 400 `invalid-since`, …) rather than a socket that
//! silently never opens.

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use serde::Deserialize;
use serde_json::Value;

use super::AppState;
use crate::actors::session::{self, Native, Session};
use crate::channel::split_list;
use crate::error::ApiError;
use crate::protocol::{ResumePoint, SinceError};
use crate::store::events;

#[derive(Deserialize)]
struct ResumeQuery {
    since: Option<String>,
    /// `a,b`: the channels to follow from the start.
    channels: Option<String>,
}

pub async fn connect(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::Draining);
    }
    check_origin(&req, &state)?;
    let identity = super::extract::identity(&req)?;
    ws::handshake(&req).map_err(|_| ApiError::NotWebSocket)?;
    let query = web::Query::<ResumeQuery>::from_query(req.query_string())
        .map_err(|_| ApiError::Since(SinceError::Malformed))?
        .into_inner();
    let since = query
        .since
        .map(|s| SinceError::parse(&Value::String(s)))
        .transpose()
        .map_err(ApiError::Since)?;
    let channels = identity
        .channels
        .admit(split_list(query.channels.as_deref().unwrap_or_default()))?;

    // Only a resume point needs the database before the upgrade; otherwise the room knows the
    // account's sequence number (or reads it once, when it starts). One beyond retention is
    // taken: the session says `resume-failed` once connected.
    let seen_seq = match since {
        None => None,
        Some(since) => {
            let account = identity.account.clone();
            let history = state
                .store
                .run(move |conn| events::history(conn, &account))
                .await?;
            ResumePoint::check(since, history).map_err(ApiError::Since)?;
            Some(history.1)
        }
    };

    let session = Session::new(
        identity,
        crate::auth::throttle::peer(&req),
        seen_seq,
        since,
        state.sessions.clone(),
        Native::default(),
    )
    .with_channels(channels);
    session::start(session, &req)
        .await
        .map_err(|_| ApiError::NotWebSocket)
}

/// Before any token work: see [`crate::auth::origin_allowed`].
fn check_origin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    if crate::auth::origin_allowed(req, &state.allowed_origins) {
        Ok(())
    } else {
        Err(ApiError::OriginNotAllowed)
    }
}
