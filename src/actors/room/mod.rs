//! A room: the live sessions of one account, and the delivery of that account's events to them in
//! sequence order.
//!
//! Events are stored before they reach the room, and two publishes stored concurrently can reach
//! it in either order, so the room keeps early arrivals until the gap before them closes. A gap
//! that stays open (an event stored by another server process, or handed over while the room was
//! starting) is filled from the database: sequence numbers of an account are committed in order,
//! so once the database shows seq N, every earlier event is there too.
//!
//! What a room holds is bounded: events waiting for an earlier one ([`order::MAX_PENDING`], the oldest
//! dropped past it and read back from the database), and joins waiting for the account's
//! sequence number ([`MAX_WAITING_JOINS`], refused past it). No message waits in its mailbox on
//! the database. A panic in a room — a bug — stops it, and its supervisor restarts it.
//!
//! The room's concepts each have a file: [`members`] (who is here and how a frame reaches them),
//! [`order`] (delivery in sequence order, holding early arrivals, filling gaps from the database)
//! and [`presence`] (who is online, announced in batches). This file holds the actor itself and
//! the messages it answers.
//!
//! Engine layer: may use `event`, `store` (through its executor), `protocol`, `config`, `ids`,
//! `metrics`, and the sibling actors' messages; other nodes only through [`Peers`].

mod members;
mod order;
mod presence;

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

use actix::prelude::*;

use std::sync::Arc;

use super::broker::{
    ChannelUsers, Ephemeral, Follow, Join, Leave, ListSessions, OnlineUsers, Revoke, SessionInfo,
};
use super::peers::Peers;
use super::presence_hook::PresenceHook;
use super::session::FromRoom;
use crate::channel::Channel;
use crate::config::Presence;
use crate::event::{Pacing, RoomEvent};
use crate::ids::{AccountId, SessionId, UserId};
use crate::metrics;
use crate::store::Store;
use members::Member;
use order::Pending;

/// Most joins waiting for a new room to read the account's sequence number; past it, and when
/// the read fails, a join is refused and its session closed with 1011 (the client reconnects
/// with backoff) rather than held while the database is away.
const MAX_WAITING_JOINS: usize = 1024;

/// The broker closes the room after its last session left.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

pub struct Room {
    account: AccountId,
    store: Store,
    /// The last sequence number delivered (or known not to exist).
    last_seq: u64,
    /// Whether `last_seq` came with the first session; if not, the room reads it on starting.
    last_seq_known: bool,
    /// Sessions (tabs) one user may have open at once; the next is refused.
    max_sessions_per_user: usize,
    members: HashMap<SessionId, Member>,
    /// Each user's sessions (tabs), for events addressed to one user.
    tabs: HashMap<UserId, Vec<SessionId>>,
    /// Each channel's followers, for channel events: none is looked for among all members.
    channels: HashMap<Channel, HashSet<SessionId>>,
    /// Events that arrived before an earlier one.
    pending: Pending,
    /// Joins that came before the account's sequence number was known, in order.
    waiting: Vec<Join>,
    pacing: Pacing,
    /// A database read is scheduled or under way.
    filling: bool,
    /// A catch-up was asked for while a read was under way (which may have begun too early to
    /// see what it is about): read again after it.
    fill_again: bool,
    /// How many fills have begun: what [`order::Held::arrived`] is counted in.
    fills_begun: u64,
    presence: Presence,
    /// Users whose last session closed, still online until their timer fires.
    leaving: HashMap<UserId, SpawnHandle>,
    /// Presence changes not yet announced, oldest first, one per user.
    presence_changes: Vec<(UserId, bool)>,
    /// Within [`PRESENCE_BATCH`] of the last announcement: changes wait for the next.
    presence_batching: bool,
    /// In cluster mode, presence is decided across nodes, by the peers.
    peers: Option<Arc<dyn Peers>>,
    /// Told of the presence decisions this room makes (alone, without peers).
    presence_hook: Option<Arc<dyn PresenceHook>>,
}

impl Room {
    /// `last_seq`: the account's sequence number as the first session saw it, when it read it.
    pub fn new(
        account: AccountId,
        last_seq: Option<u64>,
        store: Store,
        presence: Presence,
        max_sessions_per_user: usize,
        peers: Option<Arc<dyn Peers>>,
    ) -> Self {
        Self {
            peers,
            max_sessions_per_user,
            account,
            store,
            last_seq: last_seq.unwrap_or(0),
            last_seq_known: last_seq.is_some(),
            members: HashMap::new(),
            tabs: HashMap::new(),
            channels: HashMap::new(),
            pending: Pending::default(),
            waiting: Vec::new(),
            pacing: Pacing::default(),
            filling: false,
            fill_again: false,
            fills_begun: 0,
            presence,
            leaving: HashMap::new(),
            presence_changes: Vec::new(),
            presence_batching: false,
            presence_hook: None,
        }
    }

