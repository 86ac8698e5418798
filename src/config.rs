//! Configuration: every setting, read once from flags or environment variables and validated into
//! a typed [`Config`]. Nothing else in the crate reads the environment.
//!
//! When neither the JWT key nor the API key is configured (or `SWITCHBOARD_DEV_MODE=true`),
//! [`Config::load`] enters development mode: the missing keys are generated at random once and
//! kept in a file beside the database (see [`dev_keys`]). One configured without the other is
//! refused unless development is asked for.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;

/// The settings as given on the command line or in the environment, before validation.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "SWITCHBOARD_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,

    /// `postgres://…` for PostgreSQL; anything else is a SQLite file (created on first start).
    #[arg(long, env = "DATABASE_URL", default_value = "switchboard.db")]
    pub database_url: String,

    /// Connections in the database pool.
    #[arg(long, env = "SWITCHBOARD_DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: u32,

    /// Where development mode keeps its generated keys [default: beside the SQLite file, or the
    /// working directory for PostgreSQL].
    #[arg(long, env = "SWITCHBOARD_DEV_KEYS_FILE")]
    pub dev_keys_file: Option<PathBuf>,

    /// Shared secret for HS256 tokens (at least 32 bytes). Prefer the environment variable.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key for RS256 or ES256 tokens, instead of a shared secret.
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// HS256, RS256 or ES256 [default: HS256 with a secret, else inferred from the PEM key].
    #[arg(long, env = "SWITCHBOARD_JWT_ALGORITHM")]
    pub jwt_algorithm: Option<String>,

    /// When set, tokens must carry this `iss`.
    #[arg(long, env = "SWITCHBOARD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// When set, tokens must carry this `aud`.
    #[arg(long, env = "SWITCHBOARD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew tolerated on `exp` and `nbf`.
    #[arg(long, env = "SWITCHBOARD_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// Server API key for the publish API (at least 16 bytes); several, comma-separated, are all
    /// accepted (rotation: "new,old"), the first being the one this binary's tools use. Prefer
    /// the environment variable.
    #[arg(long, env = "SWITCHBOARD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// How often the server pings each WebSocket.
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// A connection silent for this long (no pong, no frame) is closed.
    #[arg(long, env = "SWITCHBOARD_CLIENT_TIMEOUT", default_value = "45s", value_parser = humantime::parse_duration)]
    pub client_timeout: Duration,

    /// Largest WebSocket message accepted from a client, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Largest publish API request body, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_PUBLISH_BYTES", default_value_t = 256 * 1024)]
    pub max_publish_bytes: usize,

    /// HTTP worker threads [default: one per core].
    #[arg(long, env = "SWITCHBOARD_WORKERS")]
    pub workers: Option<usize>,

    /// How the server's threads are scheduled on Linux: `batch` (a thread that wakes does not
    /// preempt the one running, so the server's threads take work from one another in batches)
    /// or `normal` (left as started, normally the system's default); docs/performance.md.
    #[arg(
        long,
        env = "SWITCHBOARD_SCHEDULING",
        value_enum,
        default_value = "batch"
    )]
    pub scheduling: Scheduling,

    /// Frames a WebSocket client may send per second, twice as many in a burst; past that they
    /// are dropped, and a client that keeps at it is disconnected.
    #[arg(long, env = "SWITCHBOARD_FRAMES_PER_SECOND", default_value = "20")]
    pub frames_per_second: std::num::NonZeroU32,

    /// Messages a user may send per second, twice as many in a burst: over all their sessions
    /// and the REST API together, on each node. Past it, sends are refused (`rate-limited`).
    #[arg(long, env = "SWITCHBOARD_SENDS_PER_SECOND", default_value = "10")]
    pub sends_per_second: std::num::NonZeroU32,

    /// Failed authentications (bad tokens or API keys) per client address per minute; past it,
    /// 429 until the allowance refills.
    #[arg(
        long,
        env = "SWITCHBOARD_AUTH_FAILURES_PER_MINUTE",
        default_value = "30"
    )]
    pub auth_failures_per_minute: std::num::NonZeroU32,

    /// A Socket.IO connection that has not connected a session (a CONNECT with a token that
    /// verifies) within this time is closed.
    #[arg(long, env = "SWITCHBOARD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Socket.IO connections one client address may have open that have not connected a
    /// session yet; past it, 429 `too-many-unauthenticated`.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS",
        default_value_t = 64
    )]
    pub max_unauthenticated_per_address: usize,

    /// Socket.IO connections the server holds, from all addresses, that have not connected a
    /// session yet; past it, 503 `too-many-unauthenticated`.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_UNAUTHENTICATED",
        default_value_t = 10_000
    )]
    pub max_unauthenticated: usize,

    /// Sessions (tabs) one user may have open at once; the next is refused (close 4004).
    #[arg(long, env = "SWITCHBOARD_MAX_SESSIONS_PER_USER", default_value = "50")]
    pub max_sessions_per_user: usize,

    /// How long a publish's Idempotency-Key is remembered.
    #[arg(long, env = "SWITCHBOARD_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_window: Duration,

    /// How long before a live session's token expires the client is asked for a fresh one.
    #[arg(long, env = "SWITCHBOARD_TOKEN_REFRESH_LEAD", default_value = "60s", value_parser = humantime::parse_duration)]
    pub token_refresh_lead: Duration,

    /// Origins whose pages may open WebSockets, comma-separated (`https://app.example.com`), or
    /// `*` for any [default: any in development mode; otherwise only pages served from the
    /// server's own host].
    #[arg(long, env = "SWITCHBOARD_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,

    /// Serve the demo inbox at /demo [default: on in development mode, off otherwise].
    #[arg(long, env = "SWITCHBOARD_DEMO")]
    pub demo: Option<bool>,

    /// The token Facebook's subscription handshake must present. Prefer the environment variable.
    #[arg(
        long,
        env = "SWITCHBOARD_FACEBOOK_VERIFY_TOKEN",
        hide_env_values = true
    )]
    pub facebook_verify_token: Option<String>,

    /// Largest webhook body accepted, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_WEBHOOK_BYTES", default_value_t = 1024 * 1024)]
    pub max_webhook_bytes: usize,

    /// How far a generic webhook's timestamp may be from now (replay window).
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_TOLERANCE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub webhook_tolerance: Duration,

    /// Attempts to deliver an outbound webhook before it is marked failed.
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_MAX_ATTEMPTS", default_value_t = 8)]
    pub outbound_max_attempts: u32,

    /// Wait before the first retry of an outbound webhook; doubled after each failure.
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_RETRY_BASE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub outbound_retry_base: Duration,

    /// How long a user stays online after their last session closed (a reload does not flap).
    #[arg(long, env = "SWITCHBOARD_PRESENCE_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub presence_grace: Duration,

    /// Rooms with more sessions than this do not broadcast `user-online`/`user-offline` (each
    /// arrival would go to every session: O(users²) when a whole account connects); presence is
    /// still answered by `GET /api/v1/presence` and the `presence` frame.
    #[arg(
        long,
        env = "SWITCHBOARD_PRESENCE_BROADCAST_MAX",
        default_value_t = 1000
    )]
    pub presence_broadcast_max: usize,

    /// Events older than this are deleted (resume and long-poll reach back this far at most).
    #[arg(long, env = "SWITCHBOARD_RETENTION_MAX_AGE", default_value = "7days", value_parser = humantime::parse_duration)]
    pub retention_max_age: Duration,

    /// Events kept per account, newest first.
    #[arg(
        long,
        env = "SWITCHBOARD_RETENTION_MAX_EVENTS",
        default_value_t = 100_000
    )]
    pub retention_max_events: u64,

    /// How often old events are deleted.
    #[arg(long, env = "SWITCHBOARD_RETENTION_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub retention_interval: Duration,

    /// Bytes queued for a WebSocket client and not yet taken by the socket writer; past it the
    /// session is closed (code 4001) and the client resumes from its last sequence number.
    #[arg(long, env = "SWITCHBOARD_MAX_QUEUED_BYTES", default_value_t = 1024 * 1024)]
    pub max_queued_bytes: usize,

    /// Longest wait a long-poll may ask for.
    #[arg(long, env = "SWITCHBOARD_LONG_POLL_MAX", default_value = "60s", value_parser = humantime::parse_duration)]
    pub long_poll_max: Duration,

    /// Time limit of one outbound webhook request.
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub outbound_timeout: Duration,

    /// How long a node holds an outbound delivery it is attempting; another node takes over one
    /// whose holder died once this runs out. At least the timeout plus 1 s.
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub outbound_lease: Duration,

    /// How often every node looks for due outbound deliveries that no node holds (retries, a
    /// dead node's deliveries, those pending at start-up).
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_SCAN_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub outbound_scan_interval: Duration,

    /// Let outbound webhooks reach loopback and private networks (an application backend on
    /// premises); link-local and cloud metadata addresses stay refused.
    #[arg(
        long,
        env = "SWITCHBOARD_OUTBOUND_ALLOW_PRIVATE",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub outbound_allow_private: bool,

    /// Cluster mode: nodes share events, presence and typing through this Redis
    /// (`redis://[[user]:password@]host:port[/db]`, or `rediss://…` for TLS). Unset: a single
    /// node, no Redis used.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Cluster mode: the secret every node signs its messages on the Redis channel with (at
    /// least 32 bytes, the same on every node); required with `REDIS_URL`. Prefer the
    /// environment variable.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// PEM file of the certificate authority that signed Redis's TLS certificate (`rediss://`)
    /// [default: the system's trusted roots].
    #[arg(long, env = "SWITCHBOARD_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Cluster mode: a room that has had no event for this long reads the account's latest
    /// sequence number, and catches up if it is behind (an event whose relay was lost).
    #[arg(long, env = "SWITCHBOARD_CLUSTER_CHECK_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub cluster_check_interval: Duration,

    /// Publishes waiting to be stored; past it, a publish is refused with 503 `overloaded`.
    #[arg(long, env = "SWITCHBOARD_MAX_QUEUED_PUBLISHES", default_value_t = 4096)]
    pub max_queued_publishes: usize,

    /// Bytes of event data waiting to be stored; past it, a publish is refused with 503
    /// `overloaded`.
    #[arg(long, env = "SWITCHBOARD_MAX_QUEUED_PUBLISH_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_queued_publish_bytes: usize,

    /// On SIGTERM, sessions are closed in batches spread over this period.
    #[arg(long, env = "SWITCHBOARD_DRAIN_PERIOD", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_period: Duration,

    /// Longest a request body may take to arrive whole; past it the request is answered 408 and
    /// its connection closed.
    #[arg(long, env = "SWITCHBOARD_BODY_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,

    /// Bytes per second a request body must average once its first 5 s are over (0: no
    /// minimum); a slower one is answered 408 and its connection closed.
    #[arg(long, env = "SWITCHBOARD_BODY_MIN_RATE", default_value_t = 1024)]
    pub body_min_rate: u32,

    /// Open connections from one client address (an IPv6 /64), WebSockets included; past it a
    /// new one is closed at once (0: no cap). Behind a reverse proxy, every client has the
    /// proxy's address.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 1024
    )]
    pub max_connections_per_address: usize,

    /// Connections accepted whose first request has not arrived whole yet; past it a new one is
    /// closed at once (0: no cap).
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_PENDING_CONNECTIONS",
        default_value_t = 4096
    )]
    pub max_pending_connections: usize,

    /// When set, `GET /metrics` answers only with `Authorization: Bearer <this>` (at least 16
    /// bytes). Prefer the environment variable.
    #[arg(long, env = "SWITCHBOARD_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Where every account's `user.online` / `user.offline` webhooks go, unless the account has a
    /// presence integration of its own (docs/webhooks.md, "Presence webhooks").
    #[arg(long, env = "SWITCHBOARD_PRESENCE_WEBHOOK_URL")]
    pub presence_webhook_url: Option<String>,

    /// The Standard Webhooks secret (`whsec_…`) that signs the global presence webhooks;
    /// required with `SWITCHBOARD_PRESENCE_WEBHOOK_URL`. Prefer the environment variable.
    #[arg(
        long,
        env = "SWITCHBOARD_PRESENCE_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub presence_webhook_secret: Option<String>,

    /// Consume the PostgreSQL outbox (docs/outbox.md): in `SWITCHBOARD_OUTBOX_URL`'s database, or
    /// Switchboard's own when that is unset [default: on when `SWITCHBOARD_OUTBOX_URL` is set].
    #[arg(long, env = "SWITCHBOARD_OUTBOX")]
    pub outbox: Option<bool>,

    /// The application's PostgreSQL database holding the outbox table [default:
    /// `DATABASE_URL`, which must then be PostgreSQL].
    #[arg(long, env = "SWITCHBOARD_OUTBOX_URL", hide_env_values = true)]
    pub outbox_url: Option<String>,

    /// The outbox table (an unquoted SQL identifier); refused rows go to `<table>_refused`.
    #[arg(
        long,
        env = "SWITCHBOARD_OUTBOX_TABLE",
        default_value = "switchboard_outbox"
    )]
    pub outbox_table: String,

    /// How often the outbox is read when no notification has come (a lost `NOTIFY`, a listener
    /// reconnecting).
    #[arg(long, env = "SWITCHBOARD_OUTBOX_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub outbox_poll_interval: Duration,

    /// Most outbox rows one claim takes.
    #[arg(long, env = "SWITCHBOARD_OUTBOX_BATCH", default_value_t = 1000)]
    pub outbox_batch: usize,

    /// `true`: generate whichever of the JWT secret and the API key is not configured, for
    /// development; `false`: never generate one [default: only when neither is configured].
    #[arg(long, env = "SWITCHBOARD_DEV_MODE")]
    pub dev_mode: Option<bool>,
}

