//! The room scenario (`switchboard bench`): drives a running Switchboard over real sockets and reports what a room of
//! N sessions costs — connect rate, deliveries per second, publish-to-receipt latency, lost,
//! duplicated and cross-account deliveries, and (given the server's PID, on this machine) its
//! memory per idle connection and CPU time per delivery.
//!
//! With `--abuse`, [`abuse`] measures the same sessions with and without an attacker ([`attack`])
//! beside them.
//!
//! Tokens are minted with the configured HS256 secret and events published with the configured
//! API key, so run it with the server's settings (the same environment, or the same directory in
//! development mode). Loopback only; every loop is bounded in count and time.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use switchboard::auth;
use switchboard::config::Config;
use switchboard::ids::{AccountId, UserId};

use crate::{abuse, attack, chart, proc};

/// Connections per loopback source address before the next one is used. Linux's `connect`
/// draws from half of the ~28k ephemeral ports (the other half is kept for `bind`), and finding a
/// free one slows sharply as that half fills: 19,900 connections from one address took 7.9 s to
/// connect, from two 1.75 s.
const PER_SOURCE_ADDRESS: usize = 12_000;
/// Handshakes under way at once.
pub(crate) const CONNECTING_AT_ONCE: usize = 256;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The server's HTTP address (loopback); publishes go here.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Cluster mode: the nodes the WebSocket connections are spread over, round-robin
    /// (comma-separated HTTP addresses; default: `--url`).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// WebSocket connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Accounts the connections are spread over (one room each).
    #[arg(long, default_value_t = 1)]
    pub accounts: usize,
    /// Sessions per user (tabs).
    #[arg(long, default_value_t = 1)]
    pub tabs: usize,
    /// Events to publish.
    #[arg(long, default_value_t = 200)]
    pub events: usize,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Publishes per second (default: as fast as `--in-flight` allows).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Bytes of padding in each event's data.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// The server's process id, for its memory and CPU time (same machine only).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Runs the scenario for each of these connection counts instead of `--connections`.
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<usize>,
    /// Where to write the JSON report.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where to write the sweep's SVG chart.
    #[arg(long, default_value = "bench.svg")]
    pub chart: PathBuf,
    /// Longest a scenario may take.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The abuse benchmark: `--connections` sessions receive `--rate` events a second, first
    /// alone, then while one client attacks at full speed (see the README's "Limits").
    #[arg(long)]
    pub abuse: bool,
    /// Seconds of each phase of `--abuse` (the baseline, then the attack).
    #[arg(long, default_value_t = 20.0)]
    pub abuse_seconds: f64,
    /// The attacks `--abuse` runs (comma-separated; default: all at once). One alone gives the
    /// server's CPU time per attempt.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub attack: Vec<attack::Kind>,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// The outcome of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub connections: usize,
    pub accounts: usize,
    pub events: usize,
    pub in_flight: usize,
    pub payload_bytes: usize,
    pub connect_seconds: f64,
    pub connects_per_sec: f64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub latency_ms: Percentiles,
    pub lost: u64,
    pub duplicated: u64,
    pub cross_account: u64,
    pub server_rss_per_idle_connection_bytes: Option<u64>,
    pub server_cpu_per_delivery_us: Option<f64>,
}

/// What a connection's reader saw.
#[derive(Default)]
pub struct Received {
    pub seqs: Vec<u64>,
    pub latencies_ns: Vec<u64>,
    pub cross_account: u64,
    /// Nanoseconds since the bench started, at the last receipt.
    pub last_receipt_ns: u64,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    seq: Option<u64>,
    data: Option<FrameData>,
}

#[derive(Deserialize)]
struct FrameData {
    /// Nanoseconds since the bench started, when the event was published.
    t: u64,
    /// The account it was published for.
    a: usize,
}

