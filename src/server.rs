//! Starting the server: open the store, start the broker, bind the HTTP server. Shared by the
//! binary and the tests, which start the real server on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::{Actor, Addr, AsyncContext};
use actix_web::{web, App};

use crate::actors::broker::{Broker, Drain};
use crate::actors::peers::Peers;
use crate::actors::presence_hook::PresenceHook;
use crate::actors::session;
use crate::api::{self, AppState};
use crate::auth::throttle::Authenticator;
use crate::cluster::Cluster;
use crate::commit::Committer;
use crate::config::{Config, Demo};
use crate::ids::random_id;
use crate::inbox::SendRate;
use crate::outbound::{address, Dispatcher};
use crate::presence_webhooks::PresenceWebhooks;
use crate::publisher::Publisher;
use crate::requests::Requests;
use crate::retention::Pruner;
use crate::socket_io::{Engines, SocketIo};
use crate::store::{Store, StoreError};
use crate::webhooks::Webhooks;
use crate::{http, logging, metrics};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("SWITCHBOARD_PRESENCE_WEBHOOK_URL: {0}")]
    PresenceWebhookUrl(String),
}

/// A bound server, not yet awaited. Await `server` to run it; [`Running::shutdown`] stops it
/// gracefully, `server.handle()` abruptly.
pub struct Running {
    pub addr: SocketAddr,
    pub server: actix_web::dev::Server,
    broker: Addr<Broker>,
    draining: Arc<AtomicBool>,
    drain_period: std::time::Duration,
}

/// How often the metrics recorder folds in what was recorded.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest a shutdown waits for connections to finish after their sessions were told to close.
const SHUTDOWN_TIMEOUT_SECS: u64 = 10;

impl Running {
    /// The broker, for tests that reach into the engine (e.g. to make a room fail).
    #[doc(hidden)]
    pub fn broker(&self) -> Addr<Broker> {
        self.broker.clone()
    }

    /// A graceful stop: the node turns unready and refuses new sessions; every session is
    /// closed with 1001 ("reconnect", so clients reconnect — to another node, or to this one
    /// once it is back — and resume), in batches over the drain period; then the server stops
    /// once its in-flight requests (publishes included) have finished. Without this, open
    /// WebSockets would hold the HTTP server's graceful stop until its timeout.
    pub fn shutdown(&self) -> impl std::future::Future<Output = ()> + 'static {
        let (handle, broker) = (self.server.handle(), self.broker.clone());
        let (draining, period) = (self.draining.clone(), self.drain_period);
        async move {
            draining.store(true, Ordering::Relaxed);
            log::info!(
                "draining: closing sessions over {}",
                humantime::format_duration(period)
            );
            let told = broker.send(Drain { period }).await.unwrap_or(0);
            log::info!("shutting down: {told} session(s) closed with 1001");
            handle.stop(true).await;
        }
    }
}

/// Binds, opens the database (migrating it) and starts the broker. Call inside an actix System.
pub async fn start(config: Config) -> Result<Running, StartError> {
    // The address rules of an integration's `outbound_url` (checked when it is created) hold for
    // the global receiver too, checked before anything starts rather than at each delivery.
    if let Some(hook) = &config.presence_webhook {
        let policy = crate::outbound::address::Policy {
            allow_private: config.outbound.allow_private,
        };
        policy
            .check_url(&hook.url)
            .map_err(|refused| StartError::PresenceWebhookUrl(refused.to_string()))?;
    }
    // First, so that a port in use fails before any actor has started.
    let listener = listen(config.bind).map_err(|source| StartError::Bind {
        addr: config.bind,
        source,
    })?;
    let database = config.database.clone();
    let pool_size = config.db_pool_size;
    let store = web::block(move || Store::open(&database, pool_size))
        .await
        .map_err(|_| StoreError::Cancelled)??;
    let node = random_id("node")[..13].to_owned();
    let metrics = start_metrics(&node);
    let presence_hook = PresenceWebhooks::start(
        store.clone(),
        config.presence_webhook.is_some(),
        config.cluster.is_none(),
        config.presence.grace,
    );
    let (broker, cluster) = start_broker(&config, &store, &node, presence_hook.clone());
    let state = start_services(&config, store, broker.clone(), cluster, metrics, &node);
    presence_hook.dispatch_to(state.dispatcher.clone());
    // Before serving anyone: a token revoked before a restart stays refused.
    crate::revocation::Revoker::start(
        state.store.clone(),
        broker.clone(),
        state.authenticator.revoked().clone(),
    )
    .await?;
    let draining = state.draining.clone();
    let max_publish_bytes = config.max_publish_bytes;
    let body_deadline = http::body::BodyDeadline::new(&config.edge);
    let make_app = move || {
        App::new()
            .app_data(state.clone())
            .wrap(body_deadline)
            .wrap(logging::request_logger())
            .wrap(cors())
            .configure(|cfg| api::routes(cfg, max_publish_bytes))
    };
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.bind,
        source,
    })?;
    let mut server = actix_server::Server::build()
        // Signals are the binary's to handle (see `Running::shutdown`).
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS);
    let shutdown = server.graceful_shutdown_signal();
    let admission = http::admission::Admission::new(&config.edge);
    if let Some(workers) = config.workers {
        server = server.workers(workers);
    }
    let server = server
        .listen("switchboard", listener, move || {
            http::service(make_app.clone(), addr, shutdown.clone(), admission.clone())
        })
        .map_err(|source| StartError::Bind {
            addr: config.bind,
            source,
        })?;
    log_startup(&config, addr);
    Ok(Running {
        addr,
        server: server.run(),
        broker,
        draining,
        drain_period: config.drain_period,
    })
}

