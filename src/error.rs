//! The HTTP API's errors: one enum, mapped to a status and one JSON body shape in one place.
//!
//! Every error answers `{"error":{"code":"…","message":"…"}}`. Codes are stable and documented in
//! docs/protocol.md ("Errors and codes"); 5xx bodies stay generic and their cause is logged once, here.

use actix_web::error::{JsonPayloadError, PayloadError, QueryPayloadError};
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::auth::signature::SignatureError;
use crate::auth::throttle::{whole_seconds, Refused};
use crate::auth::TokenError;
use crate::channel::ChannelsError;
use crate::json::JsonError;
use crate::metrics;
use crate::protocol::SinceError;
use crate::publisher::PublishError;
use crate::socket_io::Refusal;
use crate::store::StoreError;
use crate::webhooks::WebhookError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("send the server API key as `Authorization: Bearer <key>`")]
    MissingApiKey,
    #[error("the API key is not valid")]
    InvalidApiKey,
    #[error("this endpoint takes the server API key; a user token cannot use it")]
    UserTokenForbidden,
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    #[error("invalid query string: {0}")]
    InvalidQuery(String),
    #[error("invalid `{field}`: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body did not arrive in time (SWITCHBOARD_BODY_TIMEOUT, SWITCHBOARD_BODY_MIN_RATE); the connection is closed")]
    RequestTimeout,
    #[error("send the body as JSON, with `Content-Type: application/json`")]
    UnsupportedMediaType,
    #[error(
        "send the metrics token as `Authorization: Bearer <token>` (SWITCHBOARD_METRICS_TOKEN)"
    )]
    InvalidMetricsToken,
    #[error("expected a WebSocket upgrade request")]
    NotWebSocket,
    #[error("no such endpoint")]
    NotFound,
    #[error("{}", crate::actors::session::TOKEN_MISMATCH)]
    TokenMismatch,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{}", Refused::TooManyFailures { retry_after: *retry_after })]
    TooManyAuthFailures { retry_after: std::time::Duration },
    /// Over the user's allowance of sends (see [`crate::inbox::SendRate`]).
    #[error("too many messages; slow down and retry after {} ms", retry_after.as_millis().max(1))]
    RateLimited { retry_after: std::time::Duration },
    /// Socket.IO connections that have not connected a session yet: too many from this address
    /// (429), or from all addresses (503).
    #[error("{}", if *server_wide {
        "too many connections are waiting to authenticate on this server; retry shortly"
    } else {
        "too many connections from this address have not connected yet (sent a CONNECT with a valid token); retry shortly"
    })]
    TooManyUnauthenticated {
        server_wide: bool,
        retry_after: std::time::Duration,
    },
    #[error(
        "this page's origin may not open a WebSocket here; add it to SWITCHBOARD_ALLOWED_ORIGINS"
    )]
    OriginNotAllowed,
    #[error("the demo is off: it is served in development mode, or with SWITCHBOARD_DEMO=true")]
    DemoOff,
    #[error("demo tokens are only given out in development mode (a generated JWT secret), to the demo page on this machine")]
    DemoTokensOff,
    #[error(transparent)]
    Signature(SignatureError),
    #[error(transparent)]
    Since(SinceError),
    /// The channels asked for on connecting: a bad name, too many, or one the token does not
    /// allow.
    #[error(transparent)]
    Channels(#[from] ChannelsError),

    /// The events after the resume point are no longer all kept.
    #[error(
        "events after {since} are no longer kept (the oldest is {oldest_seq}); reload the state"
    )]
    ResumeFailed { since: u64, oldest_seq: u64 },
    #[error("no enabled integration matches this webhook")]
    UnknownIntegration,
    #[error("{0}")]
    VerifyToken(&'static str),
    #[error("no such {0}")]
    NoSuch(&'static str),
    #[error("an integration for this provider and external id already exists")]
    IntegrationExists,
    /// A Socket.IO transport request that does not follow Engine.IO 4.
    #[error("{message}")]
    EngineIo {
        code: &'static str,
        message: &'static str,
    },
    #[error(
        "this node is shutting down; connect again (the load balancer sends you to another node)"
    )]
    Draining,
    /// Too much is waiting to be stored (the database is slow): nothing was stored.
    #[error("too many publishes are waiting to be stored; nothing was stored, retry after {} s", OVERLOADED_RETRY_AFTER.as_secs())]
    Overloaded,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// When a publisher refused as overloaded is told to try again.
