//! The HTTP surface: routes, shared state, and the request extractors' error handling.
//!
//! - `GET /ws` — the WebSocket endpoint ([`ws`]); `/socket.io/` — the same for Socket.IO clients
//!   ([`crate::socket_io`]); `GET /sse` — the same as an event stream, and
//!   `POST /api/v1/sessions/{id}/auth`, its token refresh ([`sse`]).
//! - `POST /api/v1/publish` — the server-side publish API ([`publish`]).
//! - `GET /api/v1/events` — the long-poll fallback ([`events`]).
//! - `/api/v1/integrations…`, `/api/v1/webhooks/stats` — admin ([`integrations`]).
//! - `/api/v1/conversations…` — the inbox for users ([`conversations`]).
//! - `/api/v1/notifications…` — [`notifications`]; `/api/v1/presence` — [`presence`].
//! - `/api/v1/accounts/{account}/…` — the control API: revoke, inspect ([`control`]).
//! - `/webhooks/{facebook,zalo,generic/{id}}` — provider webhooks ([`webhooks`]; what they mean:
//!   [`crate::webhooks`]).

pub mod control;
pub mod conversations;
pub mod demo;
pub mod events;
pub mod extract;
pub mod health;
pub mod integrations;
pub mod notifications;
pub mod presence;
pub mod publish;
pub mod sdk;
pub mod sse;
pub mod webhooks;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::actors::broker::Broker;
use crate::actors::session;
use crate::auth::throttle::Authenticator;
use crate::commit::Committer;
use crate::config::{Demo, JwtConfig, Origins, Secret};
use crate::error::ApiError;
use crate::publisher::Publisher;
use crate::store::Store;

/// What every request handler shares.
pub struct AppState {
    /// This node's id, as the control API shows it.
    pub node: String,
    /// Set in cluster mode.
    pub cluster: Option<crate::cluster::Cluster>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Verifies clients' tokens, with failed authentications limited per client address.
    pub authenticator: Arc<Authenticator>,
    /// Set when the server starts stopping: `/readyz` then says so.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// The server API keys accepted (the current one and any being rotated out).
    pub api_keys: Vec<Secret>,
    pub store: Store,
    pub broker: Addr<Broker>,
    pub sessions: Arc<session::Shared>,
    /// The live event-stream sessions, for their token refreshes.
    pub streams: Arc<crate::sse::Streams>,
    /// Socket.IO clients' Engine.IO connections, and what the adapter needs to serve them.
    pub socket_io: Arc<crate::socket_io::SocketIo>,
    /// The one commit path: write, hand the events to the broker, dispatch.
    pub commits: Committer,
    /// Each user's allowance of sends, drawn on by all their sessions and by the REST API.
    pub sends: Arc<crate::inbox::SendRate>,
    /// What an integration's `outbound_url` may point at.
    pub outbound_addresses: crate::outbound::address::Policy,
    pub publisher: Publisher,
    pub webhooks: crate::webhooks::Webhooks,
    /// Longest wait a long-poll may ask for.
    pub long_poll_max: Duration,
    pub demo: Demo,
    /// Which pages may open a WebSocket.
    pub allowed_origins: Origins,
    /// Signs demo tokens; set only when [`Demo::WithTokens`].
    pub demo_minter: Option<JwtConfig>,
    /// When set, `/metrics` needs it as a bearer token.
    pub metrics_token: Option<Secret>,
    /// The outbound dispatcher (its deliveries: replies and presence webhooks).
    pub dispatcher: actix::Recipient<crate::commit::Dispatch>,
}

pub fn routes(cfg: &mut web::ServiceConfig, max_publish_bytes: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(max_publish_bytes)
            // `curl -d` sends a form content type; the body is JSON all the same.
            .content_type_required(false)
            .error_handler(|error, _| ApiError::from(error).into()),
    )
    .app_data(web::QueryConfig::default().error_handler(|error, _| ApiError::from(error).into()))
    .configure(connections)
    .configure(operations)
    .configure(server_api)
    .configure(user_api)
    .configure(provider_webhooks)
    .default_service(web::to(not_found));
}

/// Where clients connect: `/ws`, `/sse` (and its token refresh), `/socket.io/`.
fn connections(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(ws::connect))
        .route("/sse", web::get().to(sse::connect))
        .route(
            "/api/v1/sessions/{session_id}/auth",
            web::post().to(sse::refresh),
        )
        .service(
            web::resource(["/socket.io/", "/socket.io"])
                .route(web::get().to(socket_io_get))
                .route(web::post().to(socket_io_post))
                .default_service(web::to(method_not_allowed)),
        );
}

