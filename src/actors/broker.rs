//! The broker: the one entry point for events and sessions. It starts a room for an account when
//! the account's first session joins, forwards joins, leaves and events to that room, and stops
//! the room when its last session leaves.
//!
//! Because every message for a room passes through the broker, the broker's count of a room's
//! members is exact, and a room is never stopped with a join still on its way to it.
//!
//! In cluster mode the broker also relays what this node stores to the other nodes, hands what
//! they relay ([`FromPeers`]) to its rooms, and has rooms that have been quiet for the check
//! interval compare themselves with their account's head in the database, so that an event whose
//! relay was lost still arrives. The other nodes are reached through [`Peers`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;

use super::peers::Peers;
use super::presence_hook::PresenceHook;
use super::room::{self, Fail, Failure, Members, PresenceChanged, Room, Shutdown};
use super::session::{Backlog, Deliver, Framing, FromRoom};
use crate::channel::Channel;
use crate::config::Presence;
use crate::event::RoomEvent;
use crate::ids::{AccountId, SessionId, UserId};
use crate::metrics;
use crate::store::{events, Store};

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
    /// How the session's client takes event frames.
    pub framing: Framing,
    /// The session's wire, as the control API names it (`websocket`, `socket.io`, `sse`).
    pub transport: &'static str,
    pub deliver: Recipient<Deliver>,
    pub notices: Recipient<FromRoom>,
    /// What is queued for the session's client; the room stops queueing past its bound.
    pub backlog: Arc<Backlog>,
    /// Dropped once the room has told the session where it stands (joined, or refused): a
    /// WebSocket handshake waits for it, so that its answer and the welcome leave together.
    pub answered: Option<tokio::sync::oneshot::Sender<()>>,
    /// The channels the session follows from the start (checked against its token).
    pub channels: Vec<Channel>,
    /// For the control API: since when (milliseconds since the Unix epoch).
    pub connected_at: i64,
}

/// Closes live sessions of an account with 4005 (the control API): a user's, or one session.
/// Answers how many were told.
#[derive(Message, Clone)]
#[rtype(result = "usize")]
pub struct Revoke {
    pub account: AccountId,
    pub user: Option<UserId>,
    pub session: Option<SessionId>,
}

impl Revoke {
    pub fn user(account: AccountId, user: UserId) -> Self {
        Self {
            account,
            user: Some(user),
            session: None,
        }
    }
}

/// One live session, as the control API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    pub session_id: String,
    pub user_id: String,
    /// `websocket`, `socket.io` or `sse`.
    pub transport: &'static str,
    /// Milliseconds since the Unix epoch.
    pub connected_at: i64,
    pub channels: Vec<String>,
    /// Bytes written for the client and not yet taken by it.
    pub queued_bytes: usize,
}

/// The live sessions of an account on this node (one user's, with `user`).
#[derive(Message, Clone)]
#[rtype(result = "Vec<SessionInfo>")]
pub struct ListSessions {
    pub account: AccountId,
    pub user: Option<UserId>,
}

/// The users of an account with a live session on this node that follows `channel`.
#[derive(Message, Clone)]
#[rtype(result = "Vec<String>")]
pub struct ChannelUsers {
    pub account: AccountId,
    pub channel: Channel,
}

/// A session follows a channel from now on (`follow`), or stops. The room answers a follow with
/// [`FromRoom::Subscribed`], through the session's mailbox, so that the answer comes before any
/// event of the channel; a stop needs no answer (the broker hands the room every message of a
/// session in order, so no event published after the session said so reaches it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Follow {
    pub account: AccountId,
    pub session: SessionId,
    pub channel: Channel,
    pub follow: bool,
    /// For a follow: handed back with the answer (the client's `ref` and `since`).
    pub request: Option<FollowRequest>,
}

/// What a `subscribe` frame asked beyond the channel, handed back to the session with the room's
/// answer.
#[derive(Debug, Clone, Default)]
pub struct FollowRequest {
    pub reference: Option<serde_json::Value>,
    pub since: Option<u64>,
}

/// The server is shutting down: every session is told to close (1001, "reconnect"), in batches
/// spread over `period`, so that clients reconnecting to the other nodes do not arrive all at
/// once. Answers, when done, how many were told.
#[derive(Message, Clone, Copy)]
#[rtype(result = "usize")]
pub struct Drain {
    pub period: Duration,
}

/// How far apart a drain's batches are: its period is cut into steps this long.
const DRAIN_STEP: Duration = Duration::from_millis(100);

/// A session has ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub session: SessionId,
    pub account: AccountId,
}

