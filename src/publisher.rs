//! Group commit for the publish API. Publishes queue for one writer thread, which stores
//! whatever has queued up in a single transaction — one commit for many events, each still
//! committed (and given its sequence number) before its publish is answered — then hands the
//! events to the broker in order.
//!
//! The thread is the blocking executor for this path, so no actix thread waits on the database.
//!
//! A publish is answered once its event is committed and every live session of the account has
//! taken it (or [`PACING_MAX`] has passed): a publisher that outruns a room's fan-out is slowed
//! to its pace rather than piling events up in the server, which is what keeps delivery latency
//! flat under load.

use std::sync::mpsc;
use std::time::Duration;

use actix::Addr;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::actors::broker::Broker;
use crate::actors::room::Handed;
use crate::ids::{AccountId, UserId};
use crate::inbox;
use crate::store::{self, Store, StoreError};

/// Most publishes stored in one transaction.
const MAX_BATCH: usize = 512;
/// Longest a committed publish waits for its room to take the event.
pub const PACING_MAX: Duration = Duration::from_millis(250);

/// One publish, waiting for its sequence number.
struct Job {
    account: AccountId,
    user: Option<UserId>,
    event: String,
    data: Box<RawValue>,
    reply: oneshot::Sender<Result<u64, StoreError>>,
    handed: Handed,
}

/// The queue to the writer thread; the thread ends when this is dropped.
pub struct Publisher {
    jobs: mpsc::Sender<Job>,
}

impl Publisher {
    pub fn start(store: Store, broker: Addr<Broker>) -> Self {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("switchboard-publisher".into())
            .spawn(move || write_batches(&store, &broker, &queue))
            .expect("the OS starts a thread");
        Self { jobs }
    }

    /// Stores the event and returns its sequence number once the account's sessions have taken
    /// it (see the module's documentation).
    pub async fn publish(
        &self,
        account: AccountId,
        user: Option<UserId>,
        event: String,
        data: Box<RawValue>,
    ) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        let (handed, taken) = Handed::new();
        let job = Job {
            account,
            user,
            event,
            data,
            reply,
            handed,
        };
        self.jobs.send(job).map_err(|_| StoreError::Cancelled)?;
        let seq = answer.await.map_err(|_| StoreError::Cancelled)??;
        // Resolves (as closed) when the last delivery lets go of the ticket.
        let _ = tokio::time::timeout(PACING_MAX, taken).await;
        Ok(seq)
    }
}

fn write_batches(store: &Store, broker: &Addr<Broker>, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if store_together(store, broker, &mut batch).is_err() {
            // One failure must not fail the others: store each alone, each with its own answer.
            for job in batch {
                // A single job is always answered, stored or not.
                let _ = store_together(store, broker, &mut vec![job]);
            }
        }
    }
}

/// Stores the jobs in one transaction and answers them; on failure answers nothing (when
/// several jobs are given) or the one job's error, and returns `Err`.
fn store_together(store: &Store, broker: &Addr<Broker>, batch: &mut Vec<Job>) -> Result<(), ()> {
    let stored = store.connection().and_then(|mut conn| {
        let accounts: Vec<AccountId> = batch.iter().map(|j| j.account.clone()).collect();
        store::write_accounts(&mut conn, &accounts, |conn| {
            batch
                .iter()
                .map(|j| inbox::emit(conn, &j.account, j.user.as_ref(), &j.event, &j.data))
                .collect::<Result<Vec<_>, StoreError>>()
        })
    });
    match stored {
        Ok(events) => {
            for (job, mut event) in batch.drain(..).zip(events) {
                let seq = event.seq;
                event.handed = Some(job.handed);
                inbox::hand_off(broker, &job.account, vec![event]);
                let _ = job.reply.send(Ok(seq));
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
