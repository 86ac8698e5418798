//! The room scenario (`switchboard bench`): drives a running Switchboard over real sockets and
//! reports what delivering to N sessions costs — connect rate, deliveries per second,
//! publish-to-receipt latency, lost, duplicated, cross-account and wrong-channel deliveries, and
//! (given the server's PID, on this machine) its memory per idle connection and CPU time per
//! delivery and per event.
//!
//! The sessions are spread over `--accounts` rooms and, with `--channels K`, over K channels of
//! each; events go to accounts (and channels) in turn, or at random (`--target random`); the
//! sessions use WebSockets or Server-Sent Events (`--transport`). With `--abuse`, [`abuse`]
//! measures the same sessions with and without an attacker beside them.
//!
//! Tokens are minted with the configured HS256 secret and events published with the configured
//! API key, so run it with the server's settings (the same environment, or the same directory in
//! development mode). Loopback only; every loop is bounded in count and time.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;

use switchboard::auth;
use switchboard::config::Config;
use switchboard::ids::{AccountId, UserId};

use crate::sessions::{self, Dial, Reader, Received, Transport};
use crate::{abuse, attack, chart, proc};

/// Connections per loopback source address before the next one is used. Linux's `connect`
/// draws from half of the ~28k ephemeral ports (the other half is kept for `bind`), and finding a
/// free one slows sharply as that half fills: 19,900 connections from one address took 7.9 s to
/// connect, from two 1.75 s.
const PER_SOURCE_ADDRESS: usize = 12_000;

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
    /// Channels per account: each session follows one (`bench:<n>`, in turn), and each event
    /// goes to one, so it reaches only that channel's followers (0: no channels).
    #[arg(long, default_value_t = 0)]
    pub channels: usize,
    /// Which account (and channel) each event goes to.
    #[arg(long, value_enum, default_value_t = Target::RoundRobin)]
    pub target: Target,
    /// How the sessions connect.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
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

/// Which account, and channel, each event goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Accounts in turn, then channels in turn: every room and channel gets its share.
    RoundRobin,
    /// Uniformly at random (a fixed seed, so runs compare).
    Random,
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
    pub transport: Transport,
    pub connections: usize,
    pub accounts: usize,
    pub channels: usize,
    pub target: Target,
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
    /// Deliveries to sessions that do not follow the event's channel.
    pub wrong_channel: u64,
    pub server_rss_per_idle_connection_bytes: Option<u64>,
    pub server_cpu_per_delivery_us: Option<f64>,
    /// Server CPU per published event: what one publish costs, whatever its audience.
    pub server_cpu_per_event_us: Option<f64>,
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

/// Who the sessions are: session i belongs to account i % accounts, follows channel
/// (i / accounts) % channels when there are channels, and is a tab of user
/// (i / accounts) / tabs, from loopback address 127.0.0.(1 + i / PER_SOURCE_ADDRESS).
struct Layout {
    run_id: String,
    connections: usize,
    accounts: usize,
    channels: usize,
    tabs: usize,
}

impl Layout {
    fn new(args: &BenchArgs, connections: usize) -> Self {
        Self {
            run_id: switchboard::ids::SessionId::random().to_string(),
            connections,
            accounts: args.accounts.max(1),
            channels: args.channels,
            tabs: args.tabs.max(1),
        }
    }

    fn account_name(&self, account: usize) -> String {
        format!("bench-{}-{account}", self.run_id)
    }

    fn channel_of(&self, i: usize) -> Option<usize> {
        (self.channels > 0).then(|| (i / self.accounts) % self.channels)
    }

    /// Sessions per (account, channel), indexed `account * max(channels, 1) + channel`.
    fn audiences(&self) -> Vec<u64> {
        let per_account = self.channels.max(1);
        let mut audiences = vec![0u64; self.accounts * per_account];
        for i in 0..self.connections {
            let account = i % self.accounts;
            audiences[account * per_account + self.channel_of(i).unwrap_or(0)] += 1;
        }
        audiences
    }

    /// Where each event goes: (account, channel).
    fn plan(&self, events: usize, target: Target) -> Vec<(usize, Option<usize>)> {
        let channels = self.channels;
        let mut random = SplitMix(0x5eed);
        (0..events)
            .map(|e| match target {
                Target::RoundRobin => (
                    e % self.accounts,
                    (channels > 0).then(|| (e / self.accounts) % channels),
                ),
                Target::Random => (
                    random.below(self.accounts),
                    (channels > 0).then(|| random.below(channels)),
                ),
            })
            .collect()
    }

