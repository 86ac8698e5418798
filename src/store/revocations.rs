//! Users revoked through the control API: when (their tokens issued at or before it are
//! refused), and when each row was written, for the nodes that read what changed since they
//! last looked.

use diesel::prelude::*;

use super::schema::user_revocations;
use super::{DbConnection, StoreError};
use crate::ids::{AccountId, UserId};

/// A revocation as stored.
#[derive(Debug, Clone, Queryable)]
pub struct Revocation {
    pub account_id: String,
    pub user_id: String,
    /// Seconds since the Unix epoch.
    pub revoked_at: i64,
    /// Milliseconds since the Unix epoch.
    pub recorded_at: i64,
}

/// Records that `user` of `account` is revoked at `revoked_at` (seconds), or later if it already
/// was; answers the revocation as it now stands.
pub fn revoke(
    conn: &mut DbConnection,
    account: &AccountId,
    user: &UserId,
    revoked_at: u64,
) -> Result<Revocation, StoreError> {
    let row = user_revocations::table
        .filter(user_revocations::account_id.eq(account.as_str()))
        .filter(user_revocations::user_id.eq(user.as_str()));
    let recorded_at = super::now_ms();
    // `ON CONFLICT` does not compile on the combined backend: update, else insert (a racing
    // insert of the same user fails on the key, and the caller's retry updates).
    let updated = diesel::update(row)
        .set((
            user_revocations::revoked_at.eq(revoked_at as i64),
            user_revocations::recorded_at.eq(recorded_at),
        ))
        .filter(user_revocations::revoked_at.le(revoked_at as i64))
        .execute(conn)?;
    if updated == 0 && row.count().get_result::<i64>(conn)? == 0 {
        diesel::insert_into(user_revocations::table)
            .values((
                user_revocations::account_id.eq(account.as_str()),
                user_revocations::user_id.eq(user.as_str()),
                user_revocations::revoked_at.eq(revoked_at as i64),
                user_revocations::recorded_at.eq(recorded_at),
            ))
            .execute(conn)?;
    }
    Ok(row.first(conn)?)
}

/// Revocations recorded after `after` (milliseconds), oldest first; at most `limit`.
pub fn recorded_after(
    conn: &mut DbConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<Revocation>, StoreError> {
    Ok(user_revocations::table
        .filter(user_revocations::recorded_at.gt(after))
        .order(user_revocations::recorded_at.asc())
        .limit(limit)
        .load(conn)?)
}