/// An ephemeral frame (presence, typing) for some users of an account — or all of them — except
/// one; never stored.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Ephemeral {
    pub account: AccountId,
    /// `None`: every user of the account.
    pub users: Option<Vec<UserId>>,
    /// The user the frame is about, who need not hear it.
    pub except: Option<UserId>,
    /// When set, only the sessions following this channel (of `users`) hear it.
    pub channel: Option<Channel>,
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
    /// The channels the long-poll follows: another channel's event does not wake it.
    pub channels: Vec<Channel>,
    pub wake: tokio::sync::oneshot::Sender<()>,
}

struct Waiter {
    user: UserId,
    channels: Vec<Channel>,
    wake: tokio::sync::oneshot::Sender<()>,
}

struct RoomEntry {
    room: Addr<Room>,
    members: usize,
    /// Since when the room has had no event through the broker and no head check.
    quiet_since: Instant,
}

/// Most rooms whose head one check reads: one check stays one bounded piece of database work,
/// and rooms checked go to the back of the line.
const HEAD_CHECK_MAX: usize = 10_000;

/// News from the other nodes of a cluster.
#[derive(Message)]
#[rtype(result = "()")]
pub enum FromPeers {
    /// An event another node stored.
    Event {
        account: AccountId,
        event: RoomEvent,
    },
    Ephemeral(Ephemeral),
    /// A user came online or went offline across the cluster.
    Presence {
        account: AccountId,
        user: UserId,
        online: bool,
        /// When Redis decided it (microseconds); `None` when this node decided it alone (Redis
        /// was unreachable).
        decided: Option<i64>,
    },
    /// Events of the account (of every account, for `None`) may not have reached this node:
    /// its rooms read them from the database — unless they have every event up to `head`.
    CatchUp {
        account: Option<AccountId>,
        /// The account's sequence number as the sender knows it, if it does.
        head: Option<u64>,
    },
}

/// Events may have been stored that rooms did not hear of: the account's room (every room, for
/// `None`) reads them from the database.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CatchUp(pub Option<AccountId>);

/// A publish was answered as an idempotent replay of event `seq`. The node that stored it may
/// have died before relaying it, and a replay stores and relays nothing: every node's room of
/// the account makes sure it has the event (see [`Peers::catch_up`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Replayed {
    pub account: AccountId,
    pub seq: u64,
}

pub struct Broker {
    store: Store,
    /// The other nodes, in cluster mode.
    peers: Option<Arc<dyn Peers>>,
    /// Told of presence decisions: by the rooms alone, by the broker (for every node's
    /// decisions) in cluster mode.
    presence_hook: Option<Arc<dyn PresenceHook>>,
    presence: Presence,
    /// Sessions (tabs) one user may have open at once.
    max_sessions_per_user: usize,
    rooms: HashMap<AccountId, RoomEntry>,
    /// Long-polls waiting for an account's next event (they need no room).
    waiters: HashMap<AccountId, Vec<Waiter>>,
    /// A head check is reading the database (the next waits for it).
    checking_heads: bool,
}

impl Broker {
    pub fn new(
        store: Store,
        presence: Presence,
        max_sessions_per_user: usize,
        peers: Option<Arc<dyn Peers>>,
    ) -> Self {
        Self {
            store,
            peers,
            presence_hook: None,
            presence,
            max_sessions_per_user,
            rooms: HashMap::new(),
            waiters: HashMap::new(),
            checking_heads: false,
        }
    }

    /// Tells `hook` of every presence decision this node hears of.
    pub fn with_presence_hook(mut self, hook: Option<Arc<dyn PresenceHook>>) -> Self {
        self.presence_hook = hook;
        self
    }
}

impl Actor for Broker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(peers) = &self.peers {
            let every = peers.check_interval();
            ctx.run_interval(every, move |broker, ctx| broker.check_heads(every, ctx));
        }
    }
}

impl Handler<Join> for Broker {
    type Result = ();

    fn handle(&mut self, join: Join, _: &mut Context<Self>) {
        let entry = self.rooms.entry(join.account.clone()).or_insert_with(|| {
            log::debug!("room open account={}", join.account);
            metrics::room_opened();
            RoomEntry {
                room: {
                    let room = Room::new(
                        join.account.clone(),
                        join.seen_seq,
                        self.store.clone(),
                        self.presence,
                        self.max_sessions_per_user,
                        self.peers.clone(),
                    )
                    .with_presence_hook(self.presence_hook.clone());
                    Supervisor::start(move |_| room)
                },
                members: 0,
                quiet_since: Instant::now(),
            }
        });
        entry.members += 1;
        entry.room.do_send(join);
    }
}

