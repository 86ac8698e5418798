//! What load balancers, orchestrators and monitoring ask a node: `/healthz` says the process
//! answers; `/readyz` says it should be sent traffic — its database answers, its Redis too in
//! cluster mode, and it is not draining (a stopping node turns unready first, so the balancer
//! moves clients away); `/metrics` is the Prometheus scrape (see [`crate::metrics`]), behind a
//! bearer token when `SWITCHBOARD_METRICS_TOKEN` is set.

use std::sync::atomic::Ordering;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::auth;
use crate::auth::throttle::peer;
use crate::error::ApiError;
use crate::store;

pub async fn alive() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let database = state.store.run(store::ping).await.is_ok();
    let draining = state.draining.load(Ordering::Relaxed);
    let redis = state.cluster.as_ref().map(|cluster| cluster.redis_up());
    let ready = database && !draining && redis != Some(false);
    let mut body = json!({
        "status": if ready { "ready" } else { "not-ready" },
        "database": if database { "ok" } else { "unreachable" },
        "draining": draining,
    });
    if let Some(redis) = redis {
        // Without Redis the node still serves its own sessions, alone: degraded.
        body["redis"] = json!(if redis { "ok" } else { "unreachable" });
        if !redis && database && !draining {
            body["status"] = json!("degraded");
        }
    }
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Some(expected) = &state.metrics_token {
        state.authenticator.check(peer(&req))?;
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(auth::bearer)
            .unwrap_or_default();
        if !expected.matches(presented) {
            state.authenticator.failed(peer(&req));
            return Err(ApiError::InvalidMetricsToken);
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render()))
}
