//! The demo inbox at `/demo`: a page built on the SDK, for a newcomer to see two accounts (and
//! two users of one) talking within a minute of `cargo run`.
//!
//! It is on in development mode and off otherwise ([`Demo`]). Tokens for any demo user come from
//! `POST /demo/token` only when the JWT secret itself was generated for development — the one
//! case where minting a token for whoever asks impersonates nobody — and only for requests from
//! this machine.

use std::time::Duration;

use actix_web::http::header::ContentType;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::extract::Json;
use super::AppState;
use crate::auth;
use crate::config::Demo;
use crate::error::{field, ApiError};
use crate::ids::{AccountId, UserId};

const PAGE: &str = include_str!("../demo/index.html");
/// Demo tokens last an hour; the page asks again when one expires.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

pub async fn page(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.demo == Demo::Off {
        return Err(ApiError::DemoOff);
    }
    Ok(HttpResponse::Ok()
        .insert_header(ContentType::html())
        .body(PAGE))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    account_id: String,
    user_id: String,
}

pub async fn token(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: Json<TokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let Some(jwt) = state.demo_minter.as_ref() else {
        return Err(ApiError::DemoTokensOff);
    };
    if !req.peer_addr().is_some_and(|peer| peer.ip().is_loopback()) {
        return Err(ApiError::DemoTokensOff);
    }
    let account = field("account_id", AccountId::new(&body.account_id))?;
    let user = field("user_id", UserId::new(&body.user_id))?;
    let token = auth::mint(jwt, &account, &user, TOKEN_TTL)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({ "token": token, "expires_in": TOKEN_TTL.as_secs() })))
}