/// Installs the Prometheus recorder for this node and keeps its histograms folded.
fn start_metrics(node: &str) -> metrics_exporter_prometheus::PrometheusHandle {
    let metrics = metrics::install(node);
    let upkeep = metrics.clone();
    actix::spawn(async move {
        // Folds recorded samples into the histograms even when nobody scrapes.
        let mut every = actix::clock::interval(METRICS_UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    metrics
}

/// Starts the broker, and in cluster mode the cluster as its peers.
fn start_broker(
    config: &Config,
    store: &Store,
    node: &str,
    presence_hook: Arc<PresenceWebhooks>,
) -> (Addr<Broker>, Option<Cluster>) {
    let mut cluster = None;
    let broker = Broker::create(|ctx| {
        cluster = config
            .cluster
            .as_ref()
            .map(|cluster| Cluster::start(cluster, node, config.presence.grace, ctx.address()));
        let peers = cluster
            .clone()
            .map(|cluster| Arc::new(cluster) as Arc<dyn Peers>);
        Broker::new(
            store.clone(),
            config.presence,
            config.max_sessions_per_user,
            peers,
        )
        .with_presence_hook(Some(presence_hook as Arc<dyn PresenceHook>))
    });
    (broker, cluster)
}

/// Starts the services (outbound dispatcher, retention, publisher) and gathers what every
/// request handler and session shares.
fn start_services(
    config: &Config,
    store: Store,
    broker: Addr<Broker>,
    cluster: Option<Cluster>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    node: &str,
) -> web::Data<AppState> {
    let dispatcher = Dispatcher::new(
        store.clone(),
        broker.clone(),
        config.outbound,
        config.presence_webhook.clone(),
        node,
    )
    .start();
    Pruner::new(store.clone(), config.retention).start();

    let publisher = start_publisher(config, &store, &broker);
    let authenticator = Arc::new(Authenticator::new(
        &config.jwt,
        config.auth_failures_per_minute,
    ));
    let dispatcher = dispatcher.recipient();
    let commits = Committer::new(store.clone(), broker.clone(), dispatcher.clone());
    let sends = Arc::new(SendRate::new(config.sends_per_second));
    let requests = Requests::new(commits.clone(), store.clone(), sends.clone());
    let sessions = shared_by_sessions(config, &store, &broker, requests, &authenticator);
    let draining = Arc::new(AtomicBool::new(false));
    let socket_io = Arc::new(SocketIo {
        engines: Arc::new(Engines::new(config.handshakes)),
        sessions: sessions.clone(),
        authenticator: authenticator.clone(),
        store: store.clone(),
        draining: draining.clone(),
        origins: config.allowed_origins.clone(),
    });
    web::Data::new(AppState {
        node: node.to_owned(),
        cluster,
        metrics,
        authenticator,
        draining,
        api_keys: std::iter::once(&config.api_key)
            .chain(&config.previous_api_keys)
            .cloned()
            .collect(),
        store: store.clone(),
        broker,
        sessions,
        streams: Default::default(),
        socket_io,
        commits: commits.clone(),
        sends,
        outbound_addresses: address::Policy {
            allow_private: config.outbound.allow_private,
        },
        publisher,
        long_poll_max: config.long_poll_max,
        demo: config.demo,
        allowed_origins: config.allowed_origins.clone(),
        demo_minter: (config.demo == Demo::WithTokens).then(|| config.jwt.clone()),
        metrics_token: config.metrics_token.clone(),
        dispatcher,
        webhooks: Webhooks {
            stats: Default::default(),
            store: store.clone(),
            commits: commits.clone(),
            facebook_verify_token: config.webhooks.facebook_verify_token.clone(),
            max_body_bytes: config.webhooks.max_body_bytes,
            tolerance: config.webhooks.tolerance,
        },
    })
}

/// The publisher, and the outbox consumer that feeds it when one is configured.
fn start_publisher(config: &Config, store: &Store, broker: &Addr<Broker>) -> Publisher {
    let publisher = Publisher::start(
        store.clone(),
        broker.clone(),
        config.retention.idempotency_window,
        config.publish_queue,
    );
    if let Some(outbox) = &config.outbox {
        let stop =
            crate::outbox::start(outbox.clone(), publisher.clone(), config.max_publish_bytes);
        // Held by a task of this actix system, so the consumer stops with it.
        actix::spawn(async move {
            let _stop = stop;
            std::future::pending::<()>().await;
        });
    }
    publisher
}

/// What every session shares: the engine's handles, the services' port and the settings.
fn shared_by_sessions(
    config: &Config,
    store: &Store,
    broker: &Addr<Broker>,
    requests: Requests,
    authenticator: &Arc<Authenticator>,
) -> Arc<session::Shared> {
    Arc::new(session::Shared {
        broker: broker.clone(),
        store: store.clone(),
        service: Arc::new(requests),
        heartbeat: config.heartbeat,
        max_frame_bytes: config.max_frame_bytes,
        max_queued_bytes: config.max_queued_bytes,
        frames_per_second: config.frames_per_second,
        tokens: session::Tokens {
            authenticator: authenticator.clone(),
            leeway: config.jwt.leeway,
            refresh_lead: config.token_refresh_lead,
        },
    })
}

/// Connections waiting to be accepted: a burst of reconnecting clients must not overflow it.
const LISTEN_BACKLOG: i32 = 4096;

/// The listening socket, as `HttpServer::bind` would make it, but before anything else starts.
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Pages on other origins may call the API: every call carries its token explicitly (never a
/// cookie), so no origin gains anything it could not do with the token anyway — and the SDK's
/// long-poll fallback needs it. Not the demo, whose tokens are the demo page's alone: under
/// `/demo`, no CORS header is sent and no preflight granted.
fn cors() -> actix_cors::Cors {
    actix_cors::Cors::default()
        .allowed_origin_fn(|_, request| {
            let path = request.uri.path();
            !(path == "/demo" || path.starts_with("/demo/"))
        })
        .allowed_methods(["GET", "POST", "DELETE"])
        .allowed_headers([
            actix_web::http::header::AUTHORIZATION,
            actix_web::http::header::CONTENT_TYPE,
            // A cross-origin `EventSource` sends it when it reconnects.
            crate::api::sse::LAST_EVENT_ID,
        ])
        .max_age(3600)
}

/// Most open files asked for: every connection is one.
const OPEN_FILES_WANTED: u64 = 1 << 20;

/// Raises this process's open-files limit as far as it may go (past the hard limit when running
/// with the privilege to), and returns the limit in force.
pub fn raise_open_files_limit() -> u64 {
    use rlimit::Resource;
    if Resource::NOFILE
        .set(OPEN_FILES_WANTED, OPEN_FILES_WANTED)
        .is_err()
    {
        if let Err(e) = rlimit::increase_nofile_limit(OPEN_FILES_WANTED) {
            log::warn!("cannot raise the open-files limit: {e}");
        }
    }
    Resource::NOFILE.get().map_or(0, |(soft, _)| soft)
}

fn log_startup(config: &Config, addr: SocketAddr) {
    log::info!("listening on http://{addr} (WebSocket endpoint ws://{addr}/ws)");
    log::info!("database: {}", config.database.describe());
    if config.cluster.is_some() && matches!(config.database, crate::config::Database::Sqlite(_)) {
        log::warn!(
            "cluster mode on SQLite: only nodes on this machine, sharing the file, see each \
             other's events; use PostgreSQL (DATABASE_URL=postgres://…) for several machines"
        );
    }
    log::info!("open files allowed: {}", raise_open_files_limit());
    log::info!(
        "heartbeat: ping every {}, close after {} without an answer",
        humantime::format_duration(config.heartbeat.interval),
        humantime::format_duration(config.heartbeat.timeout)
    );
    let edge = &config.edge;
    log::info!(
        "limits: request bodies within {} ({} bytes/s after the first {}); {} connections \
         per address; {} connections without a whole request (0: no cap)",
        humantime::format_duration(edge.body_timeout),
        edge.body_min_rate,
        humantime::format_duration(http::body::GRACE),
        edge.max_connections_per_address,
        edge.max_pending_connections
    );
    if let Some(dev) = &config.dev_mode {
        log_development_mode(config, dev);
    }
    if config.demo != Demo::Off {
        log::info!(
            "demo inbox: http://{addr}/demo?account=acme&user=alice (and &user=bob in another tab)"
        );
    }
}

/// Development mode, said loudly, with what it relaxes: whichever key was generated, and the
/// origin check and the demo, where their settings leave development mode's defaults.
fn log_development_mode(config: &Config, dev: &crate::config::DevMode) {
    let generated = match (dev.generated_jwt_secret, dev.generated_api_key) {
        (true, true) => "JWT secret and API key",
        (true, false) => "JWT secret",
        _ => "API key",
    };
    let mut relaxed = String::new();
    if config.allowed_origins == crate::config::Origins::Any {
        relaxed.push_str(" Pages from any origin may open WebSockets.");
    }
    if config.demo != Demo::Off {
        relaxed.push_str(" The demo is served at /demo.");
    }
    log::warn!(
        "DEVELOPMENT MODE: no {generated} configured; using generated ones kept in {}.{relaxed} \
         `switchboard keys` shows them, `switchboard token --account A --user U` mints a token. \
         Set SWITCHBOARD_JWT_SECRET and SWITCHBOARD_API_KEY in production.",
        dev.keys_file.display()
    );
}
