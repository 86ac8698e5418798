//! Outbound deliveries: replies handed to the application's backend by signed webhook, with
//! their retry state, so failures are visible and survive a restart.

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
}

pub fn create(
    conn: &mut DbConnection,
    id: &str,
    integration_id: &str,
    message_id: &str,
    payload: &str,
) -> Result<(), StoreError> {
    let now = now_ms();
    diesel::insert_into(d::table)
        .values((
            d::id.eq(id),
            d::integration_id.eq(integration_id),
            d::message_id.eq(message_id),
            d::payload.eq(payload),
            d::status.eq("pending"),
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

pub fn pending(conn: &mut DbConnection) -> Result<Vec<Delivery>, StoreError> {
    Ok(d::table
        .filter(d::status.eq("pending"))
        .order(d::next_attempt_at.asc())
        .load(conn)?)
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

/// Records an attempt's outcome: `status` is delivered, pending (retry at `next_attempt_at`) or
/// failed.
pub fn record_attempt(
    conn: &mut DbConnection,
    id: &str,
    status: &str,
    error: Option<&str>,
    next_attempt_at: i64,
) -> Result<(), StoreError> {
    diesel::update(d::table.find(id))
        .set((
            d::status.eq(status),
            d::attempts.eq(d::attempts + 1),
            d::last_error.eq(error),
            d::next_attempt_at.eq(next_attempt_at),
            d::updated_at.eq(now_ms()),
        ))
        .execute(conn)?;
    Ok(())
}
