//! `GET /sse[?since=N][&channels=a,b]`: authenticate, then answer with an event stream served by a session on
//! the Server-Sent Events wire ([`crate::sse`]); and `POST /api/v1/sessions/{id}/auth`, which
//! hands such a live session a fresh token.
//!
//! As for `/ws`, every refusal happens before the stream starts, as an HTTP error with a JSON
//! body. The resume point is the `Last-Event-ID` header when there is one, else `?since=`: a
//! browser's `EventSource` reconnects to the URL it was opened with (and its stale `since`),
//! adding the id of the last event it received.

use actix_web::http::header::{self, HeaderName};
use actix_web::{web, HttpRequest, HttpResponse};

use super::extract::User;
use super::ws::{admit, channels_in_query, check_resume_point, parse_since, since_in_query};
use super::AppState;
use crate::actors::session::Session;
use crate::error::ApiError;
use crate::ids::SessionId;
use crate::sse::Refresh;

/// The header a reconnecting `EventSource` sends.
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

pub async fn connect(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let identity = admit(&req, &state)?;
    // An empty one says no event was received (some clients send it so): the query decides.
    let header = req.headers().get(LAST_EVENT_ID).filter(|v| !v.is_empty());
    let since = match header {
        Some(value) => parse_since(Some(
            value
                .to_str()
                .map_err(|_| ApiError::Since(crate::protocol::SinceError::Malformed))?
                .to_owned(),
        ))?,
        None => since_in_query(&req)?,
    };
    let channels = channels_in_query(&req, &identity)?;
    let seen_seq = check_resume_point(&state, &identity, since).await?;
    let peer = crate::auth::throttle::peer(&req);
    let shared = state.sessions.clone();
    let stream = crate::sse::start(&state.streams, |wire| {
        Session::new(identity, peer, seen_seq, since, shared, wire).with_channels(channels)
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // nginx buffers responses unless told not to: events would wait in it.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

/// `POST /api/v1/sessions/{session_id}/auth` with the fresh token as the bearer: the live event
/// stream `session_id` goes on under it (its client also gets `authenticated` on the stream).
/// The token must name the session's account and user (else 403 `token-mismatch`); a session
/// unknown to this node is 404 `not-found`. A token that does not verify is refused like any
/// other and leaves the session as it was.
pub async fn refresh(
    User(identity): User,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let expires_at = identity.expires_at;
    let session = SessionId::parse(&path)
        .and_then(|id| state.streams.find(id))
        .ok_or(ApiError::NoSuch("session"))?;
    match session.send(Refresh(identity)).await {
        Ok(true) => Ok(HttpResponse::Ok().json(serde_json::json!({
            "type": "authenticated",
            "expires_at": expires_at,
        }))),
        Ok(false) => Err(ApiError::TokenMismatch),
        // It ended meanwhile.
        Err(_) => Err(ApiError::NoSuch("session")),
    }
}