/// A setting that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("development keys file {path}: {reason}")]
    DevKeys { path: PathBuf, reason: String },
    #[error(
        "{missing} is not configured, but the other key is: configure it too, or set \
         SWITCHBOARD_DEV_MODE=true to have it generated for development (development mode also \
         lets pages from any origin open WebSockets and serves the demo)"
    )]
    HalfConfigured { missing: &'static str },
    #[error("SWITCHBOARD_DEV_MODE is false, so {missing} must be configured")]
    DevModeOff { missing: &'static str },
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

/// A secret value; its `Debug` never shows it, so it cannot leak through a log or a panic.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this secret, in time that depends on neither: the SHA-256 digests of
    /// both are compared, so not even a difference in length returns early.
    pub fn matches(&self, given: &str) -> bool {
        use sha2::{Digest, Sha256};
        constant_time_eq::constant_time_eq_32(
            &Sha256::digest(given).into(),
            &Sha256::digest(&self.0).into(),
        )
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Which database, chosen at run time by the URL's scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Database {
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.is_empty() || path.starts_with(':') {
            // `:memory:` would give every pooled connection its own empty database.
            return Err(invalid(
                "DATABASE_URL",
                "expected postgres://… or a SQLite file path",
            ));
        }
        Ok(Self::Sqlite(PathBuf::from(path)))
    }

    /// For logs: the backend and where it is, without a password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite {}", path.display()),
            Self::Postgres(url) => format!("postgres {}", redact_url_password(url)),
        }
    }
}