pub fn run(config: &Config, args: BenchArgs) -> Result<String, String> {
    // Each connection is a file descriptor; ask for as many as the system allows.
    let open_files = switchboard::server::raise_open_files_limit();
    if (open_files as usize)
        < args
            .connections
            .max(args.sweep.iter().copied().max().unwrap_or(0))
            + 64
    {
        log::warn!("only {open_files} open files are allowed; connections past that will fail");
    }
    if args.abuse {
        let report = abuse::run(config, &args)?;
        if let Some(path) = &args.json {
            let json = serde_json::to_string_pretty(&report).expect("reports serialize");
            std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        return Ok(abuse::table(&report));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let sizes = if args.sweep.is_empty() {
        vec![args.connections]
    } else {
        args.sweep.clone()
    };
    let mut reports = Vec::new();
    for connections in sizes {
        let report = runtime.block_on(scenario(config, &args, connections))?;
        log::info!("{}", table(std::slice::from_ref(&report)));
        reports.push(report);
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&reports).expect("reports serialize");
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if !args.sweep.is_empty() {
        chart::write_svg(&args.chart, &reports)?;
    }
    Ok(table(&reports))
}

pub fn server_addr(url: &str) -> Result<SocketAddr, String> {
    let host = url
        .strip_prefix("http://")
        .ok_or("--url must be http://host:port on this machine")?
        .trim_end_matches('/');
    let addr: SocketAddr = host
        .parse()
        .map_err(|_| format!("--url: {host} is not an IP address and port"))?;
    if !addr.ip().is_loopback() {
        return Err("the benchmark only targets loopback addresses".into());
    }
    Ok(addr)
}

async fn scenario(config: &Config, args: &BenchArgs, connections: usize) -> Result<Report, String> {
    let nodes = if args.nodes.is_empty() {
        vec![server_addr(&args.url)?]
    } else {
        args.nodes
            .iter()
            .map(|url| server_addr(url))
            .collect::<Result<Vec<_>, _>>()?
    };
    let deadline = Instant::now() + args.timeout;
    let accounts = args.accounts.max(1);
    let run_id = switchboard::ids::SessionId::random();
    let account_name = |a: usize| format!("bench-{run_id}-{a}");
    let started = Instant::now();

    // Connect: connection i belongs to account i % accounts, as tab (i / accounts) % tabs of a
    // user, from loopback address 127.0.0.(1 + i / PER_SOURCE_ADDRESS).
    let rss_before = args.server_pid.and_then(proc::rss_bytes);
    let semaphore = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let received: Vec<Arc<Mutex<Received>>> = (0..connections).map(|_| Arc::default()).collect();
    let delivered = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) =
        tokio::sync::mpsc::channel::<Result<(), String>>(connections.max(1));
    // Tokens first: minting them is the tool's work, not the server's, and stays off the clock.
    let tokens = (0..connections)
        .map(|i| {
            let user = (i / accounts) / args.tabs.max(1);
            auth::mint(
                &config.jwt,
                &AccountId::new(&account_name(i % accounts)).expect("bench ids are valid"),
                &UserId::new(&format!("user-{user}")).expect("bench ids are valid"),
                args.timeout + Duration::from_secs(60),
            )
            .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let connect_start = Instant::now();
    let mut readers = Vec::with_capacity(connections);
    for ((i, sink), token) in received.iter().enumerate().zip(tokens) {
        let account = i % accounts;
        let addr = nodes[i % nodes.len()];
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i / PER_SOURCE_ADDRESS) as u8));
        let reader = Reader {
            account,
            started,
            sink: sink.clone(),
            delivered: delivered.clone(),
            deadline,
        };
        readers.push(tokio::spawn(reader.run(
            semaphore.clone(),
            addr,
            source,
            token,
            ready_tx.clone(),
        )));
    }
    drop(ready_tx);
    connected(&mut ready_rx, connections, deadline).await?;
    let connect_seconds = connect_start.elapsed().as_secs_f64();
    // Let the server settle before reading its idle footprint.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = args.server_pid.and_then(proc::rss_bytes);

    // Publish.
    let cpu_before = args.server_pid.and_then(proc::cpu_time);
    let client = reqwest::Client::new();
    let publish_url = format!("{}/api/v1/publish", args.url.trim_end_matches('/'));
    let pad = "x".repeat(args.payload_bytes);
    let members: Vec<u64> = (0..accounts)
        .map(|a| (connections / accounts + usize::from(a < connections % accounts)) as u64)
        .collect();
    let expected: u64 = (0..args.events).map(|e| members[e % accounts]).sum();
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / r.max(0.001)));
    let in_flight = Arc::new(Semaphore::new(args.in_flight.max(1)));
    let first_publish = started.elapsed();
    let mut publishes = Vec::with_capacity(args.events);
    for e in 0..args.events {
        if let Some(interval) = interval {
            let due = started + first_publish + interval * e as u32;
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let account = e % accounts;
        let event = bench_event(&account_name(account), account, started, &pad);
        let request = publish(&client, &publish_url, config, args.timeout, event);
        publishes.push(tokio::spawn(async move {
            let answer = request.send().await;
            drop(permit);
            match answer {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("publish answered {}", r.status())),
                Err(e) => Err(format!("publish failed: {e}")),
            }
        }));
    }
    for publish in publishes {
        publish.await.map_err(|e| e.to_string())??;
    }
    // Wait (bounded) for every delivery.
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu_after = args.server_pid.and_then(proc::cpu_time);
    tokio::time::sleep(Duration::from_millis(200)).await; // stragglers, duplicates
    for reader in &readers {
        reader.abort();
    }

    let mut latencies = Vec::new();
    let (mut unique, mut duplicated, mut cross, mut last_receipt) = (0u64, 0u64, 0u64, 0u64);
    for sink in &received {
        let sink = sink.lock().expect("a reader panicked");
        let mut seen: HashMap<u64, ()> = HashMap::with_capacity(sink.seqs.len());
        for seq in &sink.seqs {
            if seen.insert(*seq, ()).is_some() {
                duplicated += 1;
            }
        }
        unique += seen.len() as u64;
        cross += sink.cross_account;
        latencies.extend_from_slice(&sink.latencies_ns);
        last_receipt = last_receipt.max(sink.last_receipt_ns);
    }
    let deliveries = delivered.load(Ordering::Relaxed);
    // First publish to last receipt.
    let span = (last_receipt as f64 / 1e9 - first_publish.as_secs_f64()).max(1e-9);
    Ok(Report {
        connections,
        accounts,
        events: args.events,
        in_flight: args.in_flight,
        payload_bytes: args.payload_bytes,
        connect_seconds,
        connects_per_sec: connections as f64 / connect_seconds.max(1e-9),
        expected_deliveries: expected,
        deliveries,
        deliveries_per_sec: deliveries as f64 / span,
        latency_ms: percentiles(&mut latencies),
        lost: expected.saturating_sub(unique),
        duplicated,
        cross_account: cross,
        server_rss_per_idle_connection_bytes: match (rss_before, rss_idle) {
            (Some(before), Some(idle)) => {
                Some(idle.saturating_sub(before) / connections.max(1) as u64)
            }
            _ => None,
        },
        server_cpu_per_delivery_us: match (cpu_before, cpu_after) {
            (Some(before), Some(after)) if deliveries > 0 => {
                Some((after - before).as_secs_f64() * 1e6 / deliveries as f64)
            }
            _ => None,
        },
    })
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket connection from `source` (a loopback address), through the welcome frame.
async fn connect(addr: SocketAddr, source: IpAddr, token: &str) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    // Binding picks a port by searching the ones in use, which slows as they fill up; a plain
    // connect picks one per destination, cheaply. So bind only for the extra source addresses.
    if source != IpAddr::V4(Ipv4Addr::LOCALHOST) {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
    }
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let url = format!("ws://{addr}/ws?token={token}");
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
        .await
        .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(Message::Text(text))) if text.contains(r#""type":"welcome""#) => Ok(ws),
        other => Err(format!("expected a welcome frame, got {other:?}")),
    }
}

