//! Group commit for the publish API. Publishes queue for one writer thread, which stores
//! whatever has queued up in a single transaction — one commit for many events, each still
//! committed (and given its sequence number) before its publish is answered — then hands the
//! events to the broker in order.
//!
//! The thread is the blocking executor for this path, so no actix thread waits on the database.
//!
//! What waits for the thread is bounded ([`PublishQueue`]: publishes, and bytes of their data):
//! past it — the database is slow or stalled — a publish is refused at once with
//! [`PublishError::Overloaded`] (503 `overloaded`, `Retry-After`), nothing stored, instead of
//! queueing without limit.
//!
//! A publish is answered once its event is committed and the account's live sessions have
//! caught up to within a few events of it (see `event::Handed`), or [`PACING_MAX`] has
//! passed: a publisher that outruns a room's fan-out is slowed to its pace rather than piling
//! events up in the server, which is what keeps delivery latency flat under load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use actix::Addr;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::actors::broker::{Broker, Replayed};
use crate::channel::Channel;
use crate::commit;
use crate::config::PublishQueue;
use crate::event::{Handed, RoomEvent};
use crate::ids::{AccountId, UserId};
use crate::inbox;
use crate::store::connection::DbConnection;
use crate::store::events::{self, NewEvent};
use crate::store::publish_keys::{self, Key};
use crate::store::{self, now_ms, Store, StoreError};

/// Most publishes stored in one transaction.
const MAX_BATCH: usize = 512;
/// Longest a committed publish waits for its room to catch up.
pub const PACING_MAX: Duration = Duration::from_millis(250);

/// What the publish API asks to publish.
pub struct Request {
    pub account: AccountId,
    pub user: Option<UserId>,
    /// When set, only the sessions following this channel receive it.
    pub channel: Option<Channel>,
    pub event: String,
    pub data: Box<RawValue>,
    /// A retry with the same key gets the first publish's answer and stores nothing.
    pub idempotency_key: Option<String>,
}

/// The answer to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    /// The idempotency key had been used: this is the first publish's answer.
    pub replayed: bool,
}

/// Why a publish was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("too many publishes are waiting to be stored")]
    Overloaded,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a job costs in the queue besides its data.
const JOB_OVERHEAD: usize = 256;

/// One publish, waiting for its sequence number.
struct Job {
    request: Request,
    reply: oneshot::Sender<Result<Published, StoreError>>,
    handed: Handed,
    /// Its place in the queue, given back when the job is done with.
    _slot: Slot,
}

/// The queue's depth, shared by the API and the writer thread.
struct Depth {
    bound: PublishQueue,
    jobs: AtomicUsize,
    bytes: AtomicUsize,
}

/// A job's share of the queue's bound, held until the job is answered (stored or not).
struct Slot {
    depth: Arc<Depth>,
    bytes: usize,
}

impl Depth {
    fn take(self: &Arc<Self>, bytes: usize) -> Option<Slot> {
        let jobs = self.jobs.fetch_add(1, Ordering::Relaxed) + 1;
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let slot = Slot {
            depth: self.clone(),
            bytes,
        };
        if jobs > self.bound.max_publishes || total > self.bound.max_bytes {
            // Dropping the slot gives its share back.
            return None;
        }
        crate::metrics::publish_queue(jobs);
        Some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let jobs = self.depth.jobs.fetch_sub(1, Ordering::Relaxed) - 1;
        self.depth.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        crate::metrics::publish_queue(jobs);
    }
}

/// The queue to the writer thread; the thread ends when every clone is dropped.
#[derive(Clone)]
pub struct Publisher {
    jobs: mpsc::Sender<Job>,
    depth: Arc<Depth>,
}

impl Publisher {
    /// `idempotency_window`: how long an idempotency key is remembered; `bound`: how much may
    /// wait to be stored.
    pub fn start(
        store: Store,
        broker: Addr<Broker>,
        idempotency_window: Duration,
        bound: PublishQueue,
    ) -> Self {
        let (jobs, queue) = mpsc::channel();
        let writer = BatchWriter {
            store,
            broker,
            idempotency_window,
        };
        std::thread::Builder::new()
            .name("switchboard-publisher".into())
            .spawn(move || writer.write_batches(&queue))
            .expect("the OS starts a thread");
        let depth = Arc::new(Depth {
            bound,
            jobs: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        });
        Self { jobs, depth }
    }

    /// Stores the event and answers with its sequence number once the account's sessions have
    /// caught up (see the module's documentation); refuses it at once when the queue is full.
    pub async fn publish(&self, request: Request) -> Result<Published, PublishError> {
        self.submit(request)?.await
    }

    /// [`Publisher::publish`] in two steps: the request is queued (or refused) before this
    /// returns, so publishes submitted one after another are stored in that order even when
    /// their answers are awaited together (the outbox relies on it).
    pub fn submit(
        &self,
        request: Request,
    ) -> Result<impl std::future::Future<Output = Result<Published, PublishError>>, PublishError>
    {
        let cost = JOB_OVERHEAD + request.data.get().len() + request.event.len();
        let slot = self.depth.take(cost).ok_or_else(|| {
            crate::metrics::publish_overloaded();
            PublishError::Overloaded
        })?;
        let (reply, answer) = oneshot::channel();
        let (handed, taken) = Handed::new();
        let job = Job {
            request,
            reply,
            handed,
            _slot: slot,
        };
        self.jobs.send(job).map_err(|_| StoreError::Cancelled)?;
        Ok(async move {
            let published = answer.await.map_err(|_| StoreError::Cancelled)??;
            // Resolves (as closed) when the ticket holding this publisher is let go (see
            // `Handed`).
            let _ = tokio::time::timeout(PACING_MAX, taken).await;
            Ok(published)
        })
    }
}

