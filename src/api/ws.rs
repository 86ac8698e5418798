//! `GET /ws`: authenticate, then upgrade to a WebSocket served by a [`Session`] actor.
//!
//! Every refusal happens here, before the upgrade, as an HTTP error with a JSON body — a browser
//! or CLI client sees *why* (401 `token-expired`, …) rather than a socket that silently never
//! opens.

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use super::AppState;
use crate::actors::session::Session;
use crate::auth;
use crate::error::ApiError;
use crate::store::events;

pub async fn connect(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = auth::token_from_request(&req)?;
    let identity = state.verifier.verify(&token)?;
    ws::handshake(&req).map_err(|_| ApiError::NotWebSocket)?;

    let account = identity.account.clone();
    let seen_seq = state
        .store
        .run(move |conn| events::current_seq(conn, &account))
        .await?;

    let session = Session::new(identity, seen_seq, state.sessions.clone());
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(state.sessions.max_frame_bytes)
        .start()
        .map_err(|_| ApiError::NotWebSocket)
}