/// tungstenite's defaults suit one busy connection: a 128 KiB read buffer, which it zero-fills
/// up to its capacity on every read. Ten thousand of them made the tool spend its core on
/// page faults and memset during connects, and the connect time measured the tool. Events are a
/// few hundred bytes; 4 KiB reads and eager writes are plenty.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// The event the tool publishes to `account_id` (its `account`th): stamped with the time since
/// `started`, which the reader turns into a latency.
pub fn bench_event(
    account_id: &str,
    account: usize,
    started: Instant,
    pad: &str,
) -> serde_json::Value {
    json!({
        "account_id": account_id,
        "event": "bench",
        "data": {"t": started.elapsed().as_nanos() as u64, "a": account, "pad": pad},
    })
}

/// A publish of `event` with the configured API key.
pub fn publish(
    client: &reqwest::Client,
    url: &str,
    config: &Config,
    timeout: Duration,
    event: serde_json::Value,
) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header(
            "authorization",
            format!("Bearer {}", config.api_key.expose()),
        )
        .header("content-type", "application/json")
        .body(event.to_string())
        .timeout(timeout)
}

/// One of the tool's sessions: where it records what it reads, and until when.
pub struct Reader {
    pub account: usize,
    pub started: Instant,
    pub sink: Arc<Mutex<Received>>,
    pub delivered: Arc<AtomicU64>,
    pub deadline: Instant,
}

