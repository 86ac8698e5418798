//! Request extractors for the two kinds of caller — the application's backend (server API key)
//! and a user (JWT), extracted before the body, so an unauthenticated request is refused without
//! reading it — and for JSON bodies ([`Json`]), held to the nesting limit of [`crate::json`].

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::AppState;
use crate::auth::throttle::{peer, Refused};
use crate::auth::{self, Identity};
use crate::error::ApiError;
use crate::json;

fn state(req: &HttpRequest) -> &web::Data<AppState> {
    req.app_data::<web::Data<AppState>>()
        .expect("AppState is registered with the app")
}

/// Proof that the request carries the server API key. Extracted before the body, so an
/// unauthenticated request is refused without reading it.
pub struct ServerKey;

impl FromRequest for ServerKey {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(check_server_key(req))
    }
}

/// The identity of a request's verified JWT; a token that does not verify counts against the
/// client's address (see [`throttle`](crate::auth::throttle)).
pub fn identity(req: &HttpRequest) -> Result<Identity, ApiError> {
    let state = state(req);
    state.authenticator.check(peer(req))?;
    let token = auth::token_from_request(req)?;
    Ok(state.authenticator.verify(peer(req), &token)?)
}

/// The user of a verified JWT.
pub fn user(req: &HttpRequest) -> Result<User, ApiError> {
    identity(req).map(User)
}

fn check_server_key(req: &HttpRequest) -> Result<ServerKey, ApiError> {
    let state = state(req);
    state.authenticator.check(peer(req))?;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or(ApiError::MissingApiKey)?;
    let key = header
        .to_str()
        .ok()
        .and_then(auth::bearer)
        .ok_or(ApiError::MissingApiKey)?;
    // Every key is compared, in constant time, whichever matches: timing tells nothing.
    let matches = state
        .api_keys
        .iter()
        .fold(false, |found, valid| found | valid.matches(key));
    if matches {
        return Ok(ServerKey);
    }
    // Not a key: a user's token sent here by mistake is told so; anything else counts as a
    // failure (through the token's verification).
    match state.authenticator.verify(peer(req), key) {
        Ok(_) => Err(ApiError::UserTokenForbidden),
        Err(refused @ Refused::TooManyFailures { .. }) => Err(refused.into()),
        Err(Refused::Token(_)) => Err(ApiError::InvalidApiKey),
    }
}

/// A user, identified by a verified JWT (`Authorization: Bearer` or `?token=`).
pub struct User(pub Identity);

impl FromRequest for User {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(user(req))
    }
}

/// A JSON request body, parsed into `T` within [`json::MAX_DEPTH`] levels of nesting; otherwise as
/// `web::Json` (its size limit and error answers, from the app's `JsonConfig`). Every JSON body
/// the API takes comes through here.
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        // Taken as raw JSON first: that checks the syntax and the size, at any depth, without
        // building anything.
        let raw = web::Json::<Box<RawValue>>::from_request(req, payload);
        Box::pin(async move {
            let raw = raw.await?.into_inner();
            let value = json::from_slice(raw.get().as_bytes()).map_err(ApiError::from)?;
            Ok(Self(value))
        })
    }
}
