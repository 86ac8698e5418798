//! Storage: the connection pool, the embedded migrations, the write transaction, and the
//! queries (one module per table group).
//!
//! Diesel is synchronous. Every query runs through [`Store::run`], which moves it to the async
//! runtime's blocking thread pool (tokio's, which actix runs on; the store names no actix), so no actor or request handler ever waits on the database on its own
//! thread. Every write that touches an account goes through [`write`], which serializes writers
//! per account — that is what makes sequence numbers gap-free and committed in order.

pub mod connection;
pub mod conversations;
pub mod deliveries;
pub mod events;
pub mod integrations;
pub mod notifications;
pub mod presence;
pub mod publish_keys;
pub mod revocations;
pub mod schema;

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::config::Database;
use crate::ids::AccountId;
pub use connection::DbConnection;
use schema::account_sequences;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Serializes migrations of server processes starting at once on one PostgreSQL database.
const MIGRATION_LOCK_ID: i64 = 0x5357_4254_4348; // "SWBTCH"

/// How long a caller waits for a pooled connection before the database counts as unavailable.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

type Pool = r2d2::Pool<connection::Manager>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(#[from] r2d2::PoolError),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("could not create the database directory: {0}")]
    Directory(std::io::Error),
    #[error("the blocking task was cancelled")]
    Cancelled,
    /// The account's sequence row could not be created (it should exist after one attempt).
    #[error("no sequence row for the account")]
    NoSequence,
}

impl StoreError {
    /// The database could not be reached (no connection, or it went away mid-query): worth
    /// retrying shortly, unlike a failed query.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Query(DieselError::DatabaseError(kind, _)) => matches!(
                kind,
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand
            ),
            _ => false,
        }
    }
}

/// The shared handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

impl Store {
    /// Opens the pool and brings the schema up to date. Blocking: call before the server starts.
    pub fn open(database: &Database, pool_size: u32) -> Result<Self, StoreError> {
        if let Database::Sqlite(path) = database {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(StoreError::Directory)?;
            }
        }
        let pool = r2d2::Pool::builder()
            .max_size(pool_size)
            .connection_timeout(CHECKOUT_TIMEOUT)
            .build(connection::Manager::new(database.clone()))?;
        let store = Self { pool };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.get()?;
        let applied = match &mut *conn {
            DbConnection::Postgres(pg) => {
                pg.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))?;
                let applied = pg
                    .run_pending_migrations(POSTGRES_MIGRATIONS)
                    .map(|v| v.len());
                pg.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})"))?;
                applied
            }
            DbConnection::Sqlite(sqlite) => sqlite
                .run_pending_migrations(SQLITE_MIGRATIONS)
                .map(|v| v.len()),
        }
        .map_err(|e| StoreError::Migration(e.to_string()))?;
        if applied > 0 {
            log::info!("database: applied {applied} migration(s)");
        }
        Ok(())
    }

    /// A pooled connection, for a thread that is itself a blocking executor (the publisher).
    pub fn connection(&self) -> Result<r2d2::PooledConnection<connection::Manager>, StoreError> {
        Ok(self.pool.get()?)
    }

    /// Runs `query` with a pooled connection on the blocking thread pool.
    pub async fn run<T, E, F>(&self, query: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(StoreError::from)?;
            query(&mut conn)
        })
        .await
        .map_err(|_| StoreError::Cancelled)?
    }
}

/// Whether the database answers a trivial query (for readiness).
pub fn ping(conn: &mut DbConnection) -> Result<(), StoreError> {
    diesel::sql_query("SELECT 1").execute(conn)?;
    Ok(())
}

/// Milliseconds since the Unix epoch: how times are stored (portable across both backends).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Runs `work` in one transaction that holds the account's write lock: the row lock on its
/// sequence counter (PostgreSQL; also across server processes) or the database write lock
/// (SQLite). Writers to one account therefore commit one after another, in sequence order.
/// `work`'s error rolls the transaction back.
pub fn write<T, E: From<StoreError>>(
    conn: &mut DbConnection,
    account: &AccountId,
    work: impl FnMut(&mut DbConnection) -> Result<T, E>,
) -> Result<T, E> {
    write_accounts(conn, std::slice::from_ref(account), work)
}

/// [`write`] for several accounts at once (a batch of publishes), their locks taken in one
/// order so that two such writers cannot deadlock.
pub fn write_accounts<T, E: From<StoreError>>(
    conn: &mut DbConnection,
    accounts: &[AccountId],
    mut work: impl FnMut(&mut DbConnection) -> Result<T, E>,
) -> Result<T, E> {
    let mut sorted: Vec<&AccountId> = accounts.iter().collect();
    sorted.sort();
    sorted.dedup();
    for _ in 0..2 {
        let begin = match conn {
            DbConnection::Sqlite(_) => "BEGIN IMMEDIATE",
            DbConnection::Postgres(_) => "BEGIN",
        };
        conn.batch_execute(begin).map_err(StoreError::from)?;
        let mut missing = Vec::new();
        let mut failed = None;
        for account in &sorted {
            // A no-op update: it takes the row lock, and says whether the row exists.
            match diesel::update(account_sequences::table.find(account.as_str()))
                .set(account_sequences::last_seq.eq(account_sequences::last_seq))
                .execute(conn)
            {
                Ok(1) => {}
                Ok(_) => missing.push(*account),
                Err(e) => {
                    failed = Some(StoreError::from(e));
                    break;
                }
            }
        }
        if let Some(e) = failed {
            rollback(conn);
            return Err(e.into());
        }
        if !missing.is_empty() {
            rollback(conn);
            for account in missing {
                create_sequence(conn, account)?;
            }
            continue;
        }
        let result = work(conn).and_then(|value| {
            conn.batch_execute("COMMIT").map_err(StoreError::from)?;
            Ok(value)
        });
        if result.is_err() {
            rollback(conn);
        }
        return result;
    }
    Err(StoreError::NoSequence.into())
}

fn rollback(conn: &mut DbConnection) {
    // Nothing to undo after a failed COMMIT on PostgreSQL; the error is the one to report.
    if let Err(e) = conn.batch_execute("ROLLBACK") {
        log::debug!("rollback after a failed transaction: {e}");
    }
}

/// The account's first write creates its counter; a concurrent first write may win the race.
fn create_sequence(conn: &mut DbConnection, account: &AccountId) -> Result<(), StoreError> {
    let inserted = diesel::insert_into(account_sequences::table)
        .values((
            account_sequences::account_id.eq(account.as_str()),
            account_sequences::last_seq.eq(0_i64),
        ))
        .execute(conn);
    match inserted {
        Ok(_) | Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
