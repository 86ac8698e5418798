//! The PostgreSQL outbox (docs/outbox.md): the application inserts events into a table in its own
//! transactions; this consumer publishes each committed row once, in order, through the same
//! [`Publisher`] as `POST /api/v1/publish`, then deletes it.
//!
//! A service beside the API: it uses `config`, `ids`, `protocol` (the event-name rule) and the
//! publisher; the engine does not know it exists. It runs on a thread of its own, the blocking
//! executor for its diesel connections, so no actix thread waits on the outbox database.
//!
//! - [`ddl`] — the tables, index and trigger, created when missing.
//! - `claim` — one round: claim accounts, publish their rows in order, delete, move aside.
//! - `row` — a row as a publish request, or why it cannot be one.

mod claim;
pub mod ddl;
mod row;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

use crate::config::{Database, OutboxConfig};
use crate::publisher::{PublishError, Published, Publisher};
use claim::{Claimer, PublishFuture};

/// How often the listening connection is checked for a notification. Diesel hands out the
/// notifications a connection has received but has no way to wait for one, so the thread looks
/// every tick: a non-blocking read of a socket, no query.
const TICK: Duration = Duration::from_millis(2);
/// First wait before looking again at rows held back by an older transaction (or another node's
/// account); doubled up to [`HELD_BACK_MAX`] while they stay held back. The older transaction may
/// be anyone's on the PostgreSQL server, usually a short one: looking again soon is what keeps
/// commit-to-delivery latency low, and costs one indexed query per look.
const HELD_BACK_FIRST: Duration = Duration::from_millis(2);
const HELD_BACK_MAX: Duration = Duration::from_millis(20);
/// Wait before reconnecting after the outbox database failed; doubled up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Stops the consumer when dropped (with the actix system that started it).
pub struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Starts the consumer's thread. `max_data`: the largest event data a publish may carry.
pub fn start(config: OutboxConfig, publisher: Publisher, max_data: usize) -> Stop {
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = Consumer {
        claimer: Claimer {
            table: config.table.clone(),
            batch: i64::try_from(config.batch).unwrap_or(i64::MAX),
            max_data,
        },
        config,
        publisher,
        stop: stop.clone(),
    };
    std::thread::Builder::new()
        .name("switchboard-outbox".into())
        .spawn(move || consumer.run())
        .expect("the OS starts a thread");
    Stop(stop)
}

struct Consumer {
    config: OutboxConfig,
    claimer: Claimer,
    publisher: Publisher,
    stop: Arc<AtomicBool>,
}

/// Why the consumer reconnects.
#[derive(Debug, thiserror::Error)]
enum OutboxError {
    #[error("cannot connect: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("cannot start a runtime for the publishes' answers: {0}")]
    Runtime(std::io::Error),
}

impl Consumer {
    fn run(self) {
        let described = Database::Postgres(self.config.url.expose().to_owned()).describe();
        log::info!(
            "outbox: consuming table {} in {described}",
            self.config.table
        );
        let mut retry = RETRY_FIRST;
        while !self.stopped() {
            match self.consume() {
                Ok(()) => return,
                Err(e) => {
                    log::error!(
                        "outbox: {e}; reconnecting in {}",
                        humantime::format_duration(retry)
                    );
                    std::thread::sleep(retry);
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Connects, then publishes whenever woken, until stopped (`Ok`) or the database fails.
    fn consume(&self) -> Result<(), OutboxError> {
        let url = self.config.url.expose();
        let table = &self.config.table;
        let mut conn = PgConnection::establish(url)?;
        if ddl::ensure(&mut conn, table)? {
            log::info!("outbox: created table {table} and {table}_refused");
        }
        let mut listener = PgConnection::establish(url)?;
        listener.batch_execute(&format!("LISTEN {table}"))?;
        // The publishes' answers (and their pacing) are awaited here, on this thread.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(OutboxError::Runtime)?;
        let block_on = |futures: Vec<PublishFuture>| -> Vec<Result<Published, PublishError>> {
            runtime.block_on(futures_util::future::join_all(futures))
        };
        let mut held_back_wait = HELD_BACK_FIRST;
        while !self.stopped() {
            let round = self.claimer.round(&mut conn, &self.publisher, block_on)?;
            if round.published + round.refused > 0 {
                log::debug!(
                    "outbox: published {} row(s), refused {}, left {}",
                    round.published,
                    round.refused,
                    round.left
                );
                held_back_wait = HELD_BACK_FIRST;
                if round.left == 0 {
                    continue;
                }
            }
            // Nothing to take now: wait for a notification, the poll interval, or — when rows
            // are held back behind an older transaction or another node's account, or some were
            // left — a short while.
            let wait = if round.contended || round.left > 0 || self.claimer.held_back(&mut conn)? {
                let wait = held_back_wait;
                held_back_wait = (held_back_wait * 2)
                    .min(HELD_BACK_MAX)
                    .min(self.config.poll_interval);
                wait
            } else {
                held_back_wait = HELD_BACK_FIRST;
                self.config.poll_interval
            };
            self.wait(&mut listener, wait)?;
        }
        Ok(())
    }

    /// Returns on a notification, after `wait`, or when stopped.
    fn wait(&self, listener: &mut PgConnection, wait: Duration) -> Result<(), OutboxError> {
        let deadline = Instant::now() + wait;
        loop {
            let mut notified = false;
            for notification in listener.notifications_iter() {
                notification?;
                notified = true;
            }
            if notified || self.stopped() || Instant::now() >= deadline {
                return Ok(());
            }
            std::thread::sleep(TICK);
        }
    }
}
