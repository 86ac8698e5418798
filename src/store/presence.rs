//! Presence as told to the webhooks: each user's last recorded state (`presence_state`), and the
//! `user.online` / `user.offline` delivery queued in the same transaction as each transition.
//!
//! A transition is recorded only when it changes the recorded state and its decision is newer
//! than the last one recorded (`decided`): however many nodes hear of one decision, and in
//! whatever order they get to the database, it is recorded once, and an older decision heard
//! late never undoes a newer one. Its generation (1, 2, 3, … per account and user) orders the
//! webhooks; the delivery's id, which is its `webhook-id`, is derived from the account, the user
//! and the generation, so it is the same whichever node records it.

use diesel::prelude::*;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::deliveries::{self, Kind};
use super::integrations::{self, Provider};
use super::schema::presence_state as p;
use super::{now_ms, DbConnection, StoreError};
use crate::ids::{AccountId, UserId};

/// A presence decision: the user came online (anywhere) or went offline (everywhere).
#[derive(Debug, Clone)]
pub struct Transition {
    pub account: AccountId,
    pub user: UserId,
    pub online: bool,
    /// When it was decided, in microseconds: later decisions have larger numbers.
    pub decided: i64,
    /// Decided by a node without a cluster (see [`online`]).
    pub alone: bool,
}

/// A transition recorded, with its delivery queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub generation: i64,
    /// The delivery's id, also its `webhook-id`.
    pub delivery_id: String,
}

/// Records the transition and queues its webhook, in the account's write transaction — if the
/// account has a receiver (its enabled presence integration, else the global one when
/// `global` is set) and the transition changes the recorded state. `None` when nothing was
/// recorded.
pub fn record(
    conn: &mut DbConnection,
    transition: &Transition,
    global: bool,
) -> Result<Option<Recorded>, StoreError> {
    super::write(conn, &transition.account, |conn| {
        let receiver = integrations::find_enabled(
            conn,
            Provider::Presence.as_str(),
            transition.account.as_str(),
        )?
        .map(|i| i.id);
        let receiver = match receiver {
            Some(id) => id,
            None if global => String::new(),
            None => return Ok(None),
        };
        let Some(generation) = advance(conn, transition)? else {
            return Ok(None);
        };
        let delivery_id = webhook_id(&transition.account, &transition.user, generation);
        let payload = payload(transition, generation);
        deliveries::create(conn, Kind::Presence, &delivery_id, &receiver, "", &payload)?;
        Ok(Some(Recorded {
            generation,
            delivery_id,
        }))
    })
}

/// Moves the user's recorded state to the transition's, if it is newer and changes it: the
/// new generation, or `None`.
fn advance(conn: &mut DbConnection, t: &Transition) -> Result<Option<i64>, StoreError> {
    let key = p::table.find((t.account.as_str(), t.user.as_str()));
    let state: Option<(bool, i64, i64)> = key
        .select((p::online, p::generation, p::decided))
        .first(conn)
        .optional()?;
    let now = now_ms();
    let Some((online, generation, decided)) = state else {
        if !t.online {
            // Never recorded online: the receiver has nothing to take back.
            return Ok(None);
        }
        diesel::insert_into(p::table)
            .values((
                p::account_id.eq(t.account.as_str()),
                p::user_id.eq(t.user.as_str()),
                p::online.eq(true),
                p::generation.eq(1_i64),
                p::decided.eq(t.decided),
                p::alone.eq(t.alone),
                p::updated_at.eq(now),
            ))
            .execute(conn)?;
        return Ok(Some(1));
    };
    if decided >= t.decided {
        return Ok(None);
    }
    let generation = if online == t.online {
        generation
    } else {
        generation + 1
    };
    diesel::update(key)
        .set((
            p::online.eq(t.online),
            p::generation.eq(generation),
            p::decided.eq(t.decided),
            p::alone.eq(t.alone),
            p::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok((online != t.online).then_some(generation))
}

/// The webhook-id of a user's generation: the same on every node, and no longer than ids are.
pub fn webhook_id(account: &AccountId, user: &UserId, generation: i64) -> String {
    let mut hash = Sha256::new();
    for part in [account.as_str(), user.as_str()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.update(generation.to_be_bytes());
    format!("prs_{}", hex::encode(&hash.finalize()[..16]))
}

fn payload(t: &Transition, generation: i64) -> String {
    json!({
        "type": if t.online { "user.online" } else { "user.offline" },
        "timestamp": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "data": {
            "account_id": t.account.as_str(),
            "user_id": t.user.as_str(),
            "online": t.online,
            "generation": generation,
        }
    })
    .to_string()
}

/// Users recorded online by a node without a cluster (up to `limit`): at the start of such a
/// node, they are the ones a previous run left online, who are offline now that no session
/// survived it. (A cluster's are the cluster's to take offline.)
pub fn online(conn: &mut DbConnection, limit: i64) -> Result<Vec<(String, String)>, StoreError> {
    Ok(p::table
        .filter(p::online.eq(true))
        .filter(p::alone.eq(true))
        .select((p::account_id, p::user_id))
        .limit(limit)
        .load(conn)?)
}
