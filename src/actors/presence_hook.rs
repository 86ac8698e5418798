//! The engine's port for presence changes, so that something above the engine (the presence
//! webhooks) can act on them: in a cluster, the decisions the cluster made (online on a user's
//! first session anywhere, offline once the grace has passed after their last); alone, each
//! user's first tab opening and last tab closing, which the hook decides on with its own grace
//! (a room closes with its last session, before its grace is over). The engine defines it; the
//! services implement it, and the server wires one in.
//!
//! Engine layer: names only `ids`.

use crate::ids::{AccountId, UserId};

/// Told of presence changes. Returns at once (queueing its work); must not block an actor.
pub trait PresenceHook: Send + Sync {
    /// In a cluster: the user came online or went offline (after the grace) across the cluster.
    /// `decided`: when the decision was made, in microseconds of the one clock that made every
    /// decision about this user (Redis's); `None` when this node decided alone (Redis was
    /// unreachable). Every node is told of every decision.
    fn decided(&self, account: &AccountId, user: &UserId, online: bool, decided: Option<i64>);

    /// Alone (no cluster): the user's first tab on this node opened, or their last one closed.
    /// The hook decides, keeping the presence grace: a tab that opens within it after the last
    /// closed (a reload) changes nothing.
    fn here(&self, account: &AccountId, user: &UserId, online: bool);
}
