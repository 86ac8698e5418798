//! Configuration: every setting, read once from flags or environment variables and validated into
//! a typed [`Config`]. Nothing else in the crate reads the environment.
//!
//! When no JWT key or API key is configured, [`Config::load`] enters development mode: the missing
//! keys are generated at random once and kept in a file beside the database (see [`dev_keys`]).

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
    /// or `normal` (left as started, normally the system's default); README, "Performance".
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

    /// Cluster mode: nodes share events, presence and typing through this Redis
    /// (`redis://[:password@]host:port[/db]`). Unset: a single node, no Redis used.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// On SIGTERM, sessions are closed in batches spread over this period.
    #[arg(long, env = "SWITCHBOARD_DRAIN_PERIOD", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_period: Duration,
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

/// Outbound webhooks (replies handed to the application).
#[derive(Debug, Clone, Copy)]
pub struct OutboundConfig {
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub timeout: Duration,
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
    /// Cluster mode's Redis (its URL may carry a password).
    pub redis_url: Option<Secret>,
    pub drain_period: Duration,
    pub presence: Presence,
    pub retention: Retention,
    pub max_queued_bytes: usize,
    pub long_poll_max: Duration,
    pub token_refresh_lead: Duration,
    pub frames_per_second: std::num::NonZeroU32,
    pub max_sessions_per_user: usize,
    pub auth_failures_per_minute: std::num::NonZeroU32,
    pub handshakes: Handshakes,
    pub allowed_origins: Origins,
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

/// The CPU scheduling policy of the server's threads (see [`crate::scheduling`]).
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
        let webhooks = WebhookConfig {
            facebook_verify_token: settings.facebook_verify_token.clone().map(Secret::new),
            max_body_bytes: settings.max_webhook_bytes,
            tolerance: settings.webhook_tolerance,
        };
        let outbound = OutboundConfig {
            max_attempts: settings.outbound_max_attempts,
            retry_base: settings.outbound_retry_base,
            timeout: settings.outbound_timeout,
        };

        let configured_key = configured_jwt_key(&settings)?;
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
                let keys_file = settings
                    .dev_keys_file
                    .clone()
                    .unwrap_or_else(|| dev_keys::default_path(&database));
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

        Ok(Self {
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
            redis_url: match settings.redis_url {
                Some(url) => {
                    redis::Client::open(url.as_str())
                        .map_err(|e| invalid("REDIS_URL", e.to_string()))?;
                    Some(Secret::new(url))
                }
                None => None,
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
            max_sessions_per_user: settings.max_sessions_per_user,
            auth_failures_per_minute: settings.auth_failures_per_minute,
            handshakes: Handshakes {
                timeout: settings.handshake_timeout,
                max_per_address: settings.max_unauthenticated_per_address,
                max: settings.max_unauthenticated,
            },
            allowed_origins: match settings.allowed_origins.as_deref() {
                Some(value) => Origins::parse(value)?,
                None if dev_mode.is_some() => Origins::Any,
                None => Origins::Listed(Vec::new()),
            },
            demo: match settings.demo.unwrap_or(dev_mode.is_some()) {
                false => Demo::Off,
                true if dev_mode.as_ref().is_some_and(|d| d.generated_jwt_secret) => {
                    Demo::WithTokens
                }
                true => Demo::Page,
            },
            dev_mode,
        })
    }
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
    fn secrets_do_not_debug_print() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