impl Handler<Revoke> for Broker {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, revoke: Revoke, _: &mut Context<Self>) -> Self::Result {
        let room = self.rooms.get(&revoke.account).map(|e| e.room.clone());
        Box::pin(async move {
            match room {
                Some(room) => room.send(revoke).await.unwrap_or(0),
                None => 0,
            }
        })
    }
}

impl Handler<ListSessions> for Broker {
    type Result = ResponseFuture<Vec<SessionInfo>>;

    fn handle(&mut self, list: ListSessions, _: &mut Context<Self>) -> Self::Result {
        let room = self.rooms.get(&list.account).map(|e| e.room.clone());
        Box::pin(async move {
            match room {
                Some(room) => room.send(list).await.unwrap_or_default(),
                None => Vec::new(),
            }
        })
    }
}

impl Handler<ChannelUsers> for Broker {
    type Result = ResponseFuture<Vec<String>>;

    fn handle(&mut self, query: ChannelUsers, _: &mut Context<Self>) -> Self::Result {
        let room = self.rooms.get(&query.account).map(|e| e.room.clone());
        Box::pin(async move {
            match room {
                Some(room) => room.send(query).await.unwrap_or_default(),
                None => Vec::new(),
            }
        })
    }
}

impl Handler<Follow> for Broker {
    type Result = ();

    fn handle(&mut self, follow: Follow, _: &mut Context<Self>) {
        if let Some(entry) = self.rooms.get(&follow.account) {
            entry.room.do_send(follow);
        }
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
            metrics::room_closed();
            entry.room.do_send(Shutdown);
            self.rooms.remove(&account);
        }
    }
}

impl Broker {
    /// Wakes the account's long-polls the event is for, and hands it to the account's room.
    fn deliver(&mut self, account: &AccountId, event: RoomEvent) {
        if let Some(waiters) = self.waiters.get_mut(account) {
            let (target, channel) = (event.user.as_ref(), event.channel.as_ref());
            let woken = waiters.extract_if(.., |w| {
                target.is_none_or(|t| *t == w.user)
                    && channel.is_none_or(|c| w.channels.contains(c))
            });
            for waiter in woken {
                // The long-poll reads the events itself; this only wakes it.
                let _ = waiter.wake.send(());
            }
            if waiters.is_empty() {
                self.waiters.remove(account);
            }
        }
        // No room means no live session: the event is stored, and that is all it needs.
        if let Some(entry) = self.rooms.get_mut(account) {
            entry.quiet_since = Instant::now();
            entry.room.do_send(event);
        }
    }

    fn fill(&self, account: &AccountId, head: Option<u64>) {
        if let Some(entry) = self.rooms.get(account) {
            entry.room.do_send(room::CatchUp { head });
        }
    }

    /// Has the account's room (every room, for `None`) catch up to `head` (see [`CatchUp`]).
    fn catch_up(&self, account: Option<&AccountId>, head: Option<u64>) {
        match account {
            Some(account) => self.fill(account, head),
            None => self
                .rooms
                .values()
                .for_each(|entry| entry.room.do_send(room::CatchUp { head })),
        }
    }

    /// Cluster mode: reads the heads of the accounts whose rooms have been quiet for `quiet`
    /// (at most [`HEAD_CHECK_MAX`]), and has the rooms that are behind catch up. A room that
    /// gets events sees a missing one as a gap and fills it; this bounds how long a committed
    /// event whose relay was lost can stay undelivered on a quiet account: at most about twice
    /// `quiet`, while the database is reachable.
    fn check_heads(&mut self, quiet: Duration, ctx: &mut Context<Self>) {
        if self.checking_heads {
            return;
        }
        let now = Instant::now();
        let due: Vec<AccountId> = self
            .rooms
            .iter_mut()
            .filter(|(_, entry)| now.duration_since(entry.quiet_since) >= quiet)
            .take(HEAD_CHECK_MAX)
            .map(|(account, entry)| {
                entry.quiet_since = now;
                account.clone()
            })
            .collect();
        if due.is_empty() {
            return;
        }
        self.checking_heads = true;
        let store = self.store.clone();
        let read = async move { store.run(move |conn| events::heads(conn, &due)).await };
        ctx.spawn(read.into_actor(self).map(|heads, broker, _| {
            broker.checking_heads = false;
            match heads {
                Ok(heads) => {
                    for (account, head) in heads {
                        broker.fill(&account, Some(head));
                    }
                }
                Err(e) => {
                    log::warn!("head check failed: {e}");
                    metrics::database_error();
                }
            }
        }));
    }

