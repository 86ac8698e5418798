//! `POST /api/v1/publish`: the application's backend hands Switchboard an event for an account
//! (optionally for one user of it). The event is stored first, then delivered.

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::AppState;
use crate::actors::broker::Publish;
use crate::actors::room::RoomEvent;
use crate::auth;
use crate::error::ApiError;
use crate::ids::{AccountId, UserId};
use crate::protocol::event_frame;
use crate::store::events::{self, NewEvent};

const MAX_EVENT_NAME: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    account_id: String,
    #[serde(default)]
    user_id: Option<String>,
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
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

fn check_server_key(req: &HttpRequest) -> Result<ServerKey, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered with the app");
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or(ApiError::MissingApiKey)?;
    let key = header
        .to_str()
        .ok()
        .and_then(auth::bearer)
        .ok_or(ApiError::MissingApiKey)?;
    if constant_time_eq::constant_time_eq(key.as_bytes(), state.api_key.expose().as_bytes()) {
        Ok(ServerKey)
    } else if state.verifier.verify(key).is_ok() {
        Err(ApiError::UserTokenForbidden)
    } else {
        Err(ApiError::InvalidApiKey)
    }
}

fn field<T>(field: &'static str, result: Result<T, impl ToString>) -> Result<T, ApiError> {
    result.map_err(|e| ApiError::InvalidField {
        field,
        reason: e.to_string(),
    })
}

fn check_event_name(name: &str) -> Result<(), &'static str> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if !name.is_empty() && name.len() <= MAX_EVENT_NAME && name.chars().all(allowed) {
        Ok(())
    } else {
        Err("must be 1 to 64 characters of letters, digits, '.', '_', ':' or '-'")
    }
}

pub async fn publish(
    _: ServerKey,
    state: web::Data<AppState>,
    body: web::Json<PublishRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.into_inner();
    let account = field("account_id", AccountId::new(&request.account_id))?;
    let user = request
        .user_id
        .as_deref()
        .map(|u| field("user_id", UserId::new(u)))
        .transpose()?;
    field("event", check_event_name(&request.event))?;
    let data = match request.data {
        Some(data) => data,
        None => RawValue::from_string("null".into()).expect("null is JSON"),
    };

    let broker = state.broker.clone();
    let response_account = account.clone();
    let seq = state
        .store
        .run(move |conn| {
            let seq = events::append(
                conn,
                &NewEvent {
                    account: &account,
                    user: user.as_ref(),
                    event: &request.event,
                    data: data.get(),
                },
            )?;
            // Handed over here, on the blocking thread right after the commit, rather than in
            // the request future: a client that disconnects drops that future, and a stored
            // event must still be delivered.
            broker.do_send(Publish {
                account,
                event: RoomEvent {
                    seq,
                    user,
                    frame: event_frame(seq, &request.event, &data),
                },
            });
            Ok(seq)
        })
        .await?;
    log::debug!("publish account={response_account} seq={seq}");
    Ok(HttpResponse::Ok().json(json!({ "account_id": response_account.as_str(), "seq": seq })))
}
