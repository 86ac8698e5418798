//! `switchboard bench --abuse`: legitimate sessions receive events published at a steady rate,
//! first alone (the baseline), then while one attacker ([`crate::attack`]) does at full speed what
//! an unauthenticated client can do; reports the server's peak memory and descriptors in each
//! phase, lost and duplicated events (which must be 0), and the legitimate latency with and
//! without the attack.
//!
//! The three kinds of client come from three loopback addresses, so that per-address limits see
//! them as different clients: publishes from 127.0.0.1, the sessions from 127.0.0.2, the attacker
//! from 127.0.0.3. Uses the rest of [`super`] (connecting, reading events, percentiles, `/proc`).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::attack::{self, Tally, Target};
use crate::proc;
use crate::room::{bench_event, percentiles, publish, server_addr, BenchArgs, Percentiles};
use crate::sessions::{self, connected, Dial, Reader, Received};
use switchboard::auth;
use switchboard::config::Config;
use switchboard::ids::{AccountId, UserId};

const SESSIONS_FROM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const ATTACKER_FROM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// Events per second when `--rate` is not given.
const DEFAULT_RATE: f64 = 20.0;
/// How often the server's memory and descriptors are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// One phase: the baseline, or the attack.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub events: u64,
    pub publish_failures: u64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub cross_account: u64,
    pub latency_ms: Percentiles,
    pub server_rss_peak_bytes: Option<u64>,
    pub server_fds_peak: Option<u64>,
    pub server_cpu_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AbuseReport {
    pub sessions: usize,
    pub accounts: usize,
    pub events_per_sec: f64,
    pub phase_seconds: f64,
    pub server_rss_idle_bytes: Option<u64>,
    pub server_fds_idle: Option<u64>,
    pub phases: Vec<Phase>,
    /// The attack phase's p99 latency over the baseline's.
    pub p99_factor: f64,
    pub attack: Vec<Tally>,
}

/// The sessions, as the phases see them.
struct Sessions {
    received: Vec<Arc<Mutex<Received>>>,
    delivered: Arc<AtomicU64>,
    /// Sessions per account.
    members: Vec<u64>,
    account_name: Box<dyn Fn(usize) -> String>,
    started: Instant,
}

pub fn run(config: &Config, args: &BenchArgs) -> Result<AbuseReport, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(abuse(config, args))
}

async fn abuse(config: &Config, args: &BenchArgs) -> Result<AbuseReport, String> {
    let server = server_addr(&args.url)?;
    let deadline = Instant::now() + args.timeout;
    let seconds = Duration::from_secs_f64(args.abuse_seconds.max(0.1));
    let rate = args.rate.unwrap_or(DEFAULT_RATE).max(0.1);
    let sessions = open_sessions(config, args, server, deadline).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = args.server_pid;
    let rss_idle = pid.and_then(proc::rss_bytes);
    let fds_idle = pid.and_then(proc::open_files);

    let (baseline, _) = phase(
        "baseline", config, args, &sessions, rate, seconds, None, deadline,
    )
    .await?;
    let target = Target {
        server,
        source: ATTACKER_FROM,
    };
    let (attacked, tallies) = phase(
        "attack",
        config,
        args,
        &sessions,
        rate,
        seconds,
        Some(target),
        deadline,
    )
    .await?;
    let p99_factor = attacked.latency_ms.p99 / baseline.latency_ms.p99.max(1e-9);
    Ok(AbuseReport {
        sessions: sessions.received.len(),
        accounts: sessions.members.len(),
        events_per_sec: rate,
        phase_seconds: seconds.as_secs_f64(),
        server_rss_idle_bytes: rss_idle,
        server_fds_idle: fds_idle,
        phases: vec![baseline, attacked],
        p99_factor,
        attack: tallies,
    })
}