const OVERLOADED_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl From<PublishError> for ApiError {
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::Overloaded => Self::Overloaded,
            PublishError::Store(e) => Self::Store(e),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::EngineIo { code, message } => Self::EngineIo { code, message },
            Refusal::Draining => Self::Draining,
            Refusal::OriginNotAllowed => Self::OriginNotAllowed,
            Refusal::Auth(refused) => refused.into(),
            Refusal::TooManyUnauthenticated {
                server_wide,
                retry_after,
            } => Self::TooManyUnauthenticated {
                server_wide,
                retry_after,
            },
            Refusal::NotWebSocket => Self::NotWebSocket,
            Refusal::InvalidBody(reason) => Self::InvalidBody(reason),
            Refusal::PayloadTooLarge { limit } => Self::PayloadTooLarge { limit },
        }
    }
}

impl From<WebhookError> for ApiError {
    fn from(error: WebhookError) -> Self {
        match error {
            WebhookError::InvalidField { field, reason } => Self::InvalidField { field, reason },
            WebhookError::InvalidBody(reason) => Self::InvalidBody(reason),
            WebhookError::PayloadTooLarge { limit } => Self::PayloadTooLarge { limit },
            WebhookError::Signature(e) => Self::Signature(e),
            WebhookError::VerifyToken(reason) => Self::VerifyToken(reason),
            WebhookError::UnknownIntegration => Self::UnknownIntegration,
            WebhookError::Store(e) => Self::Store(e),
            WebhookError::Internal(reason) => Self::Internal(reason),
        }
    }
}

/// A validation result as the API's `invalid-field` error, naming the field.
pub fn field<T>(field: &'static str, result: Result<T, impl ToString>) -> Result<T, ApiError> {
    result.map_err(|e| ApiError::InvalidField {
        field,
        reason: e.to_string(),
    })
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Token(e) => e.code(),
            Self::MissingApiKey => "missing-api-key",
            Self::InvalidApiKey => "invalid-api-key",
            Self::UserTokenForbidden => "user-token-forbidden",
            Self::InvalidBody(_) => "invalid-body",
            Self::InvalidField { .. } => "invalid-field",
            Self::InvalidQuery(_) => "invalid-query",
            Self::PayloadTooLarge { .. } => "payload-too-large",
            Self::RequestTimeout => "request-timeout",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::InvalidMetricsToken => "invalid-metrics-token",
            Self::NotWebSocket => "not-websocket",
            Self::NotFound => "not-found",
            Self::TokenMismatch => "token-mismatch",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::DemoOff => "demo-off",
            Self::OriginNotAllowed => "origin-not-allowed",
            Self::TooManyAuthFailures { .. } => "too-many-auth-failures",
            Self::RateLimited { .. } => "rate-limited",
            Self::TooManyUnauthenticated { .. } => "too-many-unauthenticated",
            Self::DemoTokensOff => "demo-tokens-off",
            Self::Signature(e) => e.code(),
            Self::Since(e) => e.code(),
            Self::Channels(e) => e.code(),
            Self::ResumeFailed { .. } => "resume-failed",
            Self::UnknownIntegration => "unknown-integration",
            Self::VerifyToken(_) => "verify-token-mismatch",
            Self::NoSuch(_) => "not-found",
            Self::IntegrationExists => "integration-exists",
            Self::Store(e) if e.is_unavailable() => "unavailable",
            Self::Draining => "draining",
            Self::Overloaded => "overloaded",
            Self::EngineIo { code, .. } => code,
            Self::Store(_) | Self::Internal(_) => "internal-error",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Token(_)
            | Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::Signature(_)
            | Self::InvalidMetricsToken => StatusCode::UNAUTHORIZED,
            Self::UserTokenForbidden | Self::VerifyToken(_) | Self::TokenMismatch => {
                StatusCode::FORBIDDEN
            }
            Self::Channels(ChannelsError::Forbidden(_)) => StatusCode::FORBIDDEN,
            Self::Channels(_) => StatusCode::BAD_REQUEST,
            Self::InvalidBody(_)
            | Self::InvalidField { .. }
            | Self::InvalidQuery(_)
            | Self::Since(_)
            | Self::NotWebSocket
            | Self::EngineIo { .. } => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound | Self::UnknownIntegration | Self::NoSuch(_) => StatusCode::NOT_FOUND,
            Self::IntegrationExists => StatusCode::CONFLICT,
            Self::ResumeFailed { .. } => StatusCode::GONE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::DemoOff => StatusCode::NOT_FOUND,
            Self::DemoTokensOff | Self::OriginNotAllowed => StatusCode::FORBIDDEN,
            Self::TooManyAuthFailures { .. } | Self::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::TooManyUnauthenticated { server_wide, .. } => match server_wide {
                false => StatusCode::TOO_MANY_REQUESTS,
                true => StatusCode::SERVICE_UNAVAILABLE,
            },
            Self::Store(e) if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Draining | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        match self {
            Self::Token(_)
            | Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::UserTokenForbidden
            | Self::InvalidMetricsToken
            | Self::TooManyAuthFailures { .. } => metrics::auth_failure(self.code()),
            Self::Store(_) => metrics::database_error(),
            _ => {}
        }
        let message = match self {
            // A fault's cause is for the log; the client gets a generic message.
            Self::Store(_) | Self::Internal(_) => {
                log::error!("request failed: {self}");
                match self {
                    Self::Store(e) if e.is_unavailable() => {
                        "the database is unavailable; try again shortly"
                    }
                    _ => "internal error",
                }
                .to_owned()
            }
            _ => self.to_string(),
        };
        let mut response = HttpResponse::build(status);
        if let Self::Token(_) = self {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\""));
        }
        let retry_after = match self {
            Self::TooManyAuthFailures { retry_after }
            | Self::RateLimited { retry_after }
            | Self::TooManyUnauthenticated { retry_after, .. } => Some(*retry_after),
            Self::Overloaded => Some(OVERLOADED_RETRY_AFTER),
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            response.insert_header((header::RETRY_AFTER, whole_seconds(retry_after)));
        }
        let mut error = json!({ "code": self.code(), "message": message });
        if let Self::ResumeFailed { oldest_seq, .. } = self {
            error["oldest_seq"] = json!(oldest_seq);
        }
        response.json(json!({ "error": error }))
    }
}