    /// The token and the connect URL's query of session `i`.
    fn query(&self, config: &Config, i: usize, ttl: Duration) -> Result<String, String> {
        let user = (i / self.accounts) / self.tabs;
        let account =
            AccountId::new(&self.account_name(i % self.accounts)).map_err(|e| e.to_string())?;
        let user = UserId::new(&format!("user-{user}")).map_err(|e| e.to_string())?;
        let channel = self.channel_of(i).map(|c| format!("bench:{c}"));
        let grant: Vec<String> = channel.iter().cloned().collect();
        let token = auth::mint_with_channels(&config.jwt, &account, &user, ttl, &grant)
            .map_err(|e| e.to_string())?;
        Ok(match channel {
            Some(channel) => format!("token={token}&channels={channel}"),
            None => format!("token={token}"),
        })
    }
}

/// splitmix64: a fixed sequence of well-spread numbers, for `--target random`.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n.max(1) as u64) as usize
    }
}

/// The sessions of one scenario, reading.
struct Connected {
    received: Vec<Arc<Mutex<Received>>>,
    delivered: Arc<AtomicU64>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    seconds: f64,
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
    let layout = Layout::new(args, connections);
    let started = Instant::now();
    let rss_before = args.server_pid.and_then(proc::rss_bytes);
    let sessions = connect_all(config, args, &layout, &nodes, started, deadline).await?;
    // Let the server settle before reading its idle footprint.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = args.server_pid.and_then(proc::rss_bytes);

    let plan = layout.plan(args.events, args.target);
    let audiences = layout.audiences();
    let expected: u64 = plan
        .iter()
        .map(|&(a, c)| audiences[a * layout.channels.max(1) + c.unwrap_or(0)])
        .sum();
    let cpu_before = args.server_pid.and_then(proc::cpu_time);
    let first_publish = started.elapsed();
    publish_all(config, args, &layout, &plan, started).await?;
    // Wait (bounded) for every delivery.
    while sessions.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu = args
        .server_pid
        .and_then(proc::cpu_time)
        .zip(cpu_before)
        .map(|(after, before)| (after - before).as_secs_f64() * 1e6);
    tokio::time::sleep(Duration::from_millis(200)).await; // stragglers, duplicates
    let seen = tally(&sessions);
    let deliveries = sessions.delivered.load(Ordering::Relaxed);
    // First publish to last receipt.
    let span = (seen.last_receipt_ns as f64 / 1e9 - first_publish.as_secs_f64()).max(1e-9);
    Ok(Report {
        transport: args.transport,
        connections,
        accounts: layout.accounts,
        channels: layout.channels,
        target: args.target,
        events: args.events,
        in_flight: args.in_flight,
        payload_bytes: args.payload_bytes,
        connect_seconds: sessions.seconds,
        connects_per_sec: connections as f64 / sessions.seconds.max(1e-9),
        expected_deliveries: expected,
        deliveries,
        deliveries_per_sec: deliveries as f64 / span,
        latency_ms: seen.latency_ms,
        lost: expected.saturating_sub(seen.unique),
        duplicated: seen.duplicated,
        cross_account: seen.cross_account,
        wrong_channel: seen.wrong_channel,
        server_rss_per_idle_connection_bytes: rss_before
            .zip(rss_idle)
            .map(|(before, idle)| idle.saturating_sub(before) / connections.max(1) as u64),
        server_cpu_per_delivery_us: cpu
            .filter(|_| deliveries > 0)
            .map(|us| us / deliveries as f64),
        server_cpu_per_event_us: cpu
            .filter(|_| args.events > 0)
            .map(|us| us / args.events as f64),
    })
}