/// Connects `--connections` sessions over `--accounts` accounts, each reading its events.
async fn open_sessions(
    config: &Config,
    args: &BenchArgs,
    server: std::net::SocketAddr,
    deadline: Instant,
) -> Result<Sessions, String> {
    let connections = args.connections;
    let accounts = args.accounts.max(1);
    let run_id = switchboard::ids::SessionId::random();
    let account_name = move |a: usize| format!("abuse-{run_id}-{a}");
    let started = Instant::now();
    let received: Vec<Arc<Mutex<Received>>> = (0..connections).map(|_| Arc::default()).collect();
    let delivered = Arc::new(AtomicU64::new(0));
    let connecting = Arc::new(Semaphore::new(sessions::CONNECTING_AT_ONCE));
    let (ready_tx, mut ready_rx) =
        tokio::sync::mpsc::channel::<Result<(), String>>(connections.max(1));
    for (i, sink) in received.iter().enumerate() {
        let account = i % accounts;
        let token = auth::mint(
            &config.jwt,
            &AccountId::new(&account_name(account)).map_err(|e| e.to_string())?,
            &UserId::new(&format!("user-{}", i / accounts)).map_err(|e| e.to_string())?,
            args.timeout + Duration::from_secs(60),
        )
        .map_err(|e| e.to_string())?;
        let reader = Reader {
            account,
            channel: None,
            started,
            sink: sink.clone(),
            delivered: delivered.clone(),
            deadline,
        };
        let dial = Dial::Ws {
            source: IpAddr::V4(SESSIONS_FROM),
        };
        let query = format!("token={token}");
        tokio::spawn(reader.run(connecting.clone(), server, dial, query, ready_tx.clone()));
    }
    drop(ready_tx);
    connected(&mut ready_rx, connections, deadline).await?;
    let members = (0..accounts)
        .map(|a| (connections / accounts + usize::from(a < connections % accounts)) as u64)
        .collect();
    Ok(Sessions {
        received,
        delivered,
        members,
        account_name: Box::new(account_name),
        started,
    })
}

/// Publishes at `rate` for `seconds` (with the attacker running, if `attack`), waits for every
/// delivery, and reads what the sessions received meanwhile.
#[allow(clippy::too_many_arguments)]
async fn phase(
    name: &'static str,
    config: &Config,
    args: &BenchArgs,
    sessions: &Sessions,
    rate: f64,
    seconds: Duration,
    attack: Option<Target>,
    deadline: Instant,
) -> Result<(Phase, Vec<Tally>), String> {
    let marks: Vec<usize> = sessions
        .received
        .iter()
        .map(|r| r.lock().map_or(0, |r| r.seqs.len()))
        .collect();
    let delivered_before = sessions.delivered.load(Ordering::Relaxed);
    let pid = args.server_pid;
    let cpu_before = pid.and_then(proc::cpu_time);
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn(sample_peaks(pid, sampling.clone()));
    let start = Instant::now();
    let kinds = match args.attack.is_empty() {
        true => attack::Kind::ALL.to_vec(),
        false => args.attack.clone(),
    };
    let attacker = attack.map(|target| {
        let until = start + seconds;
        std::thread::spawn(move || attack::run(target, until, &kinds))
    });

    let (events, expected, failures) =
        publish_steadily(config, args, sessions, rate, seconds, start).await;
    let tallies = match attacker {
        Some(attacker) => tokio::task::spawn_blocking(move || attacker.join())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "the attacker panicked".to_owned())??,
        None => Vec::new(),
    };
    // Every delivery, within the bench's deadline.
    while sessions.delivered.load(Ordering::Relaxed) - delivered_before < expected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // stragglers, duplicates
    let cpu_after = pid.and_then(proc::cpu_time);
    sampling.store(false, Ordering::Relaxed);
    let (rss_peak, fds_peak) = sampler.await.map_err(|e| e.to_string())?;

    let seen = seen_since(sessions, marks)?;
    Ok((
        Phase {
            name,
            events: events as u64,
            publish_failures: failures,
            expected_deliveries: expected,
            deliveries: sessions.delivered.load(Ordering::Relaxed) - delivered_before,
            lost: expected.saturating_sub(seen.unique),
            duplicated: seen.duplicated,
            cross_account: seen.cross_account,
            latency_ms: seen.latency_ms,
            server_rss_peak_bytes: rss_peak,
            server_fds_peak: fds_peak,
            server_cpu_seconds: match (cpu_before, cpu_after) {
                (Some(before), Some(after)) => Some((after - before).as_secs_f64()),
                _ => None,
            },
        },
        tallies,
    ))
}

/// Publishes at a steady `rate` for `seconds` from `start` (event e is due at start + e / rate),
/// to the accounts in turn: the events published, the deliveries they call for, the publishes
/// that failed.
async fn publish_steadily(
    config: &Config,
    args: &BenchArgs,
    sessions: &Sessions,
    rate: f64,
    seconds: Duration,
    start: Instant,
) -> (usize, u64, u64) {
    let client = reqwest::Client::new();
    let publish_url = format!("{}/api/v1/publish", args.url.trim_end_matches('/'));
    let pad = "x".repeat(args.payload_bytes);
    let in_flight = Arc::new(Semaphore::new(args.in_flight.max(1)));
    let events = (seconds.as_secs_f64() * rate).ceil() as usize;
    let mut publishes = Vec::with_capacity(events);
    for e in 0..events {
        tokio::time::sleep_until((start + Duration::from_secs_f64(e as f64 / rate)).into()).await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let account = e % sessions.members.len();
        let event = bench_event(
            &(sessions.account_name)(account),
            account,
            sessions.started,
            &pad,
        );
        let request = publish(&client, &publish_url, config, args.timeout, event);
        publishes.push(tokio::spawn(async move {
            let ok = request.send().await.is_ok_and(|r| r.status().is_success());
            drop(permit);
            (account, ok)
        }));
    }
    let mut expected = 0;
    let mut failures = 0;
    for publish in publishes {
        match publish.await {
            Ok((account, true)) => expected += sessions.members[account],
            _ => failures += 1,
        }
    }
    (events, expected, failures)
}