impl From<JsonError> for ApiError {
    fn from(error: JsonError) -> Self {
        Self::InvalidBody(error.to_string())
    }
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::TooManyFailures { retry_after } => Self::TooManyAuthFailures { retry_after },
            Refused::Token(e) => Self::Token(e),
        }
    }
}

/// actix's extractor errors, in words for the client: their own texts name the library ("Json
/// deserialize error: …") or carry `Debug` output (`Some(Custom { kind: … })`).
impl From<JsonPayloadError> for ApiError {
    fn from(error: JsonPayloadError) -> Self {
        match error {
            JsonPayloadError::Overflow { limit }
            | JsonPayloadError::OverflowKnownLength { limit, .. } => {
                Self::PayloadTooLarge { limit }
            }
            JsonPayloadError::Deserialize(e) => Self::InvalidBody(e.to_string()),
            JsonPayloadError::ContentType => Self::UnsupportedMediaType,
            JsonPayloadError::Payload(e) => Self::InvalidBody(unreadable_body(&e)),
            _ => Self::InvalidBody("the body is not the JSON expected".into()),
        }
    }
}

impl From<QueryPayloadError> for ApiError {
    fn from(error: QueryPayloadError) -> Self {
        match error {
            QueryPayloadError::Deserialize(e) => Self::InvalidQuery(e.to_string()),
            _ => Self::InvalidQuery("the query string is malformed".into()),
        }
    }
}

/// Why a request body could not be read, for the client.
pub fn unreadable_body(error: &PayloadError) -> String {
    match error {
        PayloadError::Incomplete(None) => "the body ended before its declared length".into(),
        // The only I/O error under a payload is the decompression of its Content-Encoding.
        PayloadError::Incomplete(Some(e)) => {
            format!("the body is not in its Content-Encoding: {e}")
        }
        PayloadError::EncodingCorrupted => "the body's transfer encoding is malformed".into(),
        PayloadError::Overflow => "the body is larger than allowed".into(),
        PayloadError::UnknownLength => "the body's length is unknown".into(),
        PayloadError::Io(e) => e.to_string(),
        _ => "the body could not be read".into(),
    }
}
