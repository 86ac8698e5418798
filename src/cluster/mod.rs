//! Cluster mode: several Switchboard nodes sharing one PostgreSQL database and one Redis.
//!
//! The database stays the source of truth: it numbers every account's events, so order and gaps
//! mean the same on every node. Redis pub/sub only carries news of them between nodes, on one
//! channel: the node that stored an event publishes it, already framed, and every other node's
//! broker hands it to its room for the account, if it has one. A message that never arrives
//! costs latency, not events: a room fills any gap from the database, every (re)subscription
//! makes every room catch up, and a node that could not relay asks the others to catch up once
//! Redis is back.
//!
//! - [`wire`] — the messages on the channel.
//! - [`link`] — the node's outgoing side: relaying, and presence kept in Redis.
//! - [`listener`] — the subscription, feeding the broker.
//! - [`presence`] — who is online on any node, with expiry so that a dead node's users go
//!   offline.

mod link;
mod listener;
pub mod presence;
pub mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use bytestring::ByteString;
use tokio::sync::{mpsc, oneshot};

use crate::actors::broker::{Broker, Ephemeral};
use crate::actors::room::RoomEvent;
use crate::ids::{AccountId, UserId};

/// How long a Redis command may take before the connection counts as lost.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait between attempts to reach Redis again.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What this node sends to the others, in order.
enum Outgoing {
    Event {
        account: AccountId,
        seq: u64,
        user: Option<UserId>,
        stored_ms: i64,
        frame: ByteString,
    },
    Ephemeral(Ephemeral),
    Presence {
        account: AccountId,
        user: UserId,
        online: bool,
    },
    OnlineUsers {
        account: AccountId,
        reply: oneshot::Sender<Option<Vec<String>>>,
    },
}

/// Whether Redis is reachable, as both sides of the node see it.
#[derive(Default)]
struct Health {
    subscribed: AtomicBool,
    publishing: AtomicBool,
}

/// This node's handle on the cluster; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    outgoing: mpsc::UnboundedSender<Outgoing>,
    health: Arc<Health>,
}

impl Cluster {
    /// Starts the subscription and the outgoing link on the current actix system. Neither waits
    /// for Redis: a node starts (and serves its own sessions) while Redis is down.
    /// `grace`: how long a user whose last session here closed still counts as online here.
    pub fn start(client: redis::Client, node: &str, grace: Duration, broker: Addr<Broker>) -> Self {
        let node: Arc<str> = node.into();
        let health = Arc::new(Health::default());
        let (outgoing, queue) = mpsc::unbounded_channel();
        actix::spawn(listener::run(
            client.clone(),
            node.clone(),
            broker.clone(),
            health.clone(),
        ));
        let link = link::Link::new(client, node.clone(), grace, broker, health.clone());
        actix::spawn(link.run(queue));
        log::info!("cluster mode: this node is {node}");
        Self { outgoing, health }
    }

    /// Whether this node both receives from and publishes to Redis.
    pub fn redis_up(&self) -> bool {
        self.health.subscribed.load(Ordering::Relaxed)
            && self.health.publishing.load(Ordering::Relaxed)
    }

    /// Tells the other nodes about an event this node stored.
    pub fn relay_event(&self, account: &AccountId, event: &RoomEvent) {
        let stored_ms = crate::store::now_ms()
            - event
                .handed
                .as_ref()
                .map_or(0, |h| h.age().as_millis() as i64);
        let _ = self.outgoing.send(Outgoing::Event {
            account: account.clone(),
            seq: event.seq,
            user: event.user.clone(),
            stored_ms,
            frame: event.frame.clone(),
        });
    }

    pub fn relay_ephemeral(&self, ephemeral: Ephemeral) {
        let _ = self.outgoing.send(Outgoing::Ephemeral(ephemeral));
    }

    /// A user's first session on this node opened (`online`), or their last one closed. After
    /// the presence grace (a reload comes back within it), every node's room hears whether this
    /// changed the user's presence anywhere.
    pub fn presence(&self, account: &AccountId, user: &UserId, online: bool) {
        let _ = self.outgoing.send(Outgoing::Presence {
            account: account.clone(),
            user: user.clone(),
            online,
        });
    }

    /// The account's users online on any node; `None` when Redis cannot say.
    pub async fn online_users(&self, account: &AccountId) -> Option<Vec<String>> {
        let (reply, answer) = oneshot::channel();
        let query = Outgoing::OnlineUsers {
            account: account.clone(),
            reply,
        };
        self.outgoing.send(query).ok()?;
        answer.await.ok().flatten()
    }
}

/// The next wait before reaching Redis again: doubling, up to [`RETRY_MAX`].
fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(RETRY_MAX)
}