/// What the sessions saw after `marks` (how much each had seen before).
struct Seen {
    unique: u64,
    duplicated: u64,
    cross_account: u64,
    latency_ms: Percentiles,
}

fn seen_since(sessions: &Sessions, marks: Vec<usize>) -> Result<Seen, String> {
    let (mut unique, mut duplicated, mut cross) = (0u64, 0u64, 0u64);
    let mut latencies = Vec::new();
    for (sink, mark) in sessions.received.iter().zip(marks) {
        let sink = sink.lock().map_err(|_| "a reader panicked")?;
        let mut seen = HashSet::new();
        for seq in &sink.seqs[mark.min(sink.seqs.len())..] {
            if !seen.insert(*seq) {
                duplicated += 1;
            }
        }
        unique += seen.len() as u64;
        cross += sink.cross_account;
        latencies.extend_from_slice(&sink.latencies_ns[mark.min(sink.latencies_ns.len())..]);
    }
    Ok(Seen {
        unique,
        duplicated,
        cross_account: cross,
        latency_ms: percentiles(&mut latencies),
    })
}

/// The highest resident memory and descriptor count of `pid`, read every [`SAMPLE_EVERY`]
/// while `sampling`.
async fn sample_peaks(pid: Option<u32>, sampling: Arc<AtomicBool>) -> (Option<u64>, Option<u64>) {
    let Some(pid) = pid else {
        return (None, None);
    };
    let (mut rss, mut fds) = (None, None);
    while sampling.load(Ordering::Relaxed) {
        rss = rss.max(proc::rss_bytes(pid));
        fds = fds.max(proc::open_files(pid));
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    (rss, fds)
}

/// The report as text.
pub fn table(report: &AbuseReport) -> String {
    let mib = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
    let count = |n: Option<u64>| n.map_or("-".into(), |n| n.to_string());
    let mut out = format!(
        "abuse benchmark: {} sessions in {} accounts, {} events/s, {:.0} s per phase; \
         server idle: RSS {}, {} fds\n",
        report.sessions,
        report.accounts,
        report.events_per_sec,
        report.phase_seconds,
        mib(report.server_rss_idle_bytes),
        count(report.server_fds_idle),
    );
    out.push_str(
        "phase     events  failed  deliveries  lost  dup  cross  p50 ms  p99 ms  max ms  RSS peak    fds peak  CPU s\n",
    );
    for p in &report.phases {
        out.push_str(&format!(
            "{:<8}  {:>6}  {:>6}  {:>10}  {:>4}  {:>3}  {:>5}  {:>6.1}  {:>6.1}  {:>6.1}  {:>10}  {:>8}  {:>5}\n",
            p.name,
            p.events,
            p.publish_failures,
            p.deliveries,
            p.lost,
            p.duplicated,
            p.cross_account,
            p.latency_ms.p50,
            p.latency_ms.p99,
            p.latency_ms.max,
            mib(p.server_rss_peak_bytes),
            count(p.server_fds_peak),
            p.server_cpu_seconds.map_or("-".into(), |s| format!("{s:.1}")),
        ));
    }
    out.push_str(&format!(
        "p99 under attack / baseline: {:.2}x\n",
        report.p99_factor
    ));
    out.push_str("attack                          attempts   refused   MiB sent\n");
    for t in &report.attack {
        out.push_str(&format!(
            "{:<30}  {:>8}  {:>8}  {:>9.1}\n",
            t.kind,
            t.attempts,
            t.refused,
            t.bytes_sent as f64 / 1048576.0
        ));
    }
    // One attack alone: the server's CPU time is (nearly all) its.
    if let ([t], Some(attacked), Some(baseline)) = (
        report.attack.as_slice(),
        report.phases.last().and_then(|p| p.server_cpu_seconds),
        report.phases.first().and_then(|p| p.server_cpu_seconds),
    ) {
        let cpu = (attacked - baseline).max(0.0);
        out.push_str(&format!(
            "server CPU for the attack: {cpu:.2} s, {:.3} ms per attempt\n",
            cpu * 1e3 / t.attempts.max(1) as f64
        ));
    }
    out
}
