//! One connection type for both backends, and the r2d2 manager that opens it.
//!
//! The backend is picked by the configured URL's scheme rather than by diesel's
//! `MultiConnection::establish`, which tries each backend in turn and throws the errors away: a
//! PostgreSQL that is down must say so, not report an "invalid connection url".
//!
//! A SQLite file holds the integrations' secrets: it is created readable by its owner only, as
//! the development keys are (SQLite gives its `-wal` and `-shm` files the database file's mode).

use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::r2d2::R2D2Connection;
use diesel::{Connection, ConnectionError, PgConnection, SqliteConnection};

use crate::config::Database;

/// A connection to whichever database is configured.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

/// Opens connections for the r2d2 pool.
#[derive(Debug)]
pub struct Manager {
    database: Database,
}

impl Manager {
    pub fn new(database: Database) -> Self {
        Self { database }
    }
}

/// Per-connection SQLite settings: WAL lets readers run beside the one writer, and the busy
/// timeout makes writers queue for the lock instead of failing at once.
const SQLITE_PRAGMAS: &str =
    "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;";

/// Creates the SQLite file with mode 0600 if it does not exist yet, before SQLite would create it
/// with the default mode (world-readable under the usual umask). An existing file is left as it
/// is: its owner may have chosen its mode.
fn create_private(path: &Path) -> Result<(), ConnectionError> {
    use std::os::unix::fs::OpenOptionsExt;
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(ConnectionError::BadConnection(format!(
            "cannot create the SQLite file {}: {e}",
            path.display()
        ))),
    }
}

impl diesel::r2d2::ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = ConnectionError;

    fn connect(&self) -> Result<DbConnection, ConnectionError> {
        match &self.database {
            Database::Postgres(url) => PgConnection::establish(url).map(DbConnection::Postgres),
            Database::Sqlite(path) => {
                create_private(path)?;
                let path = path.to_str().ok_or_else(|| {
                    ConnectionError::InvalidConnectionUrl("the SQLite path is not UTF-8".into())
                })?;
                let mut conn = SqliteConnection::establish(path)?;
                conn.batch_execute(SQLITE_PRAGMAS)
                    .map_err(ConnectionError::CouldntSetupConfiguration)?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), ConnectionError> {
        conn.batch_execute("SELECT 1")
            .map_err(ConnectionError::CouldntSetupConfiguration)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}