fn redact_url_password(url: &str) -> String {
    // postgres://user:password@host/db → postgres://user:[redacted]@host/db
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:[redacted]@{host}"),
        None => url.to_owned(),
    }
}

/// The key tokens are verified with.
#[derive(Clone)]
pub enum JwtKey {
    /// HS256 with a shared secret (also used to mint development tokens).
    Secret(Secret),
    /// RS256 or ES256 with a PEM public key; Switchboard cannot mint these.
    PublicKey { algorithm: Algorithm, pem: Vec<u8> },
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("JwtKey::Secret([redacted])"),
            Self::PublicKey { algorithm, .. } => write!(f, "JwtKey::PublicKey({algorithm:?})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub key: JwtKey,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
}

/// Heartbeat settings, shared by every session.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    pub interval: Duration,
    pub timeout: Duration,
}

/// Inbound webhooks.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub facebook_verify_token: Option<Secret>,
    pub max_body_bytes: usize,
    /// Replay window of generic (Standard Webhooks) timestamps.
    pub tolerance: Duration,
}

/// The receiver of every account's presence webhooks that has none of its own.
#[derive(Debug, Clone)]
pub struct PresenceWebhook {
    /// Checked against the outbound address policy at each attempt, as an `outbound_url` is.
    pub url: String,
    pub secret: Secret,
}

/// Outbound webhooks (replies handed to the application).
#[derive(Debug, Clone, Copy)]
pub struct OutboundConfig {
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub timeout: Duration,
    /// How long a node holds a delivery it attempts; longer than `timeout`, so that an attempt
    /// ends (and is recorded) before another node may take the delivery over.
    pub lease: Duration,
    /// How often the node looks for due deliveries that no node holds.
    pub scan_interval: Duration,
    /// Loopback and private networks may be reached (never link-local or metadata addresses).
    pub allow_private: bool,
}

/// What a client may hold at the HTTP edge before it has proved anything (README, "Limits").
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    /// Longest a request body may take to arrive whole.
    pub body_timeout: Duration,
    /// Bytes per second a body must average after its grace (see the `http::body` module); 0:
    /// no minimum.
    pub body_min_rate: u32,
    /// Open connections from one address (an IPv6 /64); 0: no cap.
    pub max_connections_per_address: usize,
    /// Connections accepted whose first request has not arrived whole; 0: no cap.
    pub max_pending_connections: usize,
}

/// Presence settings.
#[derive(Debug, Clone, Copy)]
pub struct Presence {
    /// How long a user stays online after their last session closed.
    pub grace: Duration,
    /// Rooms above this many sessions announce no presence changes.
    pub broadcast_max: usize,
}

/// How long events (and publish idempotency keys) are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_events: u64,
    pub interval: Duration,
    pub idempotency_window: Duration,
}

/// Cluster mode (see the `cluster` module).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Its URL may carry a password.
    pub redis_url: Secret,
    /// PEM roots that Redis's TLS certificate is checked against, instead of the system's.
    pub redis_ca: Option<Vec<u8>>,
    /// What the key that signs node-to-node messages is derived from.
    pub secret: Secret,
    /// How long a room may go without an event before it checks the account's head.
    pub check_interval: Duration,
}

