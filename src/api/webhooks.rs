//! `/webhooks/…`: the providers' requests, handed to the webhooks adapter as
//! [`webhooks::Request`]s, its answers turned into responses. What a webhook means — signatures,
//! payloads, what is stored — is the adapter's; this file knows only HTTP.

use std::collections::HashMap;

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};

use super::AppState;
use crate::error::ApiError;
use crate::webhooks::{self, facebook, generic, zalo, WebhookError};

/// A provider's request on actix-web.
struct Delivered {
    req: HttpRequest,
    payload: web::Payload,
}

impl webhooks::Request for Delivered {
    fn header(&self, name: &str) -> Option<&str> {
        self.req.headers().get(name).and_then(|v| v.to_str().ok())
    }

    async fn body(self, limit: usize) -> Result<Bytes, WebhookError> {
        self.payload
            .to_bytes_limited(limit)
            .await
            .map_err(|_| WebhookError::PayloadTooLarge { limit })?
            .map_err(|e| WebhookError::InvalidBody(e.to_string()))
    }
}

/// `GET /webhooks/facebook`: the subscription handshake, answered with the challenge.
pub async fn facebook_handshake(
    query: web::Query<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let challenge = facebook::handshake(&query, &state.webhooks)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain")
        .body(challenge))
}

/// `POST /webhooks/facebook`
pub async fn facebook_receive(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let ingested = facebook::receive(Delivered { req, payload }, &state.webhooks).await?;
    Ok(HttpResponse::Ok().json(ingested))
}

/// `POST /webhooks/zalo`
pub async fn zalo_receive(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let ingested = zalo::receive(Delivered { req, payload }, &state.webhooks).await?;
    Ok(HttpResponse::Ok().json(ingested))
}

/// `POST /webhooks/generic/{integration_id}`
pub async fn generic_receive(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let delivered = Delivered { req, payload };
    let ingested = generic::receive(delivered, path.into_inner(), &state.webhooks).await?;
    Ok(HttpResponse::Ok().json(ingested))
}
