//! `switchboard bench-outbox`: measures a running Switchboard's outbox consumer (docs/outbox.md)
//! from the application's side — rows inserted into the outbox table, events received over
//! WebSockets, one per account:
//!
//! - throughput: a backlog of `--rows` rows committed at once, timed from the commit until every
//!   event has arrived;
//! - latency: `--latency-rows` rows, one transaction each at `--rate` per second, each timed from
//!   its commit to its arrival (p50, p99, max).
//!
//! Runs with the server's settings (`SWITCHBOARD_OUTBOX_URL` or `DATABASE_URL`,
//! `SWITCHBOARD_OUTBOX_TABLE`, the JWT secret). Loopback only; every loop is bounded in count and
//! time.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use switchboard::auth;
use switchboard::config::{Config, Database};
use switchboard::ids::{AccountId, UserId};

#[derive(Debug, Clone, clap::Args)]
pub struct OutboxBenchArgs {
    /// The server's HTTP address (loopback).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Rows of the throughput run, committed in one transaction.
    #[arg(long, default_value_t = 50_000)]
    rows: usize,
    /// Accounts the rows are spread over, one WebSocket each.
    #[arg(long, default_value_t = 10)]
    accounts: usize,
    /// Rows of the latency run, one transaction each.
    #[arg(long, default_value_t = 500)]
    latency_rows: usize,
    /// Rows per second of the latency run.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
}

/// Longest the tool waits for one run's events.
const RUN_LIMIT: Duration = Duration::from_secs(300);

pub fn run(config: &Config, args: OutboxBenchArgs) -> Result<String, String> {
    let outbox_url = match (&config.outbox, &config.database) {
        (Some(outbox), _) => outbox.url.expose().to_owned(),
        (None, Database::Postgres(url)) => url.clone(),
        (None, Database::Sqlite(_)) => {
            return Err(
                "set SWITCHBOARD_OUTBOX_URL (or DATABASE_URL) to the outbox's database".into(),
            )
        }
    };
    let table = config
        .outbox
        .as_ref()
        .map_or("switchboard_outbox".to_owned(), |o| o.table.to_string());
    if args.accounts == 0 || args.rate <= 0.0 {
        return Err("--accounts and --rate must be positive".into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let run_id = switchboard::ids::random_id("ob");
    let accounts: Vec<String> = (0..args.accounts)
        .map(|a| format!("{run_id}-{a}"))
        .collect();
    let mut db = PgConnection::establish(&outbox_url).map_err(|e| e.to_string())?;
    let ws_base = args.url.replacen("http", "ws", 1);

    // Throughput: one transaction of `rows` rows, timed from its commit.
    let mut sockets = runtime.block_on(connect_all(config, &ws_base, &accounts))?;
    db.batch_execute("BEGIN").map_err(|e| e.to_string())?;
    diesel::sql_query(format!(
        "INSERT INTO {table} (account_id, event, data) \
         SELECT $1 || '-' || (i % $2), 'bench', jsonb_build_object('i', i, 'pad', repeat('x', 200)) \
         FROM generate_series(0, $3 - 1) AS i"
    ))
    .bind::<Text, _>(&run_id)
    .bind::<BigInt, _>(args.accounts as i64)
    .bind::<BigInt, _>(args.rows as i64)
    .execute(&mut db)
    .map_err(|e| e.to_string())?;
    db.batch_execute("COMMIT").map_err(|e| e.to_string())?;
    let committed = Instant::now();
    let received = runtime.block_on(receive(&mut sockets, args.rows, |_, _| {}))?;
    let elapsed = committed.elapsed();
    let throughput = received as f64 / elapsed.as_secs_f64();

    // Latency: one row at a time, at `rate`, each timed from its commit to its arrival.
    let (commits, arrivals) = runtime.block_on(latency(
        &mut db,
        &table,
        &mut sockets,
        &accounts,
        args.latency_rows,
        args.rate,
    ))?;
    let mut latencies: Vec<Duration> = commits
        .iter()
        .zip(&arrivals)
        .filter_map(|(c, a)| Some(a.as_ref()?.saturating_duration_since(*c)))
        .collect();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(format!(
        "throughput: {received} rows in {:.3} s = {throughput:.0} rows/s ({} accounts)\n\
         latency (commit → delivery, {} rows at {}/s): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        elapsed.as_secs_f64(),
        args.accounts,
        latencies.len(),
        args.rate,
        at(0.5),
        at(0.99),
        at(1.0),
    ))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_all(config: &Config, base: &str, accounts: &[String]) -> Result<Vec<Ws>, String> {
    let mut sockets = Vec::new();
    for account in accounts {
        let account = AccountId::new(account).map_err(|e| e.to_string())?;
        let user = UserId::new("bench").map_err(|e| e.to_string())?;
        let token = auth::mint(&config.jwt, &account, &user, Duration::from_secs(3600))
            .map_err(|e| e.to_string())?;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{base}/ws?token={token}"))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // The welcome frame.
        ws.next()
            .await
            .ok_or("closed before its welcome")?
            .map_err(|e| e.to_string())?;
        sockets.push(ws);
    }
    Ok(sockets)
}

/// Reads event frames from every socket until `n` have come; `seen(i, at)` is told each
/// event's `data.i`.
async fn receive(
    sockets: &mut [Ws],
    n: usize,
    mut seen: impl FnMut(usize, Instant),
) -> Result<usize, String> {
    let deadline = tokio::time::Instant::now() + RUN_LIMIT;
    let mut streams = futures_util::stream::select_all(sockets.iter_mut());
    let mut count = 0;
    while count < n {
        let frame = tokio::time::timeout_at(deadline, streams.next())
            .await
            .map_err(|_| format!("{count} of {n} events within {RUN_LIMIT:?}"))?
            .ok_or("the sockets closed")?
            .map_err(|e| e.to_string())?;
        let Message::Text(text) = frame else { continue };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if value["type"] == "event" {
            if let Some(i) = value["data"]["i"].as_u64() {
                seen(i as usize, Instant::now());
            }
            count += 1;
        }
    }
    Ok(count)
}

/// Inserts `n` rows, one transaction each, at `rate`, while receiving them.
async fn latency(
    db: &mut PgConnection,
    table: &str,
    sockets: &mut [Ws],
    accounts: &[String],
    n: usize,
    rate: f64,
) -> Result<(Vec<Instant>, Vec<Option<Instant>>), String> {
    let mut commits = Vec::with_capacity(n);
    let mut arrivals = vec![None; n];
    let every = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    for i in 0..n {
        // Receive while waiting for the next row's turn.
        let wait = next.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(
            wait,
            receive(sockets, usize::MAX, |j, at| {
                if let Some(slot) = arrivals.get_mut(j) {
                    *slot = Some(at);
                }
            }),
        )
        .await;
        diesel::sql_query(format!(
            "INSERT INTO {table} (account_id, event, data) \
             VALUES ($1, 'latency', jsonb_build_object('i', $2::bigint))"
        ))
        .bind::<Text, _>(&accounts[i % accounts.len()])
        .bind::<BigInt, _>(i as i64)
        .execute(db)
        .map_err(|e| e.to_string())?;
        commits.push(Instant::now());
        next += every;
    }
    let missing = arrivals.iter().filter(|a| a.is_none()).count();
    if missing > 0 {
        receive(sockets, missing, |j, at| {
            if let Some(slot) = arrivals.get_mut(j) {
                *slot = Some(at);
            }
        })
        .await?;
    }
    Ok((commits, arrivals))
}
