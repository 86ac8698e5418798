//! Cluster mode: several Switchboard nodes sharing one PostgreSQL database and one Redis.
//!
//! The database stays the source of truth: it numbers every account's events, so order and gaps
//! mean the same on every node. Redis pub/sub only carries news of them between nodes, on one
//! channel: the node that stored an event publishes it, already framed, and every other node's
//! broker hands it to its room for the account, if it has one. A message that never arrives
//! costs latency, not events: a room fills any gap from the database, every (re)subscription
//! makes every room catch up, a node that could not relay asks the others to catch up once
//! Redis is back, a publish answered as an idempotent replay asks every node to catch the account
//! up, and a room that has had no event for the check interval reads the account's head — so
//! every committed event reaches every connected session within about twice that interval
//! while the database is reachable, whatever was lost on the way.
//!
//! - [`wire`] — the messages on the channel.
//! - [`signing`] — the tag on every message a node sends, under a key from the cluster secret.
//! - [`admission`] — what arrives is checked and typed where it enters; the rest is dropped.
//! - [`relay`] — the node's outgoing side: relaying, and presence kept in Redis.
//! - [`listener`] — the subscription, feeding the broker.
//! - [`presence`] — who is online on any node, with expiry so that a dead node's users go
//!   offline.

mod admission;
mod listener;
pub mod presence;
mod relay;
mod signing;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::Addr;
use bytestring::ByteString;
use tokio::sync::{mpsc, oneshot, Notify};

use futures_util::future::BoxFuture;

use crate::actors::broker::{Broker, Ephemeral};
use crate::actors::peers::Peers;
use crate::config::ClusterConfig;
use crate::event::RoomEvent;
use crate::ids::{AccountId, UserId};
use crate::metrics;

/// How long a Redis command may take before the connection counts as lost.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait between attempts to reach Redis again.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Most items waiting for the link (relays, catch-up notices, presence questions). Past it an
/// item is dropped: a relay's event is still read from the database by the other nodes (they
/// are asked to catch up once the link has drained), an ephemeral frame is lost, a presence
/// question is answered from this node's view.
const RELAY_QUEUE_MAX: usize = 10_000;
/// Most bytes of frames waiting for the link; past it, as past [`RELAY_QUEUE_MAX`].
const RELAY_QUEUE_MAX_BYTES: usize = 32 * 1024 * 1024;
/// What an item costs in the queue besides its frame.
const ITEM_OVERHEAD: usize = 128;

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
    /// The account's rooms on every node should make sure they have every event up to `head`.
    CatchUp {
        account: AccountId,
        head: u64,
    },
    OnlineUsers {
        account: AccountId,
        reply: oneshot::Sender<Option<Vec<String>>>,
    },
}

impl Outgoing {
    /// What the item holds in memory, roughly.
    fn cost(&self) -> usize {
        ITEM_OVERHEAD
            + match self {
                Self::Event { frame, .. } => frame.len(),
                Self::Ephemeral(ephemeral) => ephemeral.frame.len(),
                Self::CatchUp { .. } | Self::OnlineUsers { .. } => 0,
            }
    }
}

/// What the node's handles, its listener and its link share.
#[derive(Default)]
struct Shared {
    /// Whether Redis is reachable, as both sides of the node see it.
    subscribed: AtomicBool,
    publishing: AtomicBool,
    /// The outgoing queue's depth, for its bound.
    queued: AtomicUsize,
    queued_bytes: AtomicUsize,
    /// An event's relay was dropped past the bound: the other nodes must catch up.
    overflowed: AtomicBool,
    /// Presence changes not yet handled by the link: the latest per user, so at most one per
    /// user with a session on this node, however fast sessions open and close.
    presence: Mutex<HashMap<(AccountId, UserId), bool>>,
    presence_changed: Notify,
}

impl Shared {
    /// Takes room in the outgoing queue for an item of `cost` bytes, if there is any.
    fn reserve(&self, cost: usize) -> bool {
        let queued = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.queued_bytes.fetch_add(cost, Ordering::Relaxed) + cost;
        if queued > RELAY_QUEUE_MAX || bytes > RELAY_QUEUE_MAX_BYTES {
            self.release(cost);
            return false;
        }
        metrics::relay_queue(queued);
        true
    }

    /// Gives back the room an item took, once the link has it.
    fn release(&self, cost: usize) {
        let queued = self.queued.fetch_sub(1, Ordering::Relaxed) - 1;
        self.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
        metrics::relay_queue(queued);
    }