    /// Tells `hook` of the presence decisions this room makes.
    pub fn with_presence_hook(mut self, hook: Option<Arc<dyn PresenceHook>>) -> Self {
        self.presence_hook = hook;
        self
    }

    /// Runs room code so that a panic in it — a bug — stops the room instead of unwinding
    /// through the thread the rooms share; its supervisor then restarts it with its state (see
    /// [`Supervised`]), so its sessions stay served.
    fn guarded(
        &mut self,
        ctx: &mut Context<Self>,
        work: impl FnOnce(&mut Self, &mut Context<Self>),
    ) {
        if catch_unwind(AssertUnwindSafe(|| work(self, ctx))).is_err() {
            log::error!(
                "room failed (a panic) account={}; restarting it",
                self.account
            );
            ctx.stop();
        }
    }
}

/// Refuses a join the room cannot take now: its session closes with 1011 and its client comes
/// back with backoff.
fn refuse(join: Join) {
    metrics::join_refused();
    join.notices.do_send(FromRoom::Unavailable);
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.guarded(ctx, |room, ctx| {
            if room.last_seq_known {
                // Catch up on anything stored between the first session's authorisation and now.
                room.fill(ctx);
            } else {
                room.read_last_seq(ctx);
            }
        });
    }
}

impl Handler<Join> for Room {
    type Result = ();

    fn handle(&mut self, join: Join, ctx: &mut Context<Self>) {
        self.guarded(ctx, |room, ctx| {
            if room.last_seq_known {
                room.join(join, ctx);
            } else if room.waiting.len() < MAX_WAITING_JOINS {
                room.waiting.push(join);
            } else {
                refuse(join);
            }
        });
    }
}

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, Leave { session, .. }: Leave, ctx: &mut Context<Self>) {
        self.guarded(ctx, |room, ctx| {
            room.waiting.retain(|join| join.session != session);
            let Some(member) = room.members.remove(&session) else {
                return;
            };
            for channel in &member.channels {
                room.unindex(session, channel);
            }
            let Some(tabs) = room.tabs.get_mut(&member.user) else {
                return;
            };
            tabs.retain(|id| *id != session);
            if tabs.is_empty() {
                room.tabs.remove(&member.user);
                room.presence_here(member.user, false, ctx);
            }
        });
    }
}

impl Handler<Revoke> for Room {
    type Result = usize;

    fn handle(&mut self, revoke: Revoke, _: &mut Context<Self>) -> usize {
        let by_user = revoke.user.as_ref().and_then(|user| self.tabs.get(user));
        let ids: Vec<SessionId> = match (by_user, revoke.session) {
            (Some(tabs), _) => tabs.clone(),
            (None, Some(session)) if revoke.user.is_none() => vec![session],
            _ => Vec::new(),
        };
        let mut told = 0;
        for id in ids {
            if let Some(member) = self.members.get(&id) {
                member.notices.do_send(FromRoom::Revoked);
                told += 1;
            }
        }
        told
    }
}

impl Handler<ListSessions> for Room {
    type Result = MessageResult<ListSessions>;

    fn handle(&mut self, list: ListSessions, _: &mut Context<Self>) -> Self::Result {
        let mut sessions: Vec<SessionInfo> = (self.members.iter())
            .filter(|(_, m)| list.user.as_ref().is_none_or(|user| m.user == *user))
            .map(|(id, member)| member.info(*id))
            .collect();
        sessions.sort_by_key(|s| s.connected_at);
        MessageResult(sessions)
    }
}

impl Handler<ChannelUsers> for Room {
    type Result = MessageResult<ChannelUsers>;

    fn handle(&mut self, query: ChannelUsers, _: &mut Context<Self>) -> Self::Result {
        let mut users: Vec<String> = (self.channels.get(&query.channel).into_iter().flatten())
            .filter_map(|id| self.members.get(id))
            .map(|member| member.user.as_str().to_owned())
            .collect();
        users.sort();
        users.dedup();
        MessageResult(users)
    }
}

impl Handler<Follow> for Room {
    type Result = ();

    fn handle(&mut self, follow: Follow, ctx: &mut Context<Self>) {
        self.guarded(ctx, |room, _| room.follow(follow));
    }
}

impl Handler<RoomEvent> for Room {
    type Result = ();

