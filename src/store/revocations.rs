//! Users revoked through the control API: when (their tokens issued at or before it are
//! refused), and when each row was written, for the nodes that read what changed since they
//! last looked; and single sessions closed through it, for the node that holds each.

use diesel::prelude::*;

use super::schema::{session_revocations, user_revocations};
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

/// Records that `session` of `account` is to be closed, by whichever node holds it. A session
/// already recorded is recorded again, with this account: a call naming the wrong account
/// (which closes nothing) must not keep a later right one from being seen.
pub fn revoke_session(
    conn: &mut DbConnection,
    account: &AccountId,
    session: &str,
) -> Result<(), StoreError> {
    let row = session_revocations::table.filter(session_revocations::session_id.eq(session));
    let updated = diesel::update(row)
        .set((
            session_revocations::account_id.eq(account.as_str()),
            session_revocations::recorded_at.eq(super::now_ms()),
        ))
        .execute(conn)?;
    if updated == 0 {
        diesel::insert_into(session_revocations::table)
            .values((
                session_revocations::session_id.eq(session),
                session_revocations::account_id.eq(account.as_str()),
                session_revocations::recorded_at.eq(super::now_ms()),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Sessions to close recorded after `after` (milliseconds): (session, account, recorded_at),
/// oldest first; at most `limit`.
pub fn sessions_recorded_after(
    conn: &mut DbConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    Ok(session_revocations::table
        .filter(session_revocations::recorded_at.gt(after))
        .order(session_revocations::recorded_at.asc())
        .select((
            session_revocations::session_id,
            session_revocations::account_id,
            session_revocations::recorded_at,
        ))
        .limit(limit)
        .load(conn)?)
}

/// Deletes the sessions to close recorded before `before` (milliseconds).
pub fn prune_sessions(conn: &mut DbConnection, before: i64) -> Result<usize, StoreError> {
    Ok(diesel::delete(
        session_revocations::table.filter(session_revocations::recorded_at.lt(before)),
    )
    .execute(conn)?)
}
