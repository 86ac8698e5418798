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
use crate::actors::session::Session;
use crate::auth::Identity;
use crate::channel::{split_list, Channel};
use crate::error::ApiError;
use crate::protocol::{ResumePoint, SinceError};
use crate::store::events;
use crate::ws::{self as transport, Native};

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
    let identity = admit(&req, &state)?;
    ws::handshake(&req).map_err(|_| ApiError::NotWebSocket)?;
    let since = since_in_query(&req)?;
    let channels = channels_in_query(&req, &identity)?;
    let seen_seq = check_resume_point(&state, &identity, since).await?;

    let session = Session::new(
        identity,
        crate::auth::throttle::peer(&req),
        seen_seq,
        since,
        state.sessions.clone(),
        Native::default(),
    )
    .with_channels(channels);
    transport::start(session, &req)
        .await
        .map_err(|_| ApiError::NotWebSocket)
}

/// The resume point of `?since=`, if any.
pub fn since_in_query(req: &HttpRequest) -> Result<Option<u64>, ApiError> {
    let since = web::Query::<ResumeQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::InvalidQuery(e.to_string()))?
        .into_inner()
        .since;
    parse_since(since)
}

/// The channels of `?channels=a,b` to follow from the start, each allowed by the token's grant.
pub fn channels_in_query(req: &HttpRequest, identity: &Identity) -> Result<Vec<Channel>, ApiError> {
    let list = web::Query::<ResumeQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::InvalidQuery(e.to_string()))?
        .into_inner()
        .channels;
    Ok(identity
        .channels
        .admit(split_list(list.as_deref().unwrap_or_default()))?)
}

/// A resume point as the client wrote it, checked to be a sequence number.
pub fn parse_since(since: Option<String>) -> Result<Option<u64>, ApiError> {
    since
        .map(|s| SinceError::parse(&Value::String(s)))
        .transpose()
        .map_err(ApiError::Since)
}

/// Checks a session's resume point against its account's history, and answers the account's
/// sequence number for the session to hand its room (`None` without a resume point).
///
/// Only a resume point needs the database before the session starts; otherwise the room knows
/// the account's sequence number (or reads it once, when it starts). One beyond retention is
/// taken: the session says `resume-failed` once connected.
pub async fn check_resume_point(
    state: &AppState,
    identity: &Identity,
    since: Option<u64>,
) -> Result<Option<u64>, ApiError> {
    let Some(since) = since else {
        return Ok(None);
    };
    let account = identity.account.clone();
    let history = state
        .store
        .run(move |conn| events::history(conn, &account))
        .await?;
    ResumePoint::check(since, history).map_err(ApiError::Since)?;
    Ok(Some(history.1))
}

/// Before any token work: see [`crate::auth::origin_allowed`].
/// What every session's handshake checks first: the node takes sessions (it is not draining),
/// the page may open one (the `Origin` check, before any token work), and the token names who.
pub fn admit(req: &HttpRequest, state: &AppState) -> Result<Identity, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::Draining);
    }
    check_origin(req, state)?;
    super::extract::identity(req)
}

fn check_origin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    if crate::auth::origin_allowed(req, &state.allowed_origins) {
        Ok(())
    } else {
        Err(ApiError::OriginNotAllowed)
    }
}