    fn ephemeral(&self, ephemeral: Ephemeral) {
        if let Some(entry) = self.rooms.get(&ephemeral.account) {
            entry.room.do_send(ephemeral);
        }
    }
}

impl Handler<Publish> for Broker {
    type Result = ();

    fn handle(&mut self, publish: Publish, _: &mut Context<Self>) {
        metrics::published(1);
        if let Some(peers) = &self.peers {
            peers.relay_event(&publish.account, &publish.event);
        }
        self.deliver(&publish.account, publish.event);
    }
}

impl Handler<Ephemeral> for Broker {
    type Result = ();

    fn handle(&mut self, ephemeral: Ephemeral, _: &mut Context<Self>) {
        if let Some(peers) = &self.peers {
            peers.relay_ephemeral(ephemeral.clone());
        }
        self.ephemeral(ephemeral);
    }
}

impl Handler<FromPeers> for Broker {
    type Result = ();

    fn handle(&mut self, news: FromPeers, _: &mut Context<Self>) {
        match news {
            FromPeers::Event { account, event } => self.deliver(&account, event),
            FromPeers::Ephemeral(ephemeral) => self.ephemeral(ephemeral),
            FromPeers::Presence {
                account,
                user,
                online,
                decided,
            } => {
                if let Some(hook) = &self.presence_hook {
                    hook.decided(&account, &user, online, decided);
                }
                if let Some(entry) = self.rooms.get(&account) {
                    entry.room.do_send(PresenceChanged { user, online });
                }
            }
            FromPeers::CatchUp { account, head } => self.catch_up(account.as_ref(), head),
        }
    }
}

impl Handler<CatchUp> for Broker {
    type Result = ();

    fn handle(&mut self, CatchUp(account): CatchUp, _: &mut Context<Self>) {
        self.catch_up(account.as_ref(), None);
    }
}

impl Handler<Replayed> for Broker {
    type Result = ();

    fn handle(&mut self, Replayed { account, seq }: Replayed, _: &mut Context<Self>) {
        if let Some(peers) = &self.peers {
            peers.catch_up(&account, seq);
        }
        self.fill(&account, Some(seq));
    }
}

impl Handler<OnlineUsers> for Broker {
    type Result = ResponseFuture<Vec<String>>;

    fn handle(&mut self, query: OnlineUsers, _: &mut Context<Self>) -> Self::Result {
        let room = self
            .rooms
            .get(&query.account)
            .map(|entry| entry.room.clone());
        let asked = self
            .peers
            .as_ref()
            .map(|peers| peers.online_users(&query.account));
        Box::pin(async move {
            if let Some(asked) = asked {
                if let Some(users) = asked.await {
                    return users;
                }
            }
            // Alone, or Redis cannot say: this node's view.
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
            let mut sessions = Vec::new();
            for room in rooms {
                sessions.extend(room.send(Members).await.unwrap_or_default());
            }
            let batches = (drain.period.as_millis() / DRAIN_STEP.as_millis()).max(1) as usize;
            let per_batch = sessions.len().div_ceil(batches).max(1);
            let pause = drain.period / batches as u32;
            for (i, batch) in sessions.chunks(per_batch).enumerate() {
                if i > 0 {
                    actix::clock::sleep(pause).await;
                }
                for session in batch {
                    session.do_send(FromRoom::GoingAway);
                }
            }
            sessions.len()
        })
    }
}

/// Makes an account's room fail (see [`Fail`](super::room::Fail)) by stopping; `false` without
/// a room.
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "bool")]
pub struct FailRoom(pub AccountId);

impl Handler<FailRoom> for Broker {
    type Result = bool;

    fn handle(&mut self, FailRoom(account): FailRoom, _: &mut Context<Self>) -> bool {
        self.fail_room(&account, Failure::Stop)
    }
}

/// Makes an account's room panic, as a bug would; `false` without a room.
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "bool")]
pub struct PanicRoom(pub AccountId);

impl Handler<PanicRoom> for Broker {
    type Result = bool;

    fn handle(&mut self, PanicRoom(account): PanicRoom, _: &mut Context<Self>) -> bool {
        self.fail_room(&account, Failure::Panic)
    }
}

impl Broker {
    fn fail_room(&self, account: &AccountId, failure: Failure) -> bool {
        let Some(entry) = self.rooms.get(account) else {
            return false;
        };
        entry.room.do_send(Fail(failure));
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
            channels: wait.channels,
            wake: wait.wake,
        });
    }
}
