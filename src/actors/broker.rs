//! The broker: the one entry point for events and sessions. It starts a room for an account when
//! the account's first session joins, forwards joins, leaves and events to that room, and stops
//! the room when its last session leaves.
//!
//! Because every message for a room passes through the broker, the broker's count of a room's
//! members is exact, and a room is never stopped with a join still on its way to it.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

use super::room::{Room, RoomEvent, Shutdown};
use super::session::{Backlog, Deliver, FromRoom};
use crate::config::Presence;
use crate::ids::{AccountId, SessionId, UserId};
use crate::store::Store;

/// A session asks to receive its account's events.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    pub session: SessionId,
    pub account: AccountId,
    pub user: UserId,
    /// The account's sequence number when the session was authorised, if it was read then (to
    /// check a resume point): a new room catches up from the database after it, so an event
    /// stored while the room was starting is not lost. Without it, a new room reads it.
    pub seen_seq: Option<u64>,
    pub deliver: Recipient<Deliver>,
    pub notices: Recipient<FromRoom>,
    /// What is queued for the session's client; the room stops queueing past its bound.
    pub backlog: Arc<Backlog>,
}

/// The server is shutting down: every session is told to close (1001). Answers how many were.
#[derive(Message, Clone, Copy)]
#[rtype(result = "usize")]
pub struct Drain;

/// A session has ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub session: SessionId,
    pub account: AccountId,
}

/// An ephemeral frame (presence, typing) for some users of an account — or all of them — except
/// one; never stored.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ephemeral {
    pub account: AccountId,
    /// `None`: every user of the account.
    pub users: Option<Vec<UserId>>,
    /// The user the frame is about, who need not hear it.
    pub except: Option<UserId>,
    pub frame: ByteString,
}

/// The online users of an account: with a live session, or within the grace after their last.
#[derive(Message, Clone)]
#[rtype(result = "Vec<String>")]
pub struct OnlineUsers {
    pub account: AccountId,
}

/// A stored event, for the live sessions of its account.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    pub account: AccountId,
    pub event: RoomEvent,
}

/// A long-poll waiting for the next event `user` may see in `account`; woken once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wait {
    pub account: AccountId,
    pub user: UserId,
    pub wake: tokio::sync::oneshot::Sender<()>,
}

struct Waiter {
    user: UserId,
    wake: tokio::sync::oneshot::Sender<()>,
}

struct RoomEntry {
    room: Addr<Room>,
    members: usize,
}

pub struct Broker {
    store: Store,
    presence: Presence,
    /// Sessions (tabs) one user may have open at once.
    max_sessions_per_user: usize,
    rooms: HashMap<AccountId, RoomEntry>,
    /// Long-polls waiting for an account's next event (they need no room).
    waiters: HashMap<AccountId, Vec<Waiter>>,
}

impl Broker {
    pub fn new(store: Store, presence: Presence, max_sessions_per_user: usize) -> Self {
        Self {
            store,
            presence,
            max_sessions_per_user,
            rooms: HashMap::new(),
            waiters: HashMap::new(),
        }
    }
}

impl Actor for Broker {
    type Context = Context<Self>;
}

impl Handler<Join> for Broker {
    type Result = ();

    fn handle(&mut self, join: Join, _: &mut Context<Self>) {
        let entry = self.rooms.entry(join.account.clone()).or_insert_with(|| {
            log::debug!("room open account={}", join.account);
            RoomEntry {
                room: {
                    let room = Room::new(
                        join.account.clone(),
                        join.seen_seq,
                        self.store.clone(),
                        self.presence,
                        self.max_sessions_per_user,
                    );
                    Supervisor::start(move |_| room)
                },
                members: 0,
            }
        });
        entry.members += 1;
        entry.room.do_send(join);
    }
}

impl Handler<Leave> for Broker {
    type Result = ();

    fn handle(&mut self, leave: Leave, _: &mut Context<Self>) {
        let Some(entry) = self.rooms.get_mut(&leave.account) else {
            return;
        };
        entry.members -= 1;
        let account = leave.account.clone();
        entry.room.do_send(leave);
        if entry.members == 0 {
            log::debug!("room close account={account}");
            entry.room.do_send(Shutdown);
            self.rooms.remove(&account);
        }
    }
}

impl Handler<Publish> for Broker {
    type Result = ();

    fn handle(&mut self, publish: Publish, _: &mut Context<Self>) {
        if let Some(waiters) = self.waiters.get_mut(&publish.account) {
            let target = publish.event.user.as_ref();
            let woken = waiters.extract_if(.., |w| target.is_none_or(|t| *t == w.user));
            for waiter in woken {
                // The long-poll reads the events itself; this only wakes it.
                let _ = waiter.wake.send(());
            }
            if waiters.is_empty() {
                self.waiters.remove(&publish.account);
            }
        }
        // No room means no live session: the event is stored, and that is all it needs.
        if let Some(entry) = self.rooms.get(&publish.account) {
            entry.room.do_send(publish.event);
        }
    }
}

impl Handler<Ephemeral> for Broker {
    type Result = ();

    fn handle(&mut self, ephemeral: Ephemeral, _: &mut Context<Self>) {
        if let Some(entry) = self.rooms.get(&ephemeral.account) {
            entry.room.do_send(ephemeral);
        }
    }
}

impl Handler<OnlineUsers> for Broker {
    type Result = ResponseFuture<Vec<String>>;

    fn handle(&mut self, query: OnlineUsers, _: &mut Context<Self>) -> Self::Result {
        let room = self
            .rooms
            .get(&query.account)
            .map(|entry| entry.room.clone());
        Box::pin(async move {
            match room {
                Some(room) => room.send(query).await.unwrap_or_default(),
                None => Vec::new(),
            }
        })
    }
}

impl Handler<Drain> for Broker {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, drain: Drain, _: &mut Context<Self>) -> Self::Result {
        let rooms: Vec<_> = self.rooms.values().map(|e| e.room.clone()).collect();
        Box::pin(async move {
            let mut told = 0;
            for room in rooms {
                told += room.send(drain).await.unwrap_or(0);
            }
            told
        })
    }
}

/// Makes an account's room fail (see [`Fail`](super::room::Fail)); `false` without a room.
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "bool")]
pub struct FailRoom(pub AccountId);

impl Handler<FailRoom> for Broker {
    type Result = bool;

    fn handle(&mut self, FailRoom(account): FailRoom, _: &mut Context<Self>) -> bool {
        let Some(entry) = self.rooms.get(&account) else {
            return false;
        };
        entry.room.do_send(super::room::Fail);
        true
    }
}

/// Makes a user's sessions fail (see [`FailSessions`](super::room::FailSessions)).
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct FailUserSessions(pub AccountId, pub UserId);

impl Handler<FailUserSessions> for Broker {
    type Result = ();

    fn handle(&mut self, FailUserSessions(account, user): FailUserSessions, _: &mut Context<Self>) {
        if let Some(entry) = self.rooms.get(&account) {
            entry.room.do_send(super::room::FailSessions(user));
        }
    }
}

impl Handler<Wait> for Broker {
    type Result = ();

    fn handle(&mut self, wait: Wait, _: &mut Context<Self>) {
        let waiters = self.waiters.entry(wait.account).or_default();
        // Long-polls that timed out leave closed senders behind; drop them as new ones come.
        waiters.retain(|w| !w.wake.is_closed());
        waiters.push(Waiter {
            user: wait.user,
            wake: wait.wake,
        });
    }
}
