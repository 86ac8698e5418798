//! `switchboard bench`: drives a running Switchboard over real sockets and reports what a room of
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

mod abuse;
mod attack;
mod chart;
pub mod outbox;
mod proc;

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

use crate::auth;
use crate::config::Config;
use crate::ids::{AccountId, UserId};

/// Connections per loopback source address before the next one is used. Linux's `connect`
/// draws from half of the ~28k ephemeral ports (the other half is kept for `bind`), and finding a
/// free one slows sharply as that half fills: 19,900 connections from one address took 7.9 s to
/// connect, from two 1.75 s.
const PER_SOURCE_ADDRESS: usize = 12_000;
/// Handshakes under way at once.
const CONNECTING_AT_ONCE: usize = 256;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The server's HTTP address (loopback); publishes go here.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Cluster mode: the nodes the WebSocket connections are spread over, round-robin
    /// (comma-separated HTTP addresses; default: `--url`).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// WebSocket connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Accounts the connections are spread over (one room each).
    #[arg(long, default_value_t = 1)]
    accounts: usize,
    /// Sessions per user (tabs).
    #[arg(long, default_value_t = 1)]
    tabs: usize,
    /// Events to publish.
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Publishes per second (default: as fast as `--in-flight` allows).
    #[arg(long)]
    rate: Option<f64>,
    /// Channels: each session follows one of `K` channels of its account (`bench:0`…), and each
    /// event is published to one of them in turn; deliveries to a session that does not follow
    /// the event's channel are counted (`wrong channel`: there must be none).
    #[arg(long)]
    channels: Option<usize>,
    /// Bytes of padding in each event's data.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// The server's process id, for its memory and CPU time (same machine only).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Runs the scenario for each of these connection counts instead of `--connections`.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<usize>,
    /// Where to write the JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where to write the sweep's SVG chart.
    #[arg(long, default_value = "bench.svg")]
    chart: PathBuf,
    /// Longest a scenario may take.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The abuse benchmark: `--connections` sessions receive `--rate` events a second, first
    /// alone, then while one client attacks at full speed (see the README's "Limits").
    #[arg(long)]
    abuse: bool,
    /// Seconds of each phase of `--abuse` (the baseline, then the attack).
    #[arg(long, default_value_t = 20.0)]
    abuse_seconds: f64,
    /// The attacks `--abuse` runs (comma-separated; default: all at once). One alone gives the
    /// server's CPU time per attempt.
    #[arg(long, value_enum, value_delimiter = ',')]
    attack: Vec<attack::Kind>,
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
    /// Channels the sessions were spread over (`--channels`), if any.
    pub channels: Option<usize>,
    /// Deliveries of a channel's event to a session that does not follow it.
    pub wrong_channel: u64,
    /// Server CPU time per publish, from the first publish to the last receipt.
    pub server_cpu_per_publish_us: Option<f64>,
}

/// What a connection's reader saw.
#[derive(Default)]
struct Received {
    seqs: Vec<u64>,
    latencies_ns: Vec<u64>,
    cross_account: u64,
    wrong_channel: u64,
    /// Nanoseconds since the bench started, at the last receipt.
    last_receipt_ns: u64,
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
    /// The channel it was published to (`--channels`).
    #[serde(default)]
    c: Option<usize>,
}

