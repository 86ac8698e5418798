//! Presence webhooks: the engine's presence decisions ([`PresenceHook`]) recorded as
//! `user.online` / `user.offline` deliveries (`store::presence`), then handed to the outbound
//! dispatcher, which sends them signed and retried like outbound replies.
//!
//! Changes queue for one writer thread, which records them in the order they were decided — so
//! a user's online and offline are recorded in turn — and off the actors' threads. In a cluster
//! the cluster has decided them (after its grace); alone, the thread decides: a user's last tab
//! closing makes them offline once the presence grace has passed without a tab opening again
//! (a reload sends nothing). The queue holds [`MAX_QUEUED`] changes; past it a change is
//! dropped and logged (the database has been stalled for that many: the receiver then misses
//! that transition, and the next one recorded for the user tells it the state).
//!
//! Services layer: uses `store`, the engine's hook trait and the dispatcher's [`Dispatch`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::Recipient;

use crate::actors::presence_hook::PresenceHook;
use crate::commit::Dispatch;
use crate::ids::{AccountId, UserId};
use crate::store::integrations::{self, Provider};
use crate::store::presence::{self, Transition};
use crate::store::{Store, StoreError};

/// Most decisions waiting to be recorded.
const MAX_QUEUED: usize = 65_536;
/// Attempts at recording one decision while the database fails, and the wait between them.
const ATTEMPTS: u32 = 5;
const RETRY_WAIT: Duration = Duration::from_millis(200);
/// Most users a start-up marks offline (those a previous run of a single node left online).
const MAX_LEFT_ONLINE: i64 = 100_000;

/// A change as queued for the writer thread.
enum Change {
    /// Decided by the cluster: `decided` is Redis's stamp, or `None` for this node's own.
    Decided {
        account: AccountId,
        user: UserId,
        online: bool,
        decided: Option<i64>,
    },
    /// Alone: the user's first tab opened, or their last closed.
    Here {
        account: AccountId,
        user: UserId,
        online: bool,
    },
}

/// The hook the server wires into the broker; cheap to share.
pub struct PresenceWebhooks {
    queue: SyncSender<Change>,
    dispatcher: Arc<OnceLock<Recipient<Dispatch>>>,
}

/// What the writer thread needs.
struct Writer {
    store: Store,
    /// A global receiver is configured: every account without its own has one.
    global: bool,
    /// How long after their last tab closed a user goes offline (alone).
    grace: Duration,
    dispatcher: Arc<OnceLock<Recipient<Dispatch>>>,
    clock: Clock,
    /// Alone: users whose last tab closed, offline at the instant given.
    leaving: HashMap<(AccountId, UserId), Instant>,
}

impl PresenceWebhooks {
    /// Starts the writer thread. `alone`: no cluster — users a previous run left online are
    /// marked offline first (none of their sessions survived it). `grace`: the presence grace.
    pub fn start(store: Store, global: bool, alone: bool, grace: Duration) -> Arc<Self> {
        let (queue, changes) = mpsc::sync_channel(MAX_QUEUED);
        let dispatcher = Arc::new(OnceLock::new());
        let mut writer = Writer {
            store,
            global,
            grace,
            dispatcher: dispatcher.clone(),
            clock: Clock::default(),
            leaving: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("switchboard-presence".into())
            .spawn(move || writer.run(alone, &changes))
            .expect("the OS starts a thread");
        Arc::new(Self { queue, dispatcher })
    }

    /// Where recorded deliveries are sent at once (until set, the dispatcher's scans find them).
    pub fn dispatch_to(&self, dispatcher: Recipient<Dispatch>) {
        let _ = self.dispatcher.set(dispatcher);
    }

    fn queue(&self, change: Change) {
        match self.queue.try_send(change) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => log::error!(
                "presence webhooks: {MAX_QUEUED} changes wait for the database; one is dropped"
            ),
        }
    }
}

impl PresenceHook for PresenceWebhooks {
    fn decided(&self, account: &AccountId, user: &UserId, online: bool, decided: Option<i64>) {
        self.queue(Change::Decided {
            account: account.clone(),
            user: user.clone(),
            online,
            decided,
        });
    }