/// What happened to one job in a batch.
enum Outcome {
    Stored(RoomEvent),
    Replayed(u64),
}

/// The writer thread's side.
struct BatchWriter {
    store: Store,
    broker: Addr<Broker>,
    idempotency_window: Duration,
}

impl BatchWriter {
    fn write_batches(&self, queue: &mpsc::Receiver<Job>) {
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if self.store_together(&mut batch).is_err() {
                // One failure must not fail the others: store each alone, each with its own
                // answer.
                for job in batch {
                    // A single job is always answered, stored or not.
                    let _ = self.store_together(&mut vec![job]);
                }
            }
        }
    }

    /// Stores the jobs in one transaction and answers them; on failure answers nothing (when
    /// several jobs are given) or the one job's error, and returns `Err`.
    fn store_together(&self, batch: &mut Vec<Job>) -> Result<(), ()> {
        let keys_since = now_ms() - self.idempotency_window.as_millis() as i64;
        let stored = self.store.connection().and_then(|mut conn| {
            let accounts: Vec<AccountId> =
                batch.iter().map(|j| j.request.account.clone()).collect();
            let requests: Vec<&Request> = batch.iter().map(|j| &j.request).collect();
            store::write_accounts(&mut conn, &accounts, |conn| {
                store_batch(conn, &requests, keys_since)
            })
        });
        match stored {
            Ok(outcomes) => {
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    let published = match outcome {
                        Outcome::Stored(mut event) => {
                            let seq = event.seq;
                            event.handed = Some(job.handed);
                            commit::hand_off(&self.broker, &job.request.account, vec![event]);
                            Published {
                                seq,
                                replayed: false,
                            }
                        }
                        Outcome::Replayed(seq) => {
                            // Its relay may have been lost with the node that stored it.
                            self.broker.do_send(Replayed {
                                account: job.request.account.clone(),
                                seq,
                            });
                            Published {
                                seq,
                                replayed: true,
                            }
                        }
                    };
                    let _ = job.reply.send(Ok(published));
                }
                Ok(())
            }
            Err(e) if batch.len() == 1 => {
                let job = batch.pop().expect("one job");
                let _ = job.reply.send(Err(e));
                Ok(())
            }
            Err(e) => {
                log::warn!(
                    "a batch of {} publishes failed, storing them one by one: {e}",
                    batch.len()
                );
                Err(())
            }
        }
    }
}

/// What becomes of one publish of a batch.
enum Plan {
    /// Its key was used before this batch: that publish's sequence number.
    Replay(u64),
    /// Its key was used by an earlier publish of this batch: that one's place among the new.
    SameAs(usize),
    /// Stored: its place among the new events.
    New(usize),
}

/// Stores a batch of publishes in a few statements — its keys looked up in one, one sequence
/// step per account, one multi-row insert of events and one of keys — and answers each in
/// order. A publish whose idempotency key was used within the window (earlier in this batch
/// included) is answered with that publish's sequence number instead of being stored.
fn store_batch(
    conn: &mut DbConnection,
    requests: &[&Request],
    keys_since: i64,
) -> Result<Vec<Outcome>, StoreError> {
    fn key_of<'r>(r: &'r Request) -> Option<Key<'r>> {
        r.idempotency_key.as_deref().map(|key| Key {
            account: r.account.as_str(),
            key,
        })
    }
    let keys: Vec<Key<'_>> = requests.iter().filter_map(|r| key_of(r)).collect();
    let found = publish_keys::find_many(conn, &keys, keys_since)?;
    let mut fresh: HashMap<Key<'_>, usize> = HashMap::new();
    let mut new_events = Vec::new();
    let mut plans = Vec::with_capacity(requests.len());
    for request in requests {
        let key = key_of(request);
        let plan = match &key {
            Some(k) => match found.live.get(&(k.account.to_owned(), k.key.to_owned())) {
                Some(seq) => Plan::Replay(*seq),
                None => match fresh.get(k) {
                    Some(i) => Plan::SameAs(*i),
                    None => Plan::New(new_events.len()),
                },
            },
            None => Plan::New(new_events.len()),
        };
        if let Plan::New(i) = plan {
            if let Some(k) = key {
                fresh.insert(k, i);
            }
            new_events.push(NewEvent {
                account: &request.account,
                user: request.user.as_ref(),
                channel: request.channel.as_ref(),
                event: &request.event,
                data: request.data.get(),
            });
        }
        plans.push(plan);
    }
    let seqs = events::append_many(conn, &new_events)?;
    let remembered: Vec<(Key<'_>, u64)> = fresh.into_iter().map(|(k, i)| (k, seqs[i])).collect();
    publish_keys::remember_many(conn, &remembered, &found.expired)?;
    Ok(plans
        .into_iter()
        .zip(requests)
        .map(|(plan, request)| match plan {
            Plan::Replay(seq) => Outcome::Replayed(seq),
            Plan::SameAs(i) => Outcome::Replayed(seqs[i]),
            Plan::New(i) => Outcome::Stored(inbox::stored_event(
                seqs[i],
                (request.user.as_ref(), request.channel.as_ref()),
                &request.event,
                &request.data,
            )),
        })
        .collect())
}