pub fn run(config: &Config, args: BenchArgs) -> Result<String, String> {
    // Each connection is a file descriptor; ask for as many as the system allows.
    let open_files = crate::server::raise_open_files_limit();
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

fn server_addr(url: &str) -> Result<SocketAddr, String> {
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
    let run_id = crate::ids::SessionId::random();
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
    let grant: &[&str] = if args.channels.is_some() {
        &["bench:*"]
    } else {
        &[]
    };
    let tokens = (0..connections)
        .map(|i| {
            let user = (i / accounts) / args.tabs.max(1);
            auth::mint_following(
                &config.jwt,
                &AccountId::new(&account_name(i % accounts)).expect("bench ids are valid"),
                &UserId::new(&format!("user-{user}")).expect("bench ids are valid"),
                args.timeout + Duration::from_secs(60),
                grant,
            )
            .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Session i follows channel (i / accounts) % K of its account.
    let channel_of = |i: usize| args.channels.map(|k| (i / accounts) % k.max(1));
    let connect_start = Instant::now();
    let mut readers = Vec::with_capacity(connections);
    for ((i, sink), token) in received.iter().enumerate().zip(tokens) {
        let account = i % accounts;
        let addr = nodes[i % nodes.len()];
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i / PER_SOURCE_ADDRESS) as u8));
        let reader = Reader {
            account,
            channel: channel_of(i),
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
    // Who receives event e: its account's sessions (those following its channel, with channels).
    let audience = |e: usize| -> (usize, Option<usize>) {
        (
            e % accounts,
            args.channels.map(|k| (e / accounts) % k.max(1)),
        )
    };
    let mut members: HashMap<(usize, Option<usize>), u64> = HashMap::new();
    for i in 0..connections {
        *members.entry((i % accounts, channel_of(i))).or_default() += 1;
    }
    let expected: u64 = (0..args.events)
        .map(|e| members.get(&audience(e)).copied().unwrap_or(0))
        .sum();
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
        let (account, channel) = audience(e);
        let mut event = bench_event(&account_name(account), account, started, &pad);
        if let Some(c) = channel {
            event["channel"] = json!(format!("bench:{c}"));
            event["data"]["c"] = json!(c);
        }
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
    let mut wrong_channel = 0;
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
        wrong_channel += sink.wrong_channel;
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
        channels: args.channels,
        wrong_channel,
        server_cpu_per_publish_us: match (cpu_before, cpu_after) {
            (Some(before), Some(after)) if args.events > 0 => {
                Some((after - before).as_secs_f64() * 1e6 / args.events as f64)
            }
            _ => None,
        },
    })
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket connection from `source` (a loopback address), following `channel` (`bench:N`)
/// when given, through the welcome frame.
async fn connect(
    addr: SocketAddr,
    source: IpAddr,
    token: &str,
    channel: Option<usize>,
) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    // Binding picks a port by searching the ones in use, which slows as they fill up; a plain
    // connect picks one per destination, cheaply. So bind only for the extra source addresses.
    if source != IpAddr::V4(Ipv4Addr::LOCALHOST) {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
    }
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let follow = channel.map_or(String::new(), |c| format!("&channels=bench:{c}"));
    let url = format!("ws://{addr}/ws?token={token}{follow}");
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
fn bench_event(account_id: &str, account: usize, started: Instant, pad: &str) -> serde_json::Value {
    json!({
        "account_id": account_id,
        "event": "bench",
        "data": {"t": started.elapsed().as_nanos() as u64, "a": account, "pad": pad},
    })
}

/// A publish of `event` with the configured API key.
fn publish(
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
struct Reader {
    account: usize,
    /// The channel it follows (`--channels`).
    channel: Option<usize>,
    started: Instant,
    sink: Arc<Mutex<Received>>,
    delivered: Arc<AtomicU64>,
    deadline: Instant,
}

impl Reader {
    /// Connects (holding one of `connecting`'s permits meanwhile, so that connects come in
    /// waves the server can take), says on `ready` whether it could, then reads its events.
    async fn run(
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
        let ws = match connect(addr, source, &token, self.channel).await {
            Ok(ws) => ws,
            Err(e) => {
                let _ = ready.send(Err(e)).await;
                return;
            }
        };
        drop(permit);
        let _ = ready.send(Ok(())).await;
        read_events(
            ws,
            (self.account, self.channel),
            self.started,
            self.sink,
            self.delivered,
            self.deadline,
        )
        .await;
    }
}

/// Waits until `connections` sessions have said they are connected.
async fn connected(
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
    (account, channel): (usize, Option<usize>),
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
            if data.c.is_some() && data.c != channel {
                sink.wrong_channel += 1;
            }
            delivered.fetch_add(1, Ordering::Relaxed);
        }
    };
    let _ = tokio::time::timeout_at(deadline.into(), read).await;
}

fn percentiles(samples: &mut [u64]) -> Percentiles {
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
        "connections  connect s  conn/s   deliveries  deliv/s     p50 ms  p90 ms  p99 ms  max ms  lost  dup  cross  RSS/idle conn  CPU/delivery  CPU/publish  channels  wrong channel\n",
    );
    for r in reports {
        let rss = r
            .server_rss_per_idle_connection_bytes
            .map_or("-".into(), |b| format!("{:.1} KiB", b as f64 / 1024.0));
        let cpu = r
            .server_cpu_per_delivery_us
            .map_or("-".into(), |us| format!("{us:.2} µs"));
        let per_publish = r
            .server_cpu_per_publish_us
            .map_or("-".into(), |us| format!("{us:.0} µs"));
        let channels = r.channels.map_or("-".into(), |k| k.to_string());
        out.push_str(&format!(
            "{:>11}  {:>9.2}  {:>7.0}  {:>10}  {:>10.0}  {:>6.1}  {:>6.1}  {:>6.1}  {:>6.1}  {:>4}  {:>3}  {:>5}  {:>13}  {:>12}  {:>11}  {:>8}  {:>13}\n",
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
            cpu,
            per_publish,
            channels,
            r.wrong_channel
        ));
    }
    out
}
