//! Events: appending with the next sequence number of the account, and reading them back.

use diesel::prelude::*;

use super::schema::{account_sequences, events};
use super::{DbConnection, StoreError};
use crate::ids::{AccountId, UserId};

/// An event about to be stored.
pub struct NewEvent<'a> {
    pub account: &'a AccountId,
    pub user: Option<&'a UserId>,
    pub event: &'a str,
    /// JSON text.
    pub data: &'a str,
}

/// An event as stored.
#[derive(Debug, Clone, Queryable)]
pub struct StoredEvent {
    pub account_id: String,
    pub seq: i64,
    pub user_id: Option<String>,
    pub event: String,
    pub data: String,
    pub created_at: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Bumps the account's counter and inserts the event under the new number, in one transaction.
/// A macro because `ON CONFLICT` needs the concrete backend connection (diesel's combined
/// backend does not offer it); the statements are the same for both.
macro_rules! append_in_transaction {
    ($conn:expr, $new:expr) => {{
        let seq: i64 = diesel::insert_into(account_sequences::table)
            .values((
                account_sequences::account_id.eq($new.account.as_str()),
                account_sequences::last_seq.eq(1_i64),
            ))
            .on_conflict(account_sequences::account_id)
            .do_update()
            .set(account_sequences::last_seq.eq(account_sequences::last_seq + 1))
            .returning(account_sequences::last_seq)
            .get_result($conn)?;
        diesel::insert_into(events::table)
            .values((
                events::account_id.eq($new.account.as_str()),
                events::seq.eq(seq),
                events::user_id.eq($new.user.map(UserId::as_str)),
                events::event.eq($new.event),
                events::data.eq($new.data),
                events::created_at.eq(now_ms()),
            ))
            .execute($conn)?;
        Ok::<u64, diesel::result::Error>(seq as u64)
    }};
}

/// Stores the event and returns its sequence number.
pub fn append(conn: &mut DbConnection, new: &NewEvent<'_>) -> Result<u64, StoreError> {
    let seq = match conn {
        // PostgreSQL: the counter row's lock orders concurrent appends to one account.
        DbConnection::Postgres(pg) => pg.transaction(|c| append_in_transaction!(c, new))?,
        // SQLite: take the write lock up front, so two appends never deadlock upgrading it.
        DbConnection::Sqlite(sqlite) => {
            sqlite.immediate_transaction(|c| append_in_transaction!(c, new))?
        }
    };
    Ok(seq)
}

/// The account's last sequence number; 0 before its first event.
pub fn current_seq(conn: &mut DbConnection, account: &AccountId) -> Result<u64, StoreError> {
    let seq = account_sequences::table
        .filter(account_sequences::account_id.eq(account.as_str()))
        .select(account_sequences::last_seq)
        .first::<i64>(conn)
        .optional()?;
    Ok(seq.unwrap_or(0) as u64)
}

/// Up to `limit` of the account's events after `after`, in sequence order.
pub fn after(
    conn: &mut DbConnection,
    account: &AccountId,
    after: u64,
    limit: i64,
) -> Result<Vec<StoredEvent>, StoreError> {
    Ok(events::table
        .filter(events::account_id.eq(account.as_str()))
        .filter(events::seq.gt(after as i64))
        .order(events::seq.asc())
        .limit(limit)
        .load(conn)?)
}