    fn handle(&mut self, event: RoomEvent, ctx: &mut Context<Self>) {
        self.guarded(ctx, |room, ctx| {
            if !room.last_seq_known {
                room.hold(event);
            } else if event.seq > room.last_seq {
                room.hold(event);
                room.deliver_ready(ctx);
            }
        });
    }
}

/// Who to tell when the server goes away: every member's notice address (and those of the
/// sessions still waiting to join).
#[derive(Message)]
#[rtype(result = "Vec<Recipient<FromRoom>>")]
pub struct Members;

impl Handler<Members> for Room {
    type Result = MessageResult<Members>;

    fn handle(&mut self, _: Members, _: &mut Context<Self>) -> Self::Result {
        let waiting = self.waiting.iter().map(|join| join.notices.clone());
        MessageResult(
            self.members
                .values()
                .map(|m| m.notices.clone())
                .chain(waiting)
                .collect(),
        )
    }
}

/// A user came online or went offline on some node of the cluster.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PresenceChanged {
    pub user: UserId,
    pub online: bool,
}

impl Handler<PresenceChanged> for Room {
    type Result = ();

    fn handle(&mut self, change: PresenceChanged, ctx: &mut Context<Self>) {
        self.guarded(ctx, |room, ctx| {
            room.presence_changed(&change.user, change.online, ctx)
        });
    }
}

/// Events may have been stored that this room did not hear of (another node's, while Redis was
/// unreachable; one whose relay was lost): read them from the database — unless the room has
/// every event up to `head` already.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CatchUp {
    pub head: Option<u64>,
}

impl Handler<CatchUp> for Room {
    type Result = ();

    fn handle(&mut self, CatchUp { head }: CatchUp, ctx: &mut Context<Self>) {
        self.guarded(ctx, |room, ctx| {
            // A room still reading its sequence number will see the event in that read.
            if !room.last_seq_known || head.is_some_and(|head| head <= room.last_seq) {
                return;
            }
            if room.filling {
                room.fill_again = true;
            } else {
                room.fill(ctx);
            }
        });
    }
}

/// The broker starts rooms under a [`Supervisor`]: a room that fails (stops while the broker
/// still holds it) is restarted with its state — its members stay registered, so no session
/// has to do anything — and, starting again, reads from the database every event after the last
/// one it delivered, so whatever it was handling when it failed is delivered now.
impl Supervised for Room {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        log::warn!(
            "room restarted account={} members={} last_seq={}",
            self.account,
            self.members.len(),
            self.last_seq
        );
        // What belonged to the old context is gone with it.
        self.filling = false;
        self.fill_again = false;
        self.presence_batching = false;
        self.presence_changes.clear();
        let leaving: Vec<UserId> = self.leaving.drain().map(|(user, _)| user).collect();
        for user in leaving {
            self.going_offline(user, ctx);
        }
    }
}

/// Makes the room fail: for exercising its supervision.
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fail(pub Failure);

/// How a room is made to fail.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum Failure {
    /// Stops, as an internal error would.
    Stop,
    /// Panics, as a bug would.
    Panic,
}

impl Handler<Fail> for Room {
    type Result = ();

    fn handle(&mut self, Fail(failure): Fail, ctx: &mut Context<Self>) {
        self.guarded(ctx, |room, ctx| {
            log::error!(
                "room failing on request account={} ({failure:?})",
                room.account
            );
            match failure {
                Failure::Stop => ctx.stop(),
                Failure::Panic => panic!("room failing on request"),
            }
        });
    }
}

/// Makes one user's sessions fail, as a bug in them would: for exercising their isolation.
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct FailSessions(pub UserId);

impl Handler<FailSessions> for Room {
    type Result = ();

    fn handle(&mut self, FailSessions(user): FailSessions, _: &mut Context<Self>) {
        for id in self.tabs.get(&user).into_iter().flatten() {
            if let Some(member) = self.members.get(id) {
                member.notices.do_send(FromRoom::Fail);
            }
        }
    }
}

impl Handler<Shutdown> for Room {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Ephemeral> for Room {
    type Result = ();

    fn handle(&mut self, ephemeral: Ephemeral, ctx: &mut Context<Self>) {
        self.guarded(ctx, |room, _| {
            room.send_ephemeral(
                &ephemeral.frame,
                ephemeral.users.as_deref(),
                ephemeral.except.as_ref(),
            )
        });
    }
}

impl Handler<OnlineUsers> for Room {
    type Result = MessageResult<OnlineUsers>;

    fn handle(&mut self, _: OnlineUsers, _: &mut Context<Self>) -> Self::Result {
        let mut users: Vec<String> = self
            .tabs
            .keys()
            .chain(self.leaving.keys())
            .map(|u| u.as_str().to_owned())
            .collect();
        users.sort();
        MessageResult(users)
    }
}
