//! Idempotency keys of the publish API: which sequence number a key's first publish got, so a
//! retry (a timeout, a redelivered job) returns it instead of storing the event twice.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;

use super::connection::DbConnection;
use super::schema::publish_keys;
use super::{now_ms, StoreError};
use crate::ids::AccountId;

/// Most keys in one statement (SQLite's bind-parameter limit; see
/// [`super::events::INSERT_CHUNK`]).
const CHUNK: usize = 200;

/// A key of one account, as looked up and remembered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key<'a> {
    pub account: &'a str,
    pub key: &'a str,
}

/// What [`find_many`] found of the keys asked about.
#[derive(Debug, Default)]
pub struct Found {
    /// Keys used within the window, with the sequence number their first publish got.
    pub live: HashMap<(String, String), u64>,
    /// Keys whose record has expired: [`remember_many`] must replace it.
    pub expired: HashSet<(String, String)>,
}

/// The records of `keys`, one statement per account and [`CHUNK`] keys: those recorded since `since_ms`
/// (live) and older ones (expired, to be replaced).
pub fn find_many(
    conn: &mut DbConnection,
    keys: &[Key<'_>],
    since_ms: i64,
) -> Result<Found, StoreError> {
    let mut found = Found::default();
    // Per account, so that each lookup is a range of the primary key (account, key).
    let mut by_account: HashMap<&str, Vec<&str>> = HashMap::new();
    for k in keys {
        by_account.entry(k.account).or_default().push(k.key);
    }
    for (account, names) in by_account {
        for chunk in names.chunks(CHUNK) {
            let records: Vec<(String, i64, i64)> = publish_keys::table
                .select((
                    publish_keys::idempotency_key,
                    publish_keys::seq,
                    publish_keys::created_at,
                ))
                .filter(publish_keys::account_id.eq(account))
                .filter(publish_keys::idempotency_key.eq_any(chunk))
                .load(conn)?;
            for (key, seq, created_at) in records {
                let id = (account.to_owned(), key);
                if created_at >= since_ms {
                    found.live.insert(id, seq as u64);
                } else {
                    found.expired.insert(id);
                }
            }
        }
    }
    Ok(found)
}

/// Records each key's publish (one insert per [`CHUNK`] keys), first deleting the `expired`
/// records among them that [`find_many`] reported.
pub fn remember_many(
    conn: &mut DbConnection,
    keys: &[(Key<'_>, u64)],
    expired: &HashSet<(String, String)>,
) -> Result<(), StoreError> {
    for (key, _) in keys {
        if expired.contains(&(key.account.to_owned(), key.key.to_owned())) {
            diesel::delete(
                publish_keys::table
                    .filter(publish_keys::account_id.eq(key.account))
                    .filter(publish_keys::idempotency_key.eq(key.key)),
            )
            .execute(conn)?;
        }
    }
    let now = now_ms();
    for chunk in keys.chunks(CHUNK) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|(key, seq)| {
                (
                    publish_keys::account_id.eq(key.account),
                    publish_keys::idempotency_key.eq(key.key),
                    publish_keys::seq.eq(*seq as i64),
                    publish_keys::created_at.eq(now),
                )
            })
            .collect();
        let insert = diesel::insert_into(publish_keys::table).values(rows);
        // Diesel's multi-backend connection cannot batch inserts; each backend can.
        match conn {
            DbConnection::Postgres(c) => insert.execute(c)?,
            DbConnection::Sqlite(c) => insert.execute(c)?,
        };
    }
    Ok(())
}

/// Records one key's publish; replaces an expired record of the same key. ([`remember_many`]
/// for a batch.)
pub fn remember(
    conn: &mut DbConnection,
    account: &AccountId,
    key: &str,
    seq: u64,
) -> Result<(), StoreError> {
    let key = Key {
        account: account.as_str(),
        key,
    };
    let found = find_many(conn, std::slice::from_ref(&key), i64::MAX)?;
    remember_many(conn, &[(key, seq)], &found.expired)
}

/// Forgets keys recorded before `before_ms`.
pub fn prune(conn: &mut DbConnection, before_ms: i64) -> Result<usize, StoreError> {
    Ok(
        diesel::delete(publish_keys::table.filter(publish_keys::created_at.lt(before_ms)))
            .execute(conn)?,
    )
}
