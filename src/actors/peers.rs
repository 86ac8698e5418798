//! The other nodes, as the engine sees them: the one port through which the broker and the rooms
//! reach beyond this process. The engine defines it; the cluster (Redis) implements it, and the
//! server wires one in when cluster mode is on. Alone, a node has none.
//!
//! Engine layer: names only `event`, `ids` and the broker's `Ephemeral`; never the cluster.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::broker::Ephemeral;
use crate::event::RoomEvent;
use crate::ids::{AccountId, UserId};

/// What the broker and the rooms ask of the other nodes. Every call returns at once (queueing
/// its work); none may block an actor.
pub trait Peers: Send + Sync {
    /// How long a room may go without an event before it checks the account's head.
    fn check_interval(&self) -> Duration;

    /// Tells the other nodes about an event this node stored.
    fn relay_event(&self, account: &AccountId, event: &RoomEvent);

    /// Passes a frame that is not stored (typing, presence) to the other nodes.
    fn relay_ephemeral(&self, ephemeral: Ephemeral);

    /// Asks every node's room of the account to make sure it has every event up to `head`.
    fn catch_up(&self, account: &AccountId, head: u64);

    /// A user's first session on this node opened (`online`), or their last one closed: the
    /// peers decide what that means for their presence, and tell every node's room.
    fn presence(&self, account: &AccountId, user: &UserId, online: bool);

    /// The account's users online on any node; `None` when the peers cannot say.
    fn online_users(&self, account: &AccountId) -> BoxFuture<'static, Option<Vec<String>>>;
}