/// Opens every session of `layout`, spread over `nodes`, and starts its reader.
async fn connect_all(
    config: &Config,
    args: &BenchArgs,
    layout: &Layout,
    nodes: &[SocketAddr],
    started: Instant,
    deadline: Instant,
) -> Result<Connected, String> {
    let connections = layout.connections;
    let received: Vec<Arc<Mutex<Received>>> = (0..connections).map(|_| Arc::default()).collect();
    let delivered = Arc::new(AtomicU64::new(0));
    let semaphore = Arc::new(Semaphore::new(sessions::CONNECTING_AT_ONCE));
    let (ready_tx, mut ready_rx) =
        tokio::sync::mpsc::channel::<Result<(), String>>(connections.max(1));
    // Tokens first: minting them is the tool's work, not the server's, and stays off the clock.
    let ttl = args.timeout + Duration::from_secs(60);
    let queries = (0..connections)
        .map(|i| layout.query(config, i, ttl))
        .collect::<Result<Vec<_>, _>>()?;
    let sources = connections.div_ceil(PER_SOURCE_ADDRESS).max(1);
    let source = |n: usize| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + n as u8));
    let sse_clients = match args.transport {
        Transport::Sse => (0..sources)
            .map(|n| sessions::sse_client(source(n)))
            .collect::<Result<Vec<_>, _>>()?,
        Transport::Ws => Vec::new(),
    };
    let connect_start = Instant::now();
    let mut readers = Vec::with_capacity(connections);
    for ((i, sink), query) in received.iter().enumerate().zip(queries) {
        let reader = Reader {
            account: i % layout.accounts,
            channel: layout.channel_of(i),
            started,
            sink: sink.clone(),
            delivered: delivered.clone(),
            deadline,
        };
        let dial = match args.transport {
            Transport::Ws => Dial::Ws {
                source: source(i / PER_SOURCE_ADDRESS),
            },
            Transport::Sse => Dial::Sse {
                client: sse_clients[i / PER_SOURCE_ADDRESS].clone(),
            },
        };
        let addr = nodes[i % nodes.len()];
        let ready = ready_tx.clone();
        readers.push(tokio::spawn(reader.run(
            semaphore.clone(),
            addr,
            dial,
            query,
            ready,
        )));
    }
    drop(ready_tx);
    sessions::connected(&mut ready_rx, connections, deadline).await?;
    Ok(Connected {
        received,
        delivered,
        readers,
        seconds: connect_start.elapsed().as_secs_f64(),
    })
}

/// Publishes the events of `plan`, `--in-flight` at a time (at `--rate`, if given).
async fn publish_all(
    config: &Config,
    args: &BenchArgs,
    layout: &Layout,
    plan: &[(usize, Option<usize>)],
    started: Instant,
) -> Result<(), String> {
    let client = reqwest::Client::new();
    let publish_url = format!("{}/api/v1/publish", args.url.trim_end_matches('/'));
    let pad = "x".repeat(args.payload_bytes);
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / r.max(0.001)));
    let in_flight = Arc::new(Semaphore::new(args.in_flight.max(1)));
    let first = Instant::now();
    let mut publishes = Vec::with_capacity(plan.len());
    for (e, &(account, channel)) in plan.iter().enumerate() {
        if let Some(interval) = interval {
            tokio::time::sleep_until((first + interval * e as u32).into()).await;
        }
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let mut event = bench_event(&layout.account_name(account), account, started, &pad);
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
    Ok(())
}

/// What all the sessions saw, together.
struct Seen {
    unique: u64,
    duplicated: u64,
    cross_account: u64,
    wrong_channel: u64,
    last_receipt_ns: u64,
    latency_ms: Percentiles,
}

/// Stops the readers and adds up what they saw.
fn tally(sessions: &Connected) -> Seen {
    for reader in &sessions.readers {
        reader.abort();
    }
    let mut latencies = Vec::new();
    let mut seen = Seen {
        unique: 0,
        duplicated: 0,
        cross_account: 0,
        wrong_channel: 0,
        last_receipt_ns: 0,
        latency_ms: Percentiles::default(),
    };
    for sink in &sessions.received {
        let sink = sink.lock().expect("a reader panicked");
        let mut seqs = HashSet::with_capacity(sink.seqs.len());
        for seq in &sink.seqs {
            if !seqs.insert(*seq) {
                seen.duplicated += 1;
            }
        }
        seen.unique += seqs.len() as u64;
        seen.cross_account += sink.cross_account;
        seen.wrong_channel += sink.wrong_channel;
        latencies.extend_from_slice(&sink.latencies_ns);
        seen.last_receipt_ns = seen.last_receipt_ns.max(sink.last_receipt_ns);
    }
    seen.latency_ms = percentiles(&mut latencies);
    seen
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
        "transport  connections  connect s  conn/s   deliveries  deliv/s     p50 ms  p90 ms  p99 ms  max ms  lost  dup  cross  wrong ch  RSS/idle conn  CPU/delivery  CPU/event\n",
    );
    for r in reports {
        let rss = r
            .server_rss_per_idle_connection_bytes
            .map_or("-".into(), |b| format!("{:.1} KiB", b as f64 / 1024.0));
        let us = |v: Option<f64>| v.map_or("-".into(), |us| format!("{us:.2} µs"));
        out.push_str(&format!(
            "{:>9}  {:>11}  {:>9.2}  {:>7.0}  {:>10}  {:>10.0}  {:>6.1}  {:>6.1}  {:>6.1}  {:>6.1}  {:>4}  {:>3}  {:>5}  {:>8}  {:>13}  {:>12}  {:>9}\n",
            match r.transport {
                Transport::Ws => "ws",
                Transport::Sse => "sse",
            },
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
            r.wrong_channel,
            rss,
            us(r.server_cpu_per_delivery_us),
            us(r.server_cpu_per_event_us),
        ));
    }
    out
}
