//! `GET /api/v1/presence`: the online users of the caller's account — never anyone else's. The
//! account's room knows who is connected; the `presence` frame asks the same question.
//! `GET /api/v1/presence/deliveries` (server API key): the presence webhooks sent to the global
//! receiver (an account's own presence integration lists its own at
//! `/api/v1/integrations/{id}/deliveries`).

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::extract::{ServerKey, User};
use super::AppState;
use crate::actors::broker::OnlineUsers;
use crate::error::ApiError;
use crate::store::deliveries;

pub async fn online(
    User(user): User,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let users = state
        .broker
        .send(OnlineUsers {
            account: user.account,
        })
        .await
        .map_err(|e| ApiError::Internal(format!("broker: {e}")))?;
    Ok(HttpResponse::Ok().json(json!({ "users": users })))
}

/// `GET /api/v1/presence/deliveries`: the latest 100, newest first.
pub async fn global_deliveries(
    _: ServerKey,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let recent = state
        .store
        .run(|conn| deliveries::recent_global_presence(conn, 100))
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "deliveries": recent })))
}