impl Reader {
    /// Connects (holding one of `connecting`'s permits meanwhile, so that connects come in
    /// waves the server can take), says on `ready` whether it could, then reads its events.
    pub async fn run(
        self,
        connecting: Arc<Semaphore>,
        addr: SocketAddr,
        source: IpAddr,
        token: String,
        ready: tokio::sync::mpsc::Sender<Result<(), String>>,
    ) {
        let Ok(permit) = connecting.acquire_owned().await else {
            return;
        };
        let ws = match connect(addr, source, &token).await {
            Ok(ws) => ws,
            Err(e) => {
                let _ = ready.send(Err(format!("{addr}: {e}"))).await;
                return;
            }
        };
        drop(permit);
        let _ = ready.send(Ok(())).await;
        read_events(
            ws,
            self.account,
            self.started,
            self.sink,
            self.delivered,
            self.deadline,
        )
        .await;
    }
}

/// Waits until `connections` sessions have said they are connected.
pub async fn connected(
    ready: &mut tokio::sync::mpsc::Receiver<Result<(), String>>,
    connections: usize,
    deadline: Instant,
) -> Result<(), String> {
    for _ in 0..connections {
        match tokio::time::timeout_at(deadline.into(), ready.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(format!("a session failed to connect: {e}")),
            _ => return Err("connecting took longer than --timeout".into()),
        }
    }
    Ok(())
}

/// Reads until aborted or the deadline: records each event's sequence number and latency.
async fn read_events(
    mut ws: Ws,
    account: usize,
    started: Instant,
    sink: Arc<Mutex<Received>>,
    delivered: Arc<AtomicU64>,
    deadline: Instant,
) {
    // One timer for the whole read, not one per frame: the tool shares its core with ten
    // thousand readers and must not become what it measures.
    let read = async {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else {
                continue;
            };
            let (Some(seq), Some(data), "event") = (frame.seq, frame.data, frame.kind) else {
                continue;
            };
            let now = started.elapsed().as_nanos() as u64;
            let mut sink = sink.lock().expect("a reader panicked");
            sink.seqs.push(seq);
            sink.latencies_ns.push(now.saturating_sub(data.t));
            sink.last_receipt_ns = now;
            if data.a != account {
                sink.cross_account += 1;
            }
            delivered.fetch_add(1, Ordering::Relaxed);
        }
    };
    let _ = tokio::time::timeout_at(deadline.into(), read).await;
}

pub fn percentiles(samples: &mut [u64]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[i] as f64 / 1e6
    };
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// The reports as a readable table.
pub fn table(reports: &[Report]) -> String {
    let mut out = String::from(
        "connections  connect s  conn/s   deliveries  deliv/s     p50 ms  p90 ms  p99 ms  max ms  lost  dup  cross  RSS/idle conn  CPU/delivery\n",
    );
    for r in reports {
        let rss = r
            .server_rss_per_idle_connection_bytes
            .map_or("-".into(), |b| format!("{:.1} KiB", b as f64 / 1024.0));
        let cpu = r
            .server_cpu_per_delivery_us
            .map_or("-".into(), |us| format!("{us:.2} µs"));
        out.push_str(&format!(
            "{:>11}  {:>9.2}  {:>7.0}  {:>10}  {:>10.0}  {:>6.1}  {:>6.1}  {:>6.1}  {:>6.1}  {:>4}  {:>3}  {:>5}  {:>13}  {:>12}\n",
            r.connections,
            r.connect_seconds,
            r.connects_per_sec,
            r.deliveries,
            r.deliveries_per_sec,
            r.latency_ms.p50,
            r.latency_ms.p90,
            r.latency_ms.p99,
            r.latency_ms.max,
            r.lost,
            r.duplicated,
            r.cross_account,
            rss,
            cpu
        ));
    }
    out
}
