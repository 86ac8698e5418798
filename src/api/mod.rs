//! The HTTP surface: routes, shared state, and the request extractors' error handling.
//!
//! - `GET /ws` — the WebSocket endpoint ([`ws`]).
//! - `POST /api/v1/publish` — the server-side publish API ([`publish`]).

pub mod publish;
pub mod ws;

use actix::Addr;
use actix_web::{web, HttpResponse};

use crate::actors::broker::Broker;
use crate::actors::session::SessionSettings;
use crate::auth::Verifier;
use crate::config::Secret;
use crate::error::ApiError;
use crate::store::Store;

/// What every request handler shares.
pub struct AppState {
    pub verifier: Verifier,
    pub api_key: Secret,
    pub store: Store,
    pub broker: Addr<Broker>,
    pub sessions: SessionSettings,
}

pub fn routes(cfg: &mut web::ServiceConfig, max_publish_bytes: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(max_publish_bytes)
            // `curl -d` sends a form content type; the body is JSON all the same.
            .content_type_required(false)
            .error_handler(|error, _| ApiError::from(error).into()),
    )
    .route("/ws", web::get().to(ws::connect))
    .service(
        web::resource("/api/v1/publish")
            .route(web::post().to(publish::publish))
            .default_service(web::to(method_not_allowed)),
    )
    .default_service(web::to(not_found));
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}
