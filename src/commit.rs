//! The one commit path: write in a transaction that holds the account's lock → hand the
//! committed events to the broker → dispatch the outbound delivery the write queued, if any.
//! Every entry point that changes an account's data goes through here: the sessions (WebSocket
//! and Socket.IO sends and reads), the REST routes (conversations, notifications), webhooks,
//! and the outbound dispatcher's results. The publisher's group commit (several accounts in one
//! transaction) shares [`hand_off`].
//!
//! Services layer: uses `store`, `event` and the broker's `Publish`; the outbound dispatcher is
//! reached through [`Dispatch`], which it handles (so this module names no higher service).

use actix::{Addr, Message, Recipient};

use crate::actors::broker::{Broker, Publish};
use crate::event::RoomEvent;
use crate::ids::AccountId;
use crate::store::{self, DbConnection, Store, StoreError};

/// Attempt a delivery now, if it is due and no node holds it: sent for a fresh reply by the
/// node that stored it (through [`Committer::commit`]), and by a retry's timer. The outbound
/// dispatcher handles it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch {
    pub delivery_id: String,
}

/// What a write changed besides its answer: the events it stored, and the outbound delivery it
/// queued.
pub trait Changes {
    /// Takes the stored events out, for the broker.
    fn take_events(&mut self) -> Vec<RoomEvent>;

    /// The outbound delivery to dispatch once committed.
    fn delivery(&self) -> Option<&str> {
        None
    }
}

/// An answer and the events stored with it.
impl<T> Changes for (T, Vec<RoomEvent>) {
    fn take_events(&mut self) -> Vec<RoomEvent> {
        std::mem::take(&mut self.1)
    }
}

/// Hands committed events to the broker. Called on the blocking thread right after the commit,
/// not from a request future that a departing client could drop.
pub fn hand_off(broker: &Addr<Broker>, account: &AccountId, events: Vec<RoomEvent>) {
    for event in events {
        broker.do_send(Publish {
            account: account.clone(),
            event,
        });
    }
}

/// Runs `work` in one transaction holding the account's write lock ([`store::write`]), then
/// hands its events to the broker. For a caller already on a blocking thread; the dispatch, if
/// any, is the caller's.
pub fn write<T, E>(
    conn: &mut DbConnection,
    broker: &Addr<Broker>,
    account: &AccountId,
    work: impl FnMut(&mut DbConnection) -> Result<T, E>,
) -> Result<T, E>
where
    T: Changes,
    E: From<StoreError>,
{
    let mut changed = store::write(conn, account, work)?;
    hand_off(broker, account, changed.take_events());
    Ok(changed)
}

/// The commit path for async callers: the store, the broker and the dispatcher; cheap to clone.
#[derive(Clone)]
pub struct Committer {
    store: Store,
    broker: Addr<Broker>,
    dispatcher: Recipient<Dispatch>,
}

impl Committer {
    pub fn new(store: Store, broker: Addr<Broker>, dispatcher: Recipient<Dispatch>) -> Self {
        Self {
            store,
            broker,
            dispatcher,
        }
    }

    /// Writes with [`write`] on the blocking thread pool, then dispatches the outbound delivery
    /// the write queued, if any. The events are handed off on the blocking thread, so a caller
    /// that goes away while waiting loses nothing.
    pub async fn commit<T, E, F>(&self, account: AccountId, work: F) -> Result<T, E>
    where
        F: FnMut(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Changes + Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let broker = self.broker.clone();
        let changed = self
            .store
            .run(move |conn| write(conn, &broker, &account, work))
            .await?;
        if let Some(delivery_id) = changed.delivery() {
            self.dispatcher.do_send(Dispatch {
                delivery_id: delivery_id.to_owned(),
            });
        }
        Ok(changed)
    }
}
