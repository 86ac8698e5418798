//! The outbox's tables, index and trigger: the DDL documented in docs/outbox.md, for one table
//! name, and creating them when the table is missing. Uses only the validated
//! [`TableName`](crate::config::TableName), which is what makes formatting it into SQL safe.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use diesel::PgConnection;

use crate::config::TableName;

/// Serializes nodes creating the tables at once (`pg_advisory_xact_lock`'s key space is the
/// database's; this is "SWBOXDDL").
const DDL_LOCK_ID: i64 = 0x5357_424f_5844_444c;

/// The statements that create the outbox `table`, `<table>_refused`, the index the consumer
/// reads in, and the trigger that wakes it (documented in docs/outbox.md).
pub fn statements(table: &TableName) -> String {
    format!(
        r#"CREATE TABLE {table} (
    id              bigserial PRIMARY KEY,
    -- The inserting transaction: rows are published in (xid, id) order, and only once no
    -- older transaction is still running. Never set it yourself.
    xid             xid8 NOT NULL DEFAULT pg_current_xact_id(),
    account_id      text NOT NULL,
    user_id         text,
    channel         text,
    event           text NOT NULL,
    data            jsonb NOT NULL DEFAULT 'null',
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX {table}_order ON {table} (xid, id);
CREATE TABLE {table}_refused (
    id              bigint PRIMARY KEY,
    xid             xid8 NOT NULL,
    account_id      text NOT NULL,
    user_id         text,
    channel         text,
    event           text NOT NULL,
    data            jsonb NOT NULL,
    idempotency_key text,
    created_at      timestamptz NOT NULL,
    refused_at      timestamptz NOT NULL DEFAULT now(),
    error           text NOT NULL
);
CREATE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{table}', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER {table}_notify AFTER INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify();
"#
    )
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

/// Creates the tables unless `table` exists already (made by an operator from the documented
/// DDL, or by another node), in which case it is left as it is.
pub fn ensure(conn: &mut PgConnection, table: &TableName) -> QueryResult<bool> {
    conn.transaction(|conn| {
        conn.batch_execute(&format!("SELECT pg_advisory_xact_lock({DDL_LOCK_ID})"))?;
        let found = diesel::sql_query("SELECT to_regclass($1) IS NOT NULL AS exists")
            .bind::<Text, _>(table.as_str())
            .get_result::<Exists>(conn)?;
        if found.exists {
            return Ok(false);
        }
        conn.batch_execute(&statements(table))?;
        Ok(true)
    })
}