/// Health, metrics, the SDK and the demo.
fn operations(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::alive))
        .route("/readyz", web::get().to(health::ready))
        .route("/metrics", web::get().to(health::metrics))
        .route("/sdk/switchboard.js", web::get().to(sdk::script))
        .route("/sdk/switchboard.d.ts", web::get().to(sdk::types))
        .route("/demo", web::get().to(demo::page))
        .route("/demo/token", web::post().to(demo::token));
}

/// What the application's backend calls, with the server API key.
fn server_api(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/v1/publish")
            .route(web::post().to(publish::publish))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::scope("/api/v1/integrations")
            .route("", web::post().to(integrations::create))
            .route("", web::get().to(integrations::list))
            .route("/{id}", web::get().to(integrations::show))
            .route(
                "/{id}/rotate-secret",
                web::post().to(integrations::rotate_secret),
            )
            .route("/{id}/disable", web::post().to(integrations::disable))
            .route("/{id}/deliveries", web::get().to(integrations::deliveries)),
    )
    .route(
        "/api/v1/webhooks/stats",
        web::get().to(integrations::webhook_stats),
    )
    .service(
        web::scope("/api/v1/accounts/{account}")
            .route("/users/{user}/revoke", web::post().to(control::revoke_user))
            .route(
                "/sessions/{session}/revoke",
                web::post().to(control::revoke_session),
            )
            .route("/sessions", web::get().to(control::sessions))
            .route("/online", web::get().to(control::online))
            // A channel name may hold `/` (`team/support`): the name is all before `/online`.
            .route(
                "/channels/{channel:.+}/online",
                web::get().to(control::channel_online),
            )
            .route("/events", web::get().to(control::stored_events)),
    )
    .route(
        "/api/v1/presence/deliveries",
        web::get().to(presence::global_deliveries),
    );
}

/// What users' clients call, with their tokens.
fn user_api(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1/conversations")
            .route("", web::get().to(conversations::list))
            .route("", web::post().to(conversations::open))
            .route("/{id}", web::get().to(conversations::show))
            .route("/{id}/messages", web::get().to(conversations::messages))
            .route("/{id}/messages", web::post().to(conversations::send))
            .route("/{id}/read", web::post().to(conversations::mark_read)),
    )
    .service(
        web::scope("/api/v1/notifications")
            .route("", web::post().to(notifications::create))
            .route("", web::get().to(notifications::list))
            .route("/unread-count", web::get().to(notifications::unread_count))
            .route("/read-all", web::post().to(notifications::mark_all_read))
            .route("/{id}/read", web::post().to(notifications::mark_read))
            .route("/{id}", web::delete().to(notifications::delete)),
    )
    .route("/api/v1/presence", web::get().to(presence::online))
    .route("/api/v1/events", web::get().to(events::poll));
}

/// What Facebook, Zalo and other systems post.
fn provider_webhooks(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/webhooks/facebook",
        web::get().to(webhooks::facebook_handshake),
    )
    .route(
        "/webhooks/facebook",
        web::post().to(webhooks::facebook_receive),
    )
    .route("/webhooks/zalo", web::post().to(webhooks::zalo_receive))
    .route(
        "/webhooks/generic/{id}",
        web::post().to(webhooks::generic_receive),
    );
}

/// A JSON body that may be left out (then the defaults apply) but, when given, must parse: a
/// typo must not silently mean "the defaults".
pub fn optional_json<T: serde::de::DeserializeOwned + Default>(
    body: &web::Bytes,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    Ok(crate::json::from_slice(body)?)
}

/// A JSON answer from text that is already JSON (our own serialization), sent as it is rather
/// than parsed and written again.
pub fn json_text(mut response: actix_web::HttpResponseBuilder, json: String) -> HttpResponse {
    response.content_type("application/json").body(json)
}

/// `{"<key>":[items…],"<name>":<value>…}` from items already serialized as JSON.
pub fn list_json(key: &str, items: &[String], extra: &[(&str, serde_json::Value)]) -> String {
    let mut body = format!("{{\"{key}\":[{}]", items.join(","));
    for (name, value) in extra {
        body.push_str(&format!(",\"{name}\":{value}"));
    }
    body.push('}');
    body
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// `GET /socket.io/`, served by the Socket.IO adapter.
async fn socket_io_get(
    req: HttpRequest,
    query: web::Query<crate::socket_io::Query>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(crate::socket_io::get(req, query, state.socket_io.clone()).await?)
}

/// `POST /socket.io/`, served by the Socket.IO adapter.
async fn socket_io_post(
    query: web::Query<crate::socket_io::Query>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(crate::socket_io::post(query, payload, state.socket_io.clone()).await?)
}
