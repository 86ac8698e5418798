//! The demo inbox at `/demo`: a page built on the SDK, for a newcomer to see two accounts (and
//! two users of one) talking within a minute of `cargo run`.
//!
//! It is on in development mode and off otherwise ([`Demo`]). Tokens for any demo user come from
//! `POST /demo/token` only when the JWT secret itself was generated for development — the one
//! case where minting a token for whoever asks impersonates nobody — and only for the demo page
//! on this machine: no page of another site may have them (see [`from_the_demo_page`]). The
//! demo's paths carry no CORS headers (`server::cors`).

use std::net::IpAddr;
use std::time::Duration;

use actix_web::http::header::{self, ContentType};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

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

/// Largest token request read: two ids.
const MAX_TOKEN_REQUEST_BYTES: usize = 1024;

pub async fn token(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let Some(jwt) = state.demo_minter.as_ref() else {
        return Err(ApiError::DemoTokensOff);
    };
    if !from_the_demo_page(&req) {
        return Err(ApiError::DemoTokensOff);
    }
    // A page may post a form, or `text/plain`, to any site without asking; JSON it may send to
    // another site only after a preflight, which `/demo` never grants.
    if !req.content_type().eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = payload
        .to_bytes_limited(MAX_TOKEN_REQUEST_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge {
            limit: MAX_TOKEN_REQUEST_BYTES,
        })?
        .map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    let body: TokenRequest = crate::json::from_slice(&body)?;
    let account = field("account_id", AccountId::new(&body.account_id))?;
    let user = field("user_id", UserId::new(&body.user_id))?;
    // The demo's order panel follows `order:<id>` channels.
    let token = auth::mint_with_channels(jwt, &account, &user, TOKEN_TTL, &["order:*".to_owned()])
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({ "token": token, "expires_in": TOKEN_TTL.as_secs() })))
}

/// Whether a request comes from the demo page as this server serves it on this machine: from a
/// loopback peer; to a loopback name — a page of another site whose name was made to resolve
/// here (DNS rebinding) asks for that name, not for `localhost`; and from no page at all (curl)
/// or from a page of this very origin.
fn from_the_demo_page(req: &HttpRequest) -> bool {
    let peer_is_local = req.peer_addr().is_some_and(|peer| peer.ip().is_loopback());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin_is_ours = match req.headers().get(header::ORIGIN) {
        None => true,
        Some(origin) => origin
            .to_str()
            .ok()
            .and_then(|origin| origin.split_once("://"))
            .zip(host)
            .is_some_and(|((_, authority), host)| authority.eq_ignore_ascii_case(host)),
    };
    peer_is_local && host.is_some_and(is_loopback_host) && origin_is_ours
}

/// `localhost`, a name under `.localhost`, or a loopback address, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    }
    .to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts_are_told_apart_from_names_that_resolve_here() {
        for host in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:80",
            "app.localhost:3000",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        assert!(is_loopback_host("[::1]:8080"));
        for host in [
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "[::2]",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
