//! Storage: the connection pool, the embedded migrations, and the queries (in [`events`]).
//!
//! Diesel is synchronous. Every query runs through [`Store::run`], which moves it to actix's
//! blocking thread pool, so no actor or request handler ever waits on the database on its own
//! thread.

pub mod connection;
pub mod events;
pub mod schema;

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::config::Database;
pub use connection::DbConnection;

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
    Unavailable(#[from] r2d2::Error),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("could not create the database directory: {0}")]
    Directory(std::io::Error),
    #[error("the blocking task was cancelled")]
    Cancelled,
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

    /// Runs `query` with a pooled connection on the blocking thread pool.
    pub async fn run<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool.clone();
        actix_web::web::block(move || query(&mut *pool.get()?))
            .await
            .map_err(|_| StoreError::Cancelled)?
    }
}
