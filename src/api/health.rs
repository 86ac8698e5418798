//! Liveness and readiness, for load balancers and orchestrators: `/healthz` says the process
//! answers; `/readyz` says it should be sent traffic — its database answers and it is not
//! draining (a stopping node turns unready first, so the balancer moves clients away).

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use diesel::RunQueryDsl;
use serde_json::json;

use super::AppState;
use crate::store::StoreError;

pub async fn alive() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let database = state
        .store
        .run(|conn| {
            diesel::sql_query("SELECT 1")
                .execute(conn)
                .map_err(StoreError::from)
        })
        .await
        .is_ok();
    let draining = state.draining.load(Ordering::Relaxed);
    let body = json!({
        "status": if database && !draining { "ready" } else { "not-ready" },
        "database": if database { "ok" } else { "unreachable" },
        "draining": draining,
    });
    if database && !draining {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
