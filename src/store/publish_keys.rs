//! Idempotency keys of the publish API: which sequence number a key's first publish got, so a
//! retry (a timeout, a redelivered job) returns it instead of storing the event twice.

use diesel::prelude::*;

use super::connection::DbConnection;
use super::schema::publish_keys;
use super::{now_ms, StoreError};
use crate::ids::AccountId;

/// The sequence number stored under `key` for `account` since `since_ms`, if any.
pub fn find(
    conn: &mut DbConnection,
    account: &AccountId,
    key: &str,
    since_ms: i64,
) -> Result<Option<u64>, StoreError> {
    let seq = publish_keys::table
        .select(publish_keys::seq)
        .filter(publish_keys::account_id.eq(account.as_str()))
        .filter(publish_keys::idempotency_key.eq(key))
        .filter(publish_keys::created_at.ge(since_ms))
        .first::<i64>(conn)
        .optional()?;
    Ok(seq.map(|s| s as u64))
}

/// Records `key`'s publish; replaces an expired record of the same key.
pub fn remember(
    conn: &mut DbConnection,
    account: &AccountId,
    key: &str,
    seq: u64,
) -> Result<(), StoreError> {
    diesel::delete(
        publish_keys::table
            .filter(publish_keys::account_id.eq(account.as_str()))
            .filter(publish_keys::idempotency_key.eq(key)),
    )
    .execute(conn)?;
    diesel::insert_into(publish_keys::table)
        .values((
            publish_keys::account_id.eq(account.as_str()),
            publish_keys::idempotency_key.eq(key),
            publish_keys::seq.eq(seq as i64),
            publish_keys::created_at.eq(now_ms()),
        ))
        .execute(conn)?;
    Ok(())
}

/// Forgets keys recorded before `before_ms`.
pub fn prune(conn: &mut DbConnection, before_ms: i64) -> Result<usize, StoreError> {
    Ok(
        diesel::delete(publish_keys::table.filter(publish_keys::created_at.lt(before_ms)))
            .execute(conn)?,
    )
}
