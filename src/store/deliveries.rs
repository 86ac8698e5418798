//! Outbound deliveries: replies handed to the application's backend by signed webhook, with
//! their retry state, so failures are visible and survive a restart.
//!
//! A delivery is attempted by one node at a time. A node first [`claim`]s it — one conditional
//! update, atomic on both backends: it succeeds only if the delivery is pending, due, and no
//! node's lease on it is still running — and then holds it until its lease runs out or it
//! [`finish`]es the attempt. A node that dies holding one leaves a lease that runs out; another
//! node's scan ([`due`]) then finds it.

use diesel::prelude::*;
use serde::Serialize;

use super::schema::outbound_deliveries as d;
use super::{now_ms, DbConnection, StoreError};

#[derive(Debug, Clone, Queryable, Serialize)]
pub struct Delivery {
    pub id: String,
    pub integration_id: String,
    pub message_id: String,
    #[serde(skip)]
    pub payload: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The node attempting it now (or that was, if its lease ran out before it finished).
    pub leased_by: Option<String>,
    /// Until when (ms) `leased_by` holds it; 0 when no node does.
    pub leased_until: i64,
    /// `reply` or `presence` (see [`Kind`]).
    pub kind: String,
}

/// What a delivery carries, by the name stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An outbound reply: `message_id` names the message, whose status follows the delivery's.
    Reply,
    /// A `user.online` / `user.offline` webhook; `integration_id` is the account's presence
    /// integration, or empty for the globally configured receiver.
    Presence,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reply => "reply",
            Self::Presence => "presence",
        }
    }
}

/// Queues a delivery, due now. `message_id` is empty for a presence webhook.
pub fn create(
    conn: &mut DbConnection,
    kind: Kind,
    id: &str,
    integration_id: &str,
    message_id: &str,
    payload: &str,
) -> Result<(), StoreError> {
    let now = now_ms();
    diesel::insert_into(d::table)
        .values((
            d::kind.eq(kind.as_str()),
            d::id.eq(id),
            d::integration_id.eq(integration_id),
            d::message_id.eq(message_id),
            d::payload.eq(payload),
            d::status.eq(Status::Pending.as_str()),
            d::attempts.eq(0_i64),
            d::next_attempt_at.eq(now),
            d::created_at.eq(now),
            d::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut DbConnection, id: &str) -> Result<Option<Delivery>, StoreError> {
    Ok(d::table.find(id).first(conn).optional()?)
}

/// Up to `limit` deliveries that are due at `now` and that no node holds, the longest due
/// first: their ids, and the node whose lease on one ran out, if any (it died, or was cut off).
pub fn due(
    conn: &mut DbConnection,
    now: i64,
    limit: i64,
) -> Result<Vec<(String, Option<String>)>, StoreError> {
    Ok(d::table
        .select((d::id, d::leased_by))
        .filter(d::status.eq(Status::Pending.as_str()))
        .filter(d::next_attempt_at.le(now))
        .filter(d::leased_until.lt(now))
        .order(d::next_attempt_at.asc())
        .limit(limit)
        .load(conn)?)
}

/// Claims the delivery for one attempt by `node`, holding it until `leased_until`: the
/// delivery as claimed, or `None` when it is not pending, not due, or held by a node whose
/// lease still runs. Of several nodes claiming at once, exactly one gets it (the update
/// re-checks its condition on the row it locks, on PostgreSQL as on SQLite).
pub fn claim(
    conn: &mut DbConnection,
    id: &str,
    node: &str,
    now: i64,
    leased_until: i64,
) -> Result<Option<Delivery>, StoreError> {
    Ok(diesel::update(d::table.find(id))
        .filter(d::status.eq(Status::Pending.as_str()))
        .filter(d::next_attempt_at.le(now))
        .filter(d::leased_until.lt(now))
        .set((d::leased_by.eq(node), d::leased_until.eq(leased_until)))
        .get_result(conn)
        .optional()?)
}

/// Where a delivery stands, by the name stored (and shown by the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// To be attempted (again) at its `next_attempt_at`.
    Pending,
    Delivered,
    /// Given up on.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an attempt came to.
#[derive(Debug)]
pub struct Outcome<'a> {
    pub status: Status,
    /// Attempts made so far, this one included if a request was made.
    pub attempts: i64,
    pub error: Option<&'a str>,
    pub next_attempt_at: i64,
}

/// Records the outcome of the attempt `claimed` was claimed for, and frees the lease — but only
/// while that claim still stands: a node whose lease ran out, and whose delivery another node
/// then claimed (or even finished), must not overwrite what the other records. Answers whether
/// it was recorded.
pub fn finish(
    conn: &mut DbConnection,
    claimed: &Delivery,
    outcome: &Outcome<'_>,
) -> Result<bool, StoreError> {
    let Some(node) = claimed.leased_by.as_deref() else {
        return Ok(false);
    };
    let rows = diesel::update(d::table.find(&claimed.id))
        .filter(d::status.eq(Status::Pending.as_str()))
        .filter(d::leased_by.eq(node))
        .filter(d::attempts.eq(claimed.attempts))
        .set((
            d::status.eq(outcome.status.as_str()),
            d::attempts.eq(outcome.attempts),
            d::last_error.eq(outcome.error),
            d::next_attempt_at.eq(outcome.next_attempt_at),
            d::leased_by.eq(None::<&str>),
            d::leased_until.eq(0_i64),
            d::updated_at.eq(now_ms()),
        ))
        .execute(conn)?;
    Ok(rows == 1)
}

/// Makes the integration's pending deliveries due now (it was disabled: the next scan ends
/// them, rather than their next retry, which may be an hour away).
pub fn due_now_of(conn: &mut DbConnection, integration_id: &str) -> Result<usize, StoreError> {
    let now = now_ms();
    Ok(diesel::update(d::table)
        .filter(d::integration_id.eq(integration_id))
        .filter(d::status.eq(Status::Pending.as_str()))
        .filter(d::next_attempt_at.gt(now))
        .set(d::next_attempt_at.eq(now))
        .execute(conn)?)
}

/// The integration's most recent deliveries, newest first.
pub fn recent(
    conn: &mut DbConnection,
    integration_id: &str,
    limit: i64,
) -> Result<Vec<Delivery>, StoreError> {
    Ok(d::table
        .filter(d::integration_id.eq(integration_id))
        .order(d::created_at.desc())
        .limit(limit)
        .load(conn)?)
}

/// The most recent presence deliveries to the globally configured receiver, newest first.
pub fn recent_global_presence(
    conn: &mut DbConnection,
    limit: i64,
) -> Result<Vec<Delivery>, StoreError> {
    Ok(d::table
        .filter(d::kind.eq(Kind::Presence.as_str()))
        .filter(d::integration_id.eq(""))
        .order(d::created_at.desc())
        .limit(limit)
        .load(conn)?)
}