    fn take_presence(&self) -> HashMap<(AccountId, UserId), bool> {
        std::mem::take(&mut self.presence.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// This node's handle on the cluster; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    outgoing: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Shared>,
    check_interval: Duration,
}

impl Cluster {
    /// Starts the subscription and the outgoing link on the current actix system. Neither waits
    /// for Redis: a node starts (and serves its own sessions) while Redis is down.
    /// `grace`: how long a user whose last session here closed still counts as online here.
    pub fn start(
        config: &ClusterConfig,
        node: &str,
        grace: Duration,
        broker: Addr<Broker>,
    ) -> Self {
        let client = config.redis_client().expect("checked by Config::load");
        let key = signing::Key::derive(&config.secret);
        let node: Arc<str> = node.into();
        let shared = Arc::new(Shared::default());
        let (outgoing, queue) = mpsc::unbounded_channel();
        actix::spawn(listener::run(
            client.clone(),
            listener::Node::new(node.clone(), key.clone()),
            broker.clone(),
            shared.clone(),
        ));
        let link = relay::Relay::new(client, node.clone(), key, grace, broker, shared.clone());
        actix::spawn(link.run(queue));
        metrics::relay_queue(0);
        log::info!("cluster mode: this node is {node}");
        Self {
            outgoing,
            shared,
            check_interval: config.check_interval,
        }
    }

    /// Whether this node both receives from and publishes to Redis.
    pub fn redis_up(&self) -> bool {
        self.shared.subscribed.load(Ordering::Relaxed)
            && self.shared.publishing.load(Ordering::Relaxed)
    }

    /// Queues an item for the link; `Err` gives it back when the queue is full.
    fn send(&self, item: Outgoing) -> Result<(), Outgoing> {
        if !self.shared.reserve(item.cost()) {
            return Err(item);
        }
        self.outgoing.send(item).map_err(|e| e.0)
    }
}

/// The engine's view of the other nodes (see [`Peers`]), over Redis.
impl Peers for Cluster {
    /// How long a room may go without an event before it checks the account's head.
    fn check_interval(&self) -> Duration {
        self.check_interval
    }

    /// Tells the other nodes about an event this node stored.
    fn relay_event(&self, account: &AccountId, event: &RoomEvent) {
        let stored_ms = crate::store::now_ms()
            - event
                .handed
                .as_ref()
                .map_or(0, |h| h.age().as_millis() as i64);
        let relay = Outgoing::Event {
            account: account.clone(),
            seq: event.seq,
            user: event.user.clone(),
            stored_ms,
            frame: event.frame.clone(),
        };
        if self.send(relay).is_err() {
            metrics::relay_dropped("event");
            self.shared.overflowed.store(true, Ordering::Relaxed);
        }
    }

    fn relay_ephemeral(&self, ephemeral: Ephemeral) {
        if self.send(Outgoing::Ephemeral(ephemeral)).is_err() {
            metrics::relay_dropped("ephemeral");
        }
    }

    /// Asks every node's room of the account to make sure it has every event up to `head` (see
    /// [`crate::actors::broker::Replayed`]).
    fn catch_up(&self, account: &AccountId, head: u64) {
        let notice = Outgoing::CatchUp {
            account: account.clone(),
            head,
        };
        if self.send(notice).is_err() {
            metrics::relay_dropped("catch-up");
            self.shared.overflowed.store(true, Ordering::Relaxed);
        }
    }

    /// A user's first session on this node opened (`online`), or their last one closed. After
    /// the presence grace (a reload comes back within it), every node's room hears whether this
    /// changed the user's presence anywhere.
    fn presence(&self, account: &AccountId, user: &UserId, online: bool) {
        self.shared
            .presence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((account.clone(), user.clone()), online);
        self.shared.presence_changed.notify_one();
    }

    /// The account's users online on any node; `None` when Redis cannot say.
    fn online_users(&self, account: &AccountId) -> BoxFuture<'static, Option<Vec<String>>> {
        let (reply, answer) = oneshot::channel();
        let query = Outgoing::OnlineUsers {
            account: account.clone(),
            reply,
        };
        let sent = self.send(query).is_ok();
        Box::pin(async move {
            if !sent {
                metrics::relay_dropped("presence-query");
                return None;
            }
            answer.await.ok().flatten()
        })
    }
}

/// The next wait before reaching Redis again: doubling, up to [`RETRY_MAX`].
fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(RETRY_MAX)
}