impl ClusterConfig {
    /// A client for the configured Redis (not yet connected).
    pub fn redis_client(&self) -> redis::RedisResult<redis::Client> {
        // rustls must have its cryptography chosen before the first TLS connection
        // (`rediss://`); it may have been chosen already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        match &self.redis_ca {
            None => redis::Client::open(self.redis_url.expose()),
            Some(pem) => redis::Client::build_with_tls(
                self.redis_url.expose(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
        }
    }
}

/// How much the publish API may queue for the group-commit writer.
#[derive(Debug, Clone, Copy)]
pub struct PublishQueue {
    pub max_publishes: usize,
    pub max_bytes: usize,
}

/// The PostgreSQL outbox consumer's settings.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// The database holding the table: the application's, or Switchboard's own.
    pub url: Secret,
    pub table: TableName,
    pub poll_interval: Duration,
    pub batch: usize,
}

/// A table name that is safe to put into SQL unquoted: lower-case letters, digits and `_`,
/// starting with a letter or `_`, short enough that `<name>_refused` is a PostgreSQL identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName(String);

/// PostgreSQL's identifier limit (63 bytes) less `_refused`.
const MAX_TABLE_NAME: usize = 63 - "_refused".len();

impl TableName {
    pub fn parse(name: &str) -> Result<Self, ConfigError> {
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if first_ok && rest_ok && name.len() <= MAX_TABLE_NAME {
            Ok(Self(name.to_owned()))
        } else {
            Err(invalid(
                "SWITCHBOARD_OUTBOX_TABLE",
                format!(
                    "must be 1 to {MAX_TABLE_NAME} lower-case letters, digits or '_', not \
                     starting with a digit"
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn outbox_config(
    settings: &Settings,
    database: &Database,
) -> Result<Option<OutboxConfig>, ConfigError> {
    if !settings.outbox.unwrap_or(settings.outbox_url.is_some()) {
        return Ok(None);
    }
    let url = match (&settings.outbox_url, database) {
        (Some(url), _) => url.clone(),
        (None, Database::Postgres(url)) => url.clone(),
        (None, Database::Sqlite(_)) => {
            return Err(invalid(
                "SWITCHBOARD_OUTBOX_URL",
                "the outbox is in PostgreSQL: set it, or use PostgreSQL as DATABASE_URL",
            ))
        }
    };
    if !matches!(Database::parse(&url), Ok(Database::Postgres(_))) {
        return Err(invalid(
            "SWITCHBOARD_OUTBOX_URL",
            "expected postgres://… (the outbox is a PostgreSQL table)",
        ));
    }
    if settings.outbox_poll_interval.is_zero() {
        return Err(invalid(
            "SWITCHBOARD_OUTBOX_POLL_INTERVAL",
            "must be positive",
        ));
    }
    if settings.outbox_batch == 0 {
        return Err(invalid("SWITCHBOARD_OUTBOX_BATCH", "must be at least 1"));
    }
    Ok(Some(OutboxConfig {
        url: Secret::new(url),
        table: TableName::parse(&settings.outbox_table)?,
        poll_interval: settings.outbox_poll_interval,
        batch: settings.outbox_batch,
    }))
}

/// Socket.IO connections that have not connected a session yet: nobody knows who holds them,
/// so how many there are and how long they last is bounded.
#[derive(Debug, Clone, Copy)]
pub struct Handshakes {
    /// Closed when no session was connected by then.
    pub timeout: Duration,
    /// Open at once from one client address.
    pub max_per_address: usize,
    /// Open at once from all addresses.
    pub max: usize,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub database: Database,
    pub db_pool_size: u32,
    pub jwt: JwtConfig,
    pub api_key: Secret,
    /// Also accepted, while clients move to `api_key`.
    pub previous_api_keys: Vec<Secret>,
    pub heartbeat: Heartbeat,
    pub max_frame_bytes: usize,
    pub max_publish_bytes: usize,
    pub workers: Option<usize>,
    pub scheduling: Scheduling,
    pub webhooks: WebhookConfig,
    pub outbound: OutboundConfig,
    /// Cluster mode: set when `REDIS_URL` is.
    pub cluster: Option<ClusterConfig>,
    /// The PostgreSQL outbox consumer: set when it is turned on.
    pub outbox: Option<OutboxConfig>,
    pub publish_queue: PublishQueue,
    pub drain_period: Duration,
    pub presence: Presence,
    pub retention: Retention,
    pub max_queued_bytes: usize,
    pub long_poll_max: Duration,
    pub token_refresh_lead: Duration,
    pub frames_per_second: std::num::NonZeroU32,
    pub sends_per_second: std::num::NonZeroU32,
    pub max_sessions_per_user: usize,
    pub auth_failures_per_minute: std::num::NonZeroU32,
    pub handshakes: Handshakes,
    pub allowed_origins: Origins,
    pub edge: EdgeLimits,
    /// When set, `/metrics` needs it as a bearer token.
    pub metrics_token: Option<Secret>,
    /// The global receiver of presence webhooks, if any.
    pub presence_webhook: Option<PresenceWebhook>,
    /// Set when some keys were generated for development rather than configured.
    pub dev_mode: Option<DevMode>,
    pub demo: Demo,
}

/// Which pages may open a WebSocket: a browser sends its page's origin with every handshake and
/// the user's cookies along, so a page on another site must not be able to open one as the user
/// (cross-site WebSocket hijacking). Clients that send no `Origin` (servers, apps) are not
/// browsers and are not affected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    Any,
    /// These origins, and pages from the server's own host.
    Listed(Vec<String>),
}

impl Origins {
    fn parse(value: &str) -> Result<Self, ConfigError> {
        if value.trim() == "*" {
            return Ok(Self::Any);
        }
        let origins: Vec<String> = value
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        if let Some(bad) = origins
            .iter()
            .find(|o| !(o.starts_with("http://") || o.starts_with("https://")))
        {
            return Err(ConfigError::Invalid {
                setting: "SWITCHBOARD_ALLOWED_ORIGINS",
                reason: format!("{bad:?} is not an origin such as https://app.example.com"),
            });
        }
        Ok(Self::Listed(origins))
    }

    /// Whether a handshake with `origin` (the `Origin` header) to `host` (the `Host` header) may
    /// go on.
    pub fn allow(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        match self {
            Self::Any => true,
            Self::Listed(origins) => {
                let same_host = origin.split_once("://").is_some_and(|(_, authority)| {
                    host.is_some_and(|h| h.eq_ignore_ascii_case(authority))
                });
                same_host || origins.contains(&origin)
            }
        }
    }
}

/// The CPU scheduling policy of the server's threads (see the `scheduling` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheduling {
    /// Linux's `SCHED_BATCH`.
    Batch,
    /// Left as the server was started (normally the system's default).
    Normal,
}

/// The demo inbox at `/demo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demo {
    Off,
    /// The page, with tokens pasted in by hand.
    Page,
    /// The page, and tokens for any demo user from `POST /demo/token`: only when the JWT secret
    /// itself was generated for development, so no real user can be impersonated with it.
    WithTokens,
}

/// What development mode generated, so start-up can say so loudly.
#[derive(Debug, Clone)]
pub struct DevMode {
    pub keys_file: PathBuf,
    pub generated_jwt_secret: bool,
    pub generated_api_key: bool,
}

const MIN_JWT_SECRET_BYTES: usize = 32;
/// How much longer than one outbound request a lease must last at least: the attempt's outcome
/// is recorded after the request, within the lease.
const OUTBOUND_LEASE_MARGIN: Duration = Duration::from_secs(1);
const MIN_API_KEY_BYTES: usize = 16;

impl Config {
    /// Validates the settings; generates or reads development keys for those not configured.
    pub fn load(settings: Settings) -> Result<Self, ConfigError> {
        let bind = settings
            .bind
            .parse()
            .map_err(|e| invalid("SWITCHBOARD_BIND", format!("{e} (expected host:port)")))?;
        let database = Database::parse(&settings.database_url)?;
        if settings.db_pool_size == 0 {
            return Err(invalid("SWITCHBOARD_DB_POOL_SIZE", "must be at least 1"));
        }
        let heartbeat = heartbeat(&settings)?;
        check_limits(&settings)?;
        let edge = EdgeLimits {
            body_timeout: settings.body_timeout,
            body_min_rate: settings.body_min_rate,
            max_connections_per_address: settings.max_connections_per_address,
            max_pending_connections: settings.max_pending_connections,
        };
        let metrics_token = metrics_token(&settings)?;
        let presence_webhook = presence_webhook(&settings)?;
        let webhooks = WebhookConfig {
            facebook_verify_token: settings.facebook_verify_token.clone().map(Secret::new),
            max_body_bytes: settings.max_webhook_bytes,
            tolerance: settings.webhook_tolerance,
        };
        let outbound = outbound(&settings)?;

        let (jwt_key, api_key, previous_api_keys, dev_mode) = keys(&settings, &database)?;

        let cluster = cluster_config(&settings)?;
        let outbox = outbox_config(&settings, &database)?;
        Ok(Self {
            cluster,
            outbox,
            bind,
            database,
            db_pool_size: settings.db_pool_size,
            jwt: JwtConfig {
                key: jwt_key,
                issuer: settings.jwt_issuer,
                audience: settings.jwt_audience,
                leeway: settings.jwt_leeway,
            },
            api_key,
            previous_api_keys,
            heartbeat,
            max_frame_bytes: settings.max_frame_bytes,
            max_publish_bytes: settings.max_publish_bytes,
            workers: settings.workers,
            scheduling: settings.scheduling,
            webhooks,
            outbound,
            publish_queue: PublishQueue {
                max_publishes: settings.max_queued_publishes,
                max_bytes: settings.max_queued_publish_bytes,
            },
            drain_period: settings.drain_period,
            presence: Presence {
                grace: settings.presence_grace,
                broadcast_max: settings.presence_broadcast_max,
            },
            retention: Retention {
                max_age: settings.retention_max_age,
                max_events: settings.retention_max_events,
                interval: settings.retention_interval,
                idempotency_window: settings.idempotency_window,
            },
            max_queued_bytes: settings.max_queued_bytes,
            long_poll_max: settings.long_poll_max,
            token_refresh_lead: settings.token_refresh_lead,
            frames_per_second: settings.frames_per_second,
            sends_per_second: settings.sends_per_second,
            max_sessions_per_user: settings.max_sessions_per_user,
            auth_failures_per_minute: settings.auth_failures_per_minute,
            handshakes: Handshakes {
                timeout: settings.handshake_timeout,
                max_per_address: settings.max_unauthenticated_per_address,
                max: settings.max_unauthenticated,
            },
            allowed_origins: allowed_origins(settings.allowed_origins.as_deref(), &dev_mode)?,
            edge,
            metrics_token,
            presence_webhook,
            demo: demo(settings.demo, &dev_mode),
            dev_mode,
        })
    }
}

/// Which pages may open a WebSocket: as set, else any in development mode, else the server's
/// own host only.
fn allowed_origins(
    value: Option<&str>,
    dev_mode: &Option<DevMode>,
) -> Result<Origins, ConfigError> {
    Ok(match value {
        Some(value) => Origins::parse(value)?,
        None if dev_mode.is_some() => Origins::Any,
        None => Origins::Listed(Vec::new()),
    })
}

/// The demo: as set, else on in development mode; with tokens only when the JWT secret was
/// generated (no application's tokens can be minted then).
fn demo(setting: Option<bool>, dev_mode: &Option<DevMode>) -> Demo {
    match setting.unwrap_or(dev_mode.is_some()) {
        false => Demo::Off,
        true if dev_mode.as_ref().is_some_and(|d| d.generated_jwt_secret) => Demo::WithTokens,
        true => Demo::Page,
    }
}

/// The heartbeat: a positive interval, and a client timeout longer than it.
fn heartbeat(settings: &Settings) -> Result<Heartbeat, ConfigError> {
    let heartbeat = Heartbeat {
        interval: settings.heartbeat_interval,
        timeout: settings.client_timeout,
    };
    if heartbeat.interval.is_zero() {
        return Err(invalid(
            "SWITCHBOARD_HEARTBEAT_INTERVAL",
            "must be positive",
        ));
    }
    if heartbeat.timeout <= heartbeat.interval {
        return Err(invalid(
            "SWITCHBOARD_CLIENT_TIMEOUT",
            "must be longer than the heartbeat interval",
        ));
    }
    Ok(heartbeat)
}

/// The `/metrics` bearer token, if set: as long as an API key at least.
fn metrics_token(settings: &Settings) -> Result<Option<Secret>, ConfigError> {
    match settings.metrics_token.clone() {
        Some(token) if token.len() < MIN_API_KEY_BYTES => Err(invalid(
            "SWITCHBOARD_METRICS_TOKEN",
            format!("must be at least {MIN_API_KEY_BYTES} bytes"),
        )),
        token => Ok(token.map(Secret::new)),
    }
}

/// The global presence receiver: a URL and a secret of at least 16 bytes, or neither.
fn presence_webhook(settings: &Settings) -> Result<Option<PresenceWebhook>, ConfigError> {
    match (
        settings.presence_webhook_url.clone(),
        settings.presence_webhook_secret.clone(),
    ) {
        (None, None) => Ok(None),
        (Some(url), Some(secret)) if secret.len() >= MIN_API_KEY_BYTES => {
            Ok(Some(PresenceWebhook {
                url,
                secret: Secret::new(secret),
            }))
        }
        (Some(_), _) => Err(invalid(
            "SWITCHBOARD_PRESENCE_WEBHOOK_SECRET",
            format!("required with SWITCHBOARD_PRESENCE_WEBHOOK_URL, at least {MIN_API_KEY_BYTES} bytes"),
        )),
        (None, Some(_)) => Err(invalid(
            "SWITCHBOARD_PRESENCE_WEBHOOK_URL",
            "required with SWITCHBOARD_PRESENCE_WEBHOOK_SECRET",
        )),
    }
}

/// Outbound delivery: a lease that outlasts an attempt, and a positive scan interval.
fn outbound(settings: &Settings) -> Result<OutboundConfig, ConfigError> {
    let outbound = OutboundConfig {
        max_attempts: settings.outbound_max_attempts,
        retry_base: settings.outbound_retry_base,
        timeout: settings.outbound_timeout,
        lease: settings.outbound_lease,
        scan_interval: settings.outbound_scan_interval,
        allow_private: settings.outbound_allow_private,
    };
    if outbound.lease < outbound.timeout + OUTBOUND_LEASE_MARGIN {
        return Err(invalid(
            "SWITCHBOARD_OUTBOUND_LEASE",
            "must be at least SWITCHBOARD_OUTBOUND_TIMEOUT plus 1s (an attempt, then its record)",
        ));
    }
    if outbound.scan_interval.is_zero() {
        return Err(invalid(
            "SWITCHBOARD_OUTBOUND_SCAN_INTERVAL",
            "must be positive",
        ));
    }
    Ok(outbound)
}

/// The limits that are settings alone, each checked against its bounds.
fn check_limits(settings: &Settings) -> Result<(), ConfigError> {
    if settings.max_frame_bytes < 128 {
        return Err(invalid(
            "SWITCHBOARD_MAX_FRAME_BYTES",
            "must be at least 128",
        ));
    }
    if settings.max_publish_bytes < 128 {
        return Err(invalid(
            "SWITCHBOARD_MAX_PUBLISH_BYTES",
            "must be at least 128",
        ));
    }
    if settings.workers == Some(0) {
        return Err(invalid("SWITCHBOARD_WORKERS", "must be at least 1"));
    }
    if settings.retention_max_events == 0 || settings.retention_interval.is_zero() {
        return Err(invalid(
            "SWITCHBOARD_RETENTION_MAX_EVENTS",
            "retention must keep at least one event and run at a positive interval",
        ));
    }
    if settings.max_queued_bytes < settings.max_frame_bytes.min(64 * 1024) {
        return Err(invalid(
            "SWITCHBOARD_MAX_QUEUED_BYTES",
            "must be at least 64 KiB (or the frame limit)",
        ));
    }
    if settings.max_queued_publishes == 0 {
        return Err(invalid(
            "SWITCHBOARD_MAX_QUEUED_PUBLISHES",
            "must be at least 1",
        ));
    }
    if settings.max_queued_publish_bytes < settings.max_publish_bytes {
        return Err(invalid(
            "SWITCHBOARD_MAX_QUEUED_PUBLISH_BYTES",
            "must be at least SWITCHBOARD_MAX_PUBLISH_BYTES (one publish must fit)",
        ));
    }
    if settings.handshake_timeout.is_zero() {
        return Err(invalid("SWITCHBOARD_HANDSHAKE_TIMEOUT", "must be positive"));
    }
    if settings.max_unauthenticated_per_address == 0 {
        return Err(invalid(
            "SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS",
            "must be at least 1",
        ));
    }
    if settings.max_unauthenticated < settings.max_unauthenticated_per_address {
        return Err(invalid(
            "SWITCHBOARD_MAX_UNAUTHENTICATED",
            "must be at least SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS",
        ));
    }
    if settings.outbound_max_attempts == 0 {
        return Err(invalid(
            "SWITCHBOARD_OUTBOUND_MAX_ATTEMPTS",
            "must be at least 1",
        ));
    }
    if settings.body_timeout.is_zero() {
        return Err(invalid("SWITCHBOARD_BODY_TIMEOUT", "must be positive"));
    }
    Ok(())
}

/// The JWT key, the current and previous API keys, and development mode when either key is
/// not configured (generated once, kept beside the database).
fn keys(
    settings: &Settings,
    database: &Database,
) -> Result<(JwtKey, Secret, Vec<Secret>, Option<DevMode>), ConfigError> {
    let configured_key = configured_jwt_key(settings)?;
    let mut configured_api_keys = Vec::new();
    for key in settings.api_key.iter().flat_map(|keys| keys.split(',')) {
        let key = key.trim();
        if key.len() < MIN_API_KEY_BYTES {
            return Err(invalid(
                "SWITCHBOARD_API_KEY",
                format!("each key must be at least {MIN_API_KEY_BYTES} bytes"),
            ));
        }
        configured_api_keys.push(Secret::new(key.to_owned()));
    }
    let previous_api_keys = configured_api_keys.split_off(configured_api_keys.len().min(1));
    let configured_api_key = configured_api_keys.pop();

    let (jwt_key, api_key, dev_mode) = match (configured_key, configured_api_key) {
        (Some(jwt_key), Some(api_key)) => (jwt_key, api_key, None),
        (jwt_key, api_key) => {
            development_meant(settings.dev_mode, jwt_key.is_some(), api_key.is_some())?;
            let keys_file = settings
                .dev_keys_file
                .clone()
                .unwrap_or_else(|| dev_keys::default_path(database));
            let dev = dev_keys::load_or_create(&keys_file)?;
            let dev_mode = DevMode {
                keys_file,
                generated_jwt_secret: jwt_key.is_none(),
                generated_api_key: api_key.is_none(),
            };
            (
                jwt_key.unwrap_or(JwtKey::Secret(dev.jwt_secret)),
                api_key.unwrap_or(dev.api_key),
                Some(dev_mode),
            )
        }
    };
    Ok((jwt_key, api_key, previous_api_keys, dev_mode))
}

/// Whether keys may be generated for development. Development mode comes by itself only when no
/// key is configured at all (a fresh checkout); with one configured, a production set-up is half
/// done, and filling in the other would also relax the origin check and serve the demo unasked.
fn development_meant(
    dev_mode: Option<bool>,
    has_jwt_key: bool,
    has_api_key: bool,
) -> Result<(), ConfigError> {
    let missing = match (has_jwt_key, has_api_key) {
        (false, false) => {
            "SWITCHBOARD_JWT_SECRET (or SWITCHBOARD_JWT_PUBLIC_KEY_FILE) and SWITCHBOARD_API_KEY"
        }
        (false, true) => "SWITCHBOARD_JWT_SECRET (or SWITCHBOARD_JWT_PUBLIC_KEY_FILE)",
        (true, _) => "SWITCHBOARD_API_KEY",
    };
    match dev_mode {
        Some(true) => Ok(()),
        Some(false) => Err(ConfigError::DevModeOff { missing }),
        None if !has_jwt_key && !has_api_key => Ok(()),
        None => Err(ConfigError::HalfConfigured { missing }),
    }
}

const MIN_CLUSTER_SECRET_BYTES: usize = 32;

/// Cluster mode's settings, when `REDIS_URL` is set: every node must sign what it sends, so the
/// secret is required; a CA file goes with TLS.
fn cluster_config(settings: &Settings) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(url) = &settings.redis_url else {
        return Ok(None);
    };
    let secret = match &settings.cluster_secret {
        Some(secret) if secret.len() >= MIN_CLUSTER_SECRET_BYTES => Secret::new(secret.clone()),
        Some(_) => {
            return Err(invalid(
                "SWITCHBOARD_CLUSTER_SECRET",
                format!("must be at least {MIN_CLUSTER_SECRET_BYTES} bytes"),
            ))
        }
        None => {
            return Err(invalid(
                "SWITCHBOARD_CLUSTER_SECRET",
                "required in cluster mode (REDIS_URL is set): the same secret of at least 32 \
                 bytes on every node, which signs their messages to one another",
            ))
        }
    };
    let redis_ca = match &settings.redis_ca_file {
        Some(_) if !url.starts_with("rediss://") => {
            return Err(invalid(
                "SWITCHBOARD_REDIS_CA_FILE",
                "a CA file goes with a rediss:// (TLS) REDIS_URL",
            ))
        }
        Some(path) => Some(std::fs::read(path).map_err(|source| ConfigError::ReadFile {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    if settings.cluster_check_interval < Duration::from_millis(100) {
        return Err(invalid(
            "SWITCHBOARD_CLUSTER_CHECK_INTERVAL",
            "must be at least 100ms",
        ));
    }
    let cluster = ClusterConfig {
        redis_url: Secret::new(url.clone()),
        redis_ca,
        secret,
        check_interval: settings.cluster_check_interval,
    };
    // The URL is only parsed here (with the CA, if any); nothing connects yet. The error never
    // shows the URL, which may carry a password.
    cluster
        .redis_client()
        .map_err(|e| invalid("REDIS_URL", e.to_string()))?;
    Ok(Some(cluster))
}

fn configured_jwt_key(settings: &Settings) -> Result<Option<JwtKey>, ConfigError> {
    let algorithm = settings
        .jwt_algorithm
        .as_deref()
        .map(|name| match name {
            "HS256" => Ok(Algorithm::HS256),
            "RS256" => Ok(Algorithm::RS256),
            "ES256" => Ok(Algorithm::ES256),
            _ => Err(invalid(
                "SWITCHBOARD_JWT_ALGORITHM",
                "expected HS256, RS256 or ES256",
            )),
        })
        .transpose()?;

    match (&settings.jwt_secret, &settings.jwt_public_key_file) {
        (Some(_), Some(_)) => Err(invalid(
            "SWITCHBOARD_JWT_SECRET",
            "set either a secret or a public key file, not both",
        )),
        (Some(secret), None) => {
            if algorithm.is_some_and(|a| a != Algorithm::HS256) {
                return Err(invalid(
                    "SWITCHBOARD_JWT_ALGORITHM",
                    "a shared secret goes with HS256",
                ));
            }
            if secret.len() < MIN_JWT_SECRET_BYTES {
                return Err(invalid(
                    "SWITCHBOARD_JWT_SECRET",
                    format!("must be at least {MIN_JWT_SECRET_BYTES} bytes"),
                ));
            }
            Ok(Some(JwtKey::Secret(Secret::new(secret.clone()))))
        }
        (None, Some(path)) => {
            let pem = std::fs::read(path).map_err(|source| ConfigError::ReadFile {
                path: path.clone(),
                source,
            })?;
            let algorithm = match algorithm {
                Some(Algorithm::HS256) => {
                    return Err(invalid(
                        "SWITCHBOARD_JWT_ALGORITHM",
                        "a public key goes with RS256 or ES256",
                    ))
                }
                Some(algorithm) => algorithm,
                None => infer_algorithm(&pem)?,
            };
            let parsed = match algorithm {
                Algorithm::RS256 => jsonwebtoken::DecodingKey::from_rsa_pem(&pem).map(drop),
                _ => jsonwebtoken::DecodingKey::from_ec_pem(&pem).map(drop),
            };
            parsed.map_err(|e| {
                invalid(
                    "SWITCHBOARD_JWT_PUBLIC_KEY_FILE",
                    format!("not a {algorithm:?} public key in PEM: {e}"),
                )
            })?;
            Ok(Some(JwtKey::PublicKey { algorithm, pem }))
        }
        (None, None) => Ok(None),
    }
}

fn infer_algorithm(pem: &[u8]) -> Result<Algorithm, ConfigError> {
    if jsonwebtoken::DecodingKey::from_rsa_pem(pem).is_ok() {
        Ok(Algorithm::RS256)
    } else if jsonwebtoken::DecodingKey::from_ec_pem(pem).is_ok() {
        Ok(Algorithm::ES256)
    } else {
        Err(invalid(
            "SWITCHBOARD_JWT_PUBLIC_KEY_FILE",
            "not an RSA or EC public key in PEM",
        ))
    }
}

/// Development keys: generated once at random, kept in a file only its owner can read.
pub mod dev_keys {
    use super::*;
    use base64::Engine;
    use serde::{Deserialize, Serialize};

    const FILE_NAME: &str = "switchboard-dev-keys.json";

    pub struct DevKeys {
        pub jwt_secret: Secret,
        pub api_key: Secret,
    }

    #[derive(Serialize, Deserialize)]
    struct KeysFile {
        jwt_secret: String,
        api_key: String,
    }

    /// Beside the SQLite file; the working directory for PostgreSQL.
    pub fn default_path(database: &Database) -> PathBuf {
        match database {
            Database::Sqlite(path) => path.parent().unwrap_or(Path::new("")).join(FILE_NAME),
            Database::Postgres(_) => PathBuf::from(FILE_NAME),
        }
    }

    fn random_key() -> String {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS random number generator failed");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn error(path: &Path, reason: impl fmt::Display) -> ConfigError {
        ConfigError::DevKeys {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }

    pub fn load_or_create(path: &Path) -> Result<DevKeys, ConfigError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let file: KeysFile = serde_json::from_slice(&bytes).map_err(|e| {
                    error(path, format!("unreadable ({e}); delete it to regenerate"))
                })?;
                Ok(DevKeys {
                    jwt_secret: Secret::new(file.jwt_secret),
                    api_key: Secret::new(file.api_key),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
            Err(e) => Err(error(path, e)),
        }
    }

    fn create(path: &Path) -> Result<DevKeys, ConfigError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;

        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| error(path, e))?;
        }
        let file = KeysFile {
            jwt_secret: random_key(),
            api_key: random_key(),
        };
        let json = serde_json::to_vec_pretty(&file).expect("two strings serialize");
        // create_new: two processes starting at once must not overwrite each other's keys.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        if let Err(e) = &out {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                return load_or_create(path);
            }
        }
        out.as_mut()
            .map_err(|e| error(path, e))?
            .write_all(&json)
            .map_err(|e| error(path, e))?;
        Ok(DevKeys {
            jwt_secret: Secret::new(file.jwt_secret),
            api_key: Secret::new(file.api_key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_table_names_are_plain_identifiers_that_leave_room_for_refused() {
        for good in [
            "switchboard_outbox",
            "_o",
            "o2",
            &"a".repeat(MAX_TABLE_NAME),
        ] {
            assert_eq!(TableName::parse(good).unwrap().as_str(), good);
        }
        let too_long = "a".repeat(MAX_TABLE_NAME + 1);
        for bad in [
            "",
            "Outbox",
            "2o",
            "a-b",
            "a.b",
            "o; DROP TABLE x",
            "\"o\"",
            &too_long,
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn origins_are_listed_exactly_or_same_host() {
        assert_eq!(Origins::parse(" * ").unwrap(), Origins::Any);
        let listed = Origins::parse("https://App.example.com/, http://localhost:3000").unwrap();
        assert!(listed.allow("https://app.example.com", None));
        assert!(listed.allow("http://localhost:3000", Some("rt.example.com")));
        assert!(!listed.allow("https://app.example.com.evil.test", None));
        assert!(!listed.allow("http://app.example.com", None)); // scheme matters
        assert!(listed.allow("https://rt.example.com", Some("rt.example.com")));
        assert!(!listed.allow("null", Some("rt.example.com")));
        assert!(Origins::parse("app.example.com").is_err());
    }

    #[test]
    fn database_is_chosen_by_scheme() {
        assert_eq!(
            Database::parse("postgres://h/db").unwrap(),
            Database::Postgres("postgres://h/db".into())
        );
        assert_eq!(
            Database::parse("sqlite://data/x.db").unwrap(),
            Database::Sqlite("data/x.db".into())
        );
        assert_eq!(
            Database::parse("x.db").unwrap(),
            Database::Sqlite("x.db".into())
        );
        assert!(Database::parse(":memory:").is_err());
    }

    #[test]
    fn passwords_are_not_described() {
        let db = Database::parse("postgres://u:hunter2@h:5432/db").unwrap();
        assert_eq!(db.describe(), "postgres postgres://u:[redacted]@h:5432/db");
    }

    #[test]
    fn outbound_leases_outlast_a_request_and_private_networks_are_opt_in() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
        }
        let load = |extra: &[&str]| {
            let secret = "s".repeat(MIN_JWT_SECRET_BYTES);
            let mut args = vec!["switchboard", "--jwt-secret", &secret];
            args.extend(["--api-key", "an-api-key-long-enough"]);
            args.extend(["--outbound-timeout", "10s"]);
            args.extend(extra);
            let cli = <Cli as clap::Parser>::try_parse_from(args).unwrap();
            Config::load(cli.settings)
        };
        assert!(matches!(
            load(&["--outbound-lease", "10500ms"]),
            Err(ConfigError::Invalid {
                setting: "SWITCHBOARD_OUTBOUND_LEASE",
                ..
            })
        ));
        let config = load(&["--outbound-lease", "11s"]).unwrap();
        assert_eq!(config.outbound.lease, Duration::from_secs(11));
        assert!(!config.outbound.allow_private);
        let on_premises = load(&["--outbound-allow-private", "true"]).unwrap();
        assert!(on_premises.outbound.allow_private);
        assert!(matches!(
            load(&["--outbound-scan-interval", "0s"]),
            Err(ConfigError::Invalid {
                setting: "SWITCHBOARD_OUTBOUND_SCAN_INTERVAL",
                ..
            })
        ));
    }

    #[test]
    fn secrets_match_only_themselves() {
        let s = Secret::new("test-api-key-0123456789".into());
        assert!(s.matches("test-api-key-0123456789"));
        for other in [
            "",
            "test",
            "test-api-key-012345678",
            "test-api-key-01234567890",
            "x",
        ] {
            assert!(!s.matches(other), "{other}");
        }
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
