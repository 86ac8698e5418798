//! `GET /api/v1/presence`: the online users of the caller's account — never anyone else's. The
//! account's room knows who is connected; the `presence` frame asks the same question.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::extract::User;
use super::AppState;
use crate::actors::broker::OnlineUsers;
use crate::error::ApiError;

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