    fn here(&self, account: &AccountId, user: &UserId, online: bool) {
        self.queue(Change::Here {
            account: account.clone(),
            user: user.clone(),
            online,
        });
    }
}

impl Writer {
    fn run(&mut self, alone: bool, changes: &Receiver<Change>) {
        if alone {
            self.left_online();
        }
        loop {
            let next = match self.leaving.values().min() {
                Some(due) => changes.recv_timeout(due.saturating_duration_since(Instant::now())),
                None => changes.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match next {
                Ok(change) => self.take(change),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Also while changes keep coming: a steady stream of them (a reconnect storm on
            // this node) must not hold back the offline of a user whose grace is over.
            if self
                .leaving
                .values()
                .min()
                .is_some_and(|due| *due <= Instant::now())
            {
                self.left();
            }
        }
    }

    fn take(&mut self, change: Change) {
        match change {
            Change::Decided {
                account,
                user,
                online,
                decided,
            } => {
                let decided = decided.unwrap_or_else(|| self.clock.stamp());
                self.record(&Transition {
                    account,
                    user,
                    online,
                    decided,
                    alone: false,
                });
            }
            Change::Here {
                account,
                user,
                online: false,
            } => {
                self.leaving
                    .insert((account, user), Instant::now() + self.grace);
            }
            Change::Here {
                account,
                user,
                online: true,
            } => {
                // Back within the grace (a reload): never went offline.
                if self
                    .leaving
                    .remove(&(account.clone(), user.clone()))
                    .is_none()
                {
                    let decided = self.clock.stamp();
                    self.record(&Transition {
                        account,
                        user,
                        online: true,
                        decided,
                        alone: true,
                    });
                }
            }
        }
    }

    /// Users whose grace is over are offline.
    fn left(&mut self) {
        let now = Instant::now();
        let over: Vec<(AccountId, UserId)> = self
            .leaving
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for (account, user) in over {
            self.leaving.remove(&(account.clone(), user.clone()));
            let decided = self.clock.stamp();
            self.record(&Transition {
                account,
                user,
                online: false,
                decided,
                alone: true,
            });
        }
    }

    /// Records one transition, retrying while the database fails; dispatches its delivery.
    fn record(&self, t: &Transition) {
        for attempt in 1..=ATTEMPTS {
            match self.try_record(t) {
                Ok(Some(delivery_id)) => {
                    if let Some(dispatcher) = self.dispatcher.get() {
                        dispatcher.do_send(Dispatch { delivery_id });
                    }
                    return;
                }
                Ok(None) => return,
                Err(e) if attempt == ATTEMPTS => {
                    log::error!(
                        "presence webhooks: cannot record account={} user={} online={}: {e}",
                        t.account,
                        t.user,
                        t.online
                    );
                }
                Err(_) => std::thread::sleep(RETRY_WAIT),
            }
        }
    }

    fn try_record(&self, t: &Transition) -> Result<Option<String>, StoreError> {
        let mut conn = self.store.connection()?;
        // A read first: an account with no receiver costs no write transaction.
        if !self.global
            && integrations::find_enabled(
                &mut conn,
                Provider::Presence.as_str(),
                t.account.as_str(),
            )?
            .is_none()
        {
            return Ok(None);
        }
        Ok(presence::record(&mut conn, t, self.global)?.map(|r| r.delivery_id))
    }

    /// Marks offline the users a previous run of this single node left online.
    fn left_online(&self) {
        let left = match self
            .store
            .connection()
            .and_then(|mut conn| presence::online(&mut conn, MAX_LEFT_ONLINE))
        {
            Ok(left) => left,
            Err(e) => {
                log::error!("presence webhooks: cannot read who was left online: {e}");
                return;
            }
        };
        for (account, user) in left {
            let (Ok(account), Ok(user)) = (AccountId::new(&account), UserId::new(&user)) else {
                continue;
            };
            let decided = self.clock.stamp();
            self.record(&Transition {
                account,
                user,
                online: false,
                decided,
                alone: true,
            });
        }
    }
}

/// This node's stamps for the decisions it makes alone: microseconds since the Unix epoch,
/// strictly increasing (used by the writer thread only; atomic so that it needs no `&mut`).
#[derive(Default)]
struct Clock {
    last: AtomicI64,
}

impl Clock {
    fn stamp(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or_default();
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}
