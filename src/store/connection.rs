//! One connection type for both backends, and the r2d2 manager that opens it.
//!
//! The backend is picked by the configured URL's scheme rather than by diesel's
//! `MultiConnection::establish`, which tries each backend in turn and throws the errors away: a
//! PostgreSQL that is down must say so, not report an "invalid connection url".

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

impl r2d2::ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = ConnectionError;

    fn connect(&self) -> Result<DbConnection, ConnectionError> {
        match &self.database {
            Database::Postgres(url) => PgConnection::establish(url).map(DbConnection::Postgres),
            Database::Sqlite(path) => {
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
