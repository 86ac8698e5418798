//! A room: the live sessions of one account, and the delivery of that account's events to them in
//! sequence order.
//!
//! Events are stored before they reach the room, and two publishes stored concurrently can reach
//! it in either order, so the room keeps early arrivals until the gap before them closes. A gap
//! that stays open (an event stored by another server process, or handed over while the room was
//! starting) is filled from the database: sequence numbers of an account are committed in order,
//! so once the database shows seq N, every earlier event is there too.
//!
//! What a room holds is bounded: events waiting for an earlier one ([`MAX_PENDING`], the oldest
//! dropped past it and read back from the database), and joins waiting for the account's
//! sequence number ([`MAX_WAITING_JOINS`], refused past it). No message waits in its mailbox on
//! the database. A panic in a room — a bug — stops it, and its supervisor restarts it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::broker::{Ephemeral, Join, Leave, OnlineUsers};
use super::session::{frame_size, Backlog, Deliver, Framing, FromRoom, Reservation};
use crate::cluster::Cluster;
use crate::config::Presence;
use crate::ids::{AccountId, SessionId, UserId};
use crate::metrics;
use crate::protocol::{ephemeral_frame, event_frame};
use crate::store::{events, Store};

/// How long a gap may stay open before the room reads the missing events from the database.
/// Reordering between concurrent publishes resolves in microseconds; this only bounds the delay
/// when an event will never arrive by hand-off.
const GAP_GRACE: Duration = Duration::from_millis(200);
/// How long to wait before reading again after the database failed.
const FILL_RETRY: Duration = Duration::from_secs(1);
/// Events read from the database per query.
const FILL_BATCH: i64 = 1000;
/// Most events held for an earlier one, and their most bytes: past either, the oldest is dropped
/// and read back from the database with the gap it leaves.
const MAX_PENDING: usize = 4096;
const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;
/// Most joins waiting for a new room to read the account's sequence number; past it, and when
/// the read fails, a join is refused and its session closed with 1011 (the client reconnects
/// with backoff) rather than held while the database is away.
const MAX_WAITING_JOINS: usize = 1024;
/// How long presence changes are gathered before they are announced: a room filling up (a
/// deploy, everyone reconnecting) announces its arrivals in a few frames, not one frame per
/// arrival to every member — which would cost the square of the room's size.
const PRESENCE_BATCH: Duration = Duration::from_millis(100);
/// A member with more than this queued for its client no longer holds publishers back (see
/// [`Handed`]): a client that stopped reading must not slow its whole account.
const PACED_BELOW: usize = 16 * 1024;
/// How many events a room's sessions may still be taking when a publish is answered: the
/// publish of event N waits until event N − `PACING_SLACK` has been taken (not N itself). A
/// session then finds several events waiting when it runs and writes them with one system call,
/// where with no slack it found about as many as there were publishers in flight; the queue in
/// front of an event stays bounded by the slack plus the publishes in flight.
const PACING_SLACK: usize = 4;

/// Carried by every delivery of one event. Its last copy is dropped once every session has
/// taken its frame, which (1) records the event's publish-to-delivery latency and (2) releases
/// the publish API calls waiting for the room to catch up: its own event's, or one published up
/// to [`PACING_SLACK`] events later (see [`Pacing`]). Publishers are thereby paced by what
/// the room can deliver instead of queueing work in it without bound.
#[derive(Debug, Clone)]
pub struct Handed(Arc<Ticket>);

#[derive(Debug)]
struct Ticket {
    since: Instant,
    /// Publishers released when the ticket is dropped (nothing is ever sent).
    waiting: Mutex<Vec<oneshot::Sender<()>>>,
    /// Whether any session was offered the event: only then is there a latency to record.
    offered: AtomicBool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if *self.offered.get_mut() {
            metrics::publish_to_delivery(self.since.elapsed());
        }
    }
}

impl Handed {
    /// For a publisher that waits: the ticket, and what resolves (with `Err`) when its last
    /// copy is gone.
    pub fn new() -> (Self, oneshot::Receiver<()>) {
        let (sender, receiver) = oneshot::channel();
        (Self::ticket(Instant::now(), Some(sender)), receiver)
    }

    /// For an event stored `age` ago, with nobody waiting.
    pub fn stored_ago(age: Duration) -> Self {
        let since = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        Self::ticket(since, None)
    }

    fn ticket(since: Instant, taken: Option<oneshot::Sender<()>>) -> Self {
        Self(Arc::new(Ticket {
            since,
            waiting: Mutex::new(taken.into_iter().collect()),
            offered: AtomicBool::new(false),
        }))
    }

    /// The publishers waiting on this ticket, who will now wait on another one (or none).
    fn take_waiting(&self) -> Vec<oneshot::Sender<()>> {
        std::mem::take(
            &mut *self
                .0
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// How long ago the event was published.
    pub fn age(&self) -> Duration {
        self.0.since.elapsed()
    }

    fn offered(&self) {
        self.0.offered.store(true, Ordering::Relaxed);
    }
}

/// The tickets of a room's last [`PACING_SLACK`] events, oldest first: the publisher of each new
/// event waits on the oldest of them.
#[derive(Default)]
struct Pacing {
    recent: VecDeque<Weak<Ticket>>,
}

impl Pacing {
    /// Moves the publisher waiting for `handed`'s event onto the ticket of the event
    /// [`PACING_SLACK`] before it — or releases it, when that one has been taken already or the
    /// room has not handed out as many events yet.
    fn pace(&mut self, handed: &Handed) {
        let waiting = handed.take_waiting();
        if self.recent.len() == PACING_SLACK {
            let earlier = self.recent.pop_front().and_then(|ticket| ticket.upgrade());
            if let Some(earlier) = earlier {
                earlier
                    .waiting
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(waiting);
            }
        }
        self.recent.push_back(Arc::downgrade(&handed.0));
    }
}

/// An event as the room handles it: serialized once, shared by every recipient.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RoomEvent {
    pub seq: u64,
    /// When set, only this user's sessions receive it.
    pub user: Option<UserId>,
    pub frame: ByteString,
    /// Set for newly stored events (not for those read back from the database).
    pub handed: Option<Handed>,
}

impl RoomEvent {
    /// `None` for a row that cannot be delivered faithfully. Rows are checked when they are
    /// published, so only one edited by hand can be; it is skipped rather than guessed at (a
    /// user id that does not parse must not widen the audience to the whole account).
    pub fn from_stored(row: events::StoredEvent) -> Option<Self> {
        let seq = row.seq as u64;
        let user = row.user_id.as_deref().map(UserId::new).transpose();
        let data = RawValue::from_string(row.data);
        let (Ok(user), Ok(data)) = (user, data) else {
            log::error!(
                "stored event is malformed, skipped account={} seq={seq}",
                row.account_id
            );
            return None;
        };
        Some(Self {
            seq,
            user,
            frame: event_frame(seq, &row.event, &data),
            handed: None,
        })
    }
}

/// The broker closes the room after its last session left.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// A frame on its way to the members: native, and framed for Socket.IO when a member first
/// needs it — once per event, however many members speak Socket.IO.
struct Framed<'a> {
    native: &'a ByteString,
    socket_io: std::cell::OnceCell<Option<ByteString>>,
}

impl<'a> Framed<'a> {
    fn new(native: &'a ByteString) -> Self {
        Self {
            native,
            socket_io: std::cell::OnceCell::new(),
        }
    }

    /// `None` for a frame that is not an event frame: every frame here was built by this node,
    /// so that is a bug, said once per frame; the frame is dropped.
    fn get(&self, framing: Framing) -> Option<&ByteString> {
        match framing {
            Framing::Native => Some(self.native),
            Framing::SocketIo => self
                .socket_io
                .get_or_init(|| {
                    let encoded = framing.encode(self.native);
                    if encoded.is_none() {
                        log::error!("a frame could not be framed for Socket.IO; dropped");
                    }
                    encoded
                })
                .as_ref(),
        }
    }
}

struct Member {
    user: UserId,
    framing: Framing,
    deliver: Recipient<Deliver>,
    notices: Recipient<FromRoom>,
    backlog: Arc<Backlog>,
}

impl Member {
    /// Queues a frame for the member unless its client is too far behind. The session then
    /// closes itself as a slow consumer (at its next message or heartbeat), and the client
    /// resumes from its last sequence number, so the frames not queued are not lost. A session
    /// replaying history is not closed for a stored event that does not fit: it is told it
    /// missed it, and its replay reads it from the database. Answers whether the frame was
    /// queued.
    fn offer(&self, framed: &Framed, seq: Option<u64>, handed: Option<&Handed>) -> bool {
        let Some(frame) = framed.get(self.framing) else {
            return false;
        };
        let handed = handed.filter(|_| self.backlog.queued() < PACED_BELOW);
        let size = frame_size(frame.len());
        let queued = match seq {
            Some(seq) => match self.backlog.reserve_stored(size) {
                Reservation::Queued => true,
                Reservation::Missed => {
                    // The session is replaying: it reads this one from the database.
                    self.notices.do_send(FromRoom::Missed { seq });
                    false
                }
                Reservation::Refused => false,
            },
            None => self.backlog.reserve(size),
        };
        if !queued {
            return false;
        }
        self.deliver.do_send(Deliver {
            frame: frame.clone(),
            seq,
            handed: handed.cloned(),
        });
        true
    }
}

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
    /// How many fills have begun: what [`Held::arrived`] is counted in.
    fills_begun: u64,
    presence: Presence,
    /// Users whose last session closed, still online until their timer fires.
    leaving: HashMap<UserId, SpawnHandle>,
    /// Presence changes not yet announced, oldest first, one per user.
    presence_changes: Vec<(UserId, bool)>,
    /// Within [`PRESENCE_BATCH`] of the last announcement: changes wait for the next.
    presence_batching: bool,
    /// In cluster mode, presence is decided across nodes (see [`crate::cluster::presence`]).
    cluster: Option<Cluster>,
}

impl Room {
    /// `last_seq`: the account's sequence number as the first session saw it, when it read it.
    pub fn new(
        account: AccountId,
        last_seq: Option<u64>,
        store: Store,
        presence: Presence,
        max_sessions_per_user: usize,
        cluster: Option<Cluster>,
    ) -> Self {
        Self {
            cluster,
            max_sessions_per_user,
            account,
            store,
            last_seq: last_seq.unwrap_or(0),
            last_seq_known: last_seq.is_some(),
            members: HashMap::new(),
            tabs: HashMap::new(),
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
        }
    }

    /// Sends an ephemeral frame to the sessions of `users` (all when `None`), except `except`'s.
    fn send_ephemeral(
        &self,
        frame: &ByteString,
        users: Option<&[UserId]>,
        except: Option<&UserId>,
    ) {
        let framed = Framed::new(frame);
        let deliver = |(user, ids): (&UserId, &Vec<SessionId>)| {
            if Some(user) == except {
                return;
            }
            for id in ids {
                if let Some(member) = self.members.get(id) {
                    member.offer(&framed, None, None);
                }
            }
        };
        match users {
            None => self.tabs.iter().for_each(deliver),
            Some(users) => users
                .iter()
                .filter_map(|u| self.tabs.get_key_value(u))
                .for_each(deliver),
        }
    }

    /// A user came online or went offline: announced at once when nothing was announced within
    /// the last [`PRESENCE_BATCH`], otherwise gathered with whatever else changes until then.
    fn presence_changed(&mut self, user: &UserId, online: bool, ctx: &mut Context<Self>) {
        if self.members.len() > self.presence.broadcast_max {
            return;
        }
        if self.presence_batching {
            self.presence_changes.retain(|(u, _)| u != user);
            self.presence_changes.push((user.clone(), online));
            return;
        }
        self.announce(vec![(user.clone(), online)]);
        self.batch_presence(ctx);
    }

    /// Holds presence changes back for [`PRESENCE_BATCH`], then announces them together; goes on
    /// batching while changes keep coming.
    fn batch_presence(&mut self, ctx: &mut Context<Self>) {
        self.presence_batching = true;
        ctx.run_later(PRESENCE_BATCH, |room, ctx| {
            room.guarded(ctx, |room, ctx| {
                let changes = std::mem::take(&mut room.presence_changes);
                if changes.is_empty() {
                    room.presence_batching = false;
                } else {
                    room.announce(changes);
                    room.batch_presence(ctx);
                }
            })
        });
    }

    /// Tells the account who came online or went offline. One change is a `user-online` or
    /// `user-offline` event (the user's own tabs know already); several are one
    /// `presence-changed` event listing them. Large rooms do not announce (see
    /// `Presence::broadcast_max`).
    fn announce(&self, changes: Vec<(UserId, bool)>) {
        if self.members.len() > self.presence.broadcast_max {
            return;
        }
        if let [(user, online)] = changes.as_slice() {
            let event = if *online {
                "user-online"
            } else {
                "user-offline"
            };
            let frame = ephemeral_frame(event, &serde_json::json!({ "user_id": user.as_str() }));
            self.send_ephemeral(&frame, None, Some(user));
            return;
        }
        let users = |wanted: bool| -> Vec<&str> {
            changes
                .iter()
                .filter(|(_, online)| *online == wanted)
                .map(|(user, _)| user.as_str())
                .collect()
        };
        let frame = ephemeral_frame(
            "presence-changed",
            &serde_json::json!({ "online": users(true), "offline": users(false) }),
        );
        self.send_ephemeral(&frame, None, None);
    }

    fn fan_out(&mut self, event: &RoomEvent) {
        if let Some(handed) = &event.handed {
            self.pacing.pace(handed);
        }
        let framed = Framed::new(&event.frame);
        let deliver = |id: &SessionId| {
            self.members
                .get(id)
                .is_some_and(|member| member.offer(&framed, Some(event.seq), event.handed.as_ref()))
        };
        let delivered = match &event.user {
            None => self.members.keys().filter(|id| deliver(id)).count(),
            Some(user) => self
                .tabs
                .get(user)
                .into_iter()
                .flatten()
                .filter(|id| deliver(id))
                .count(),
        };
        if delivered > 0 {
            metrics::delivered(delivered);
            if let Some(handed) = &event.handed {
                handed.offered();
            }
        }
    }

    /// Delivers every pending event that is next in sequence; schedules a fill if a gap remains.
    fn deliver_ready(&mut self, ctx: &mut Context<Self>) {
        while let Some(event) = self.pending.take_through(self.last_seq.saturating_add(1)) {
            self.deliver(event);
        }
        if !self.pending.is_empty() && !self.filling {
            self.filling = true;
            ctx.run_later(GAP_GRACE, |room, ctx| {
                room.guarded(ctx, |room, ctx| {
                    if room.pending.is_empty() {
                        room.filling = false;
                    } else {
                        room.fill(ctx);
                    }
                })
            });
        }
    }

    fn deliver(&mut self, event: RoomEvent) {
        if event.seq > self.last_seq {
            self.fan_out(&event);
            self.last_seq = event.seq;
        }
    }

    /// Holds an event until the events before it have been delivered.
    fn hold(&mut self, event: RoomEvent) {
        let dropped = self.pending.hold(event, self.fills_begun);
        if dropped > 0 {
            log::warn!(
                "room holds too many events waiting for an earlier one account={}; dropped the \
                 {dropped} oldest, which will be read from the database",
                self.account
            );
            metrics::room_events_dropped("overflow", dropped);
        }
    }

    /// A user's first session here opened (`online`), or their last one closed. Alone, the room
    /// decides what that means for their presence, keeping the grace itself; in a cluster, the
    /// cluster decides — the user may have sessions on other nodes, and this room may close
    /// before the grace is over.
    fn presence_here(&mut self, user: UserId, online: bool, ctx: &mut Context<Self>) {
        match (&self.cluster, online) {
            (Some(cluster), _) => cluster.presence(&self.account, &user, online),
            (None, true) => self.presence_changed(&user, true, ctx),
            (None, false) => self.going_offline(user, ctx),
        }
    }

    /// The user's last session closed: offline once the grace has passed without a new one.
    fn going_offline(&mut self, user: UserId, ctx: &mut Context<Self>) {
        let timer = ctx.run_later(self.presence.grace, {
            let user = user.clone();
            move |room, ctx| {
                room.guarded(ctx, |room, ctx| {
                    room.leaving.remove(&user);
                    room.presence_changed(&user, false, ctx);
                })
            }
        });
        self.leaving.insert(user, timer);
    }

    /// Reads the account's sequence number. Until it is known, joins wait (a join is answered
    /// with it) and events are held (one is delivered only if it is newer); other messages are
    /// handled as they come. An event stored after the read reaches this room, which the broker
    /// already lists.
    fn read_last_seq(&mut self, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let account = self.account.clone();
        let read = async move {
            store
                .run(move |conn| events::current_seq(conn, &account))
                .await
        };
        ctx.spawn(read.into_actor(self).map(|result, room, ctx| {
            room.guarded(ctx, |room, ctx| match result {
                Ok(seq) => room.last_seq_read(seq, ctx),
                Err(e) => {
                    log::error!("room start failed account={}: {e}", room.account);
                    metrics::database_error();
                    // Sessions do not wait on a database that is down: they close (1011) and
                    // their clients come back with backoff.
                    for join in room.waiting.drain(..) {
                        refuse(join);
                    }
                    ctx.run_later(FILL_RETRY, |room, ctx| {
                        room.guarded(ctx, |room, ctx| room.read_last_seq(ctx))
                    });
                }
            })
        }));
    }

    fn last_seq_read(&mut self, seq: u64, ctx: &mut Context<Self>) {
        self.last_seq = seq;
        self.last_seq_known = true;
        for join in std::mem::take(&mut self.waiting) {
            self.join(join, ctx);
        }
        self.pending.forget_through(seq);
        self.deliver_ready(ctx);
    }

    /// Reads the events after `last_seq` from the database and delivers them in order.
    fn fill(&mut self, ctx: &mut Context<Self>) {
        self.filling = true;
        self.fill_again = false;
        self.fills_begun += 1;
        let begun = self.fills_begun;
        let store = self.store.clone();
        let account = self.account.clone();
        let after = self.last_seq;
        let read = async move {
            store
                .run(move |conn| events::after(conn, &account, after, FILL_BATCH))
                .await
        };
        ctx.spawn(read.into_actor(self).map(move |result, room, ctx| {
            room.guarded(ctx, |room, ctx| {
                room.filling = false;
                match result {
                    Ok(rows) => room.apply_fill(rows, begun, ctx),
                    Err(e) => {
                        log::error!("room fill failed account={}: {e}", room.account);
                        metrics::database_error();
                        room.filling = true;
                        ctx.run_later(FILL_RETRY, |room, ctx| {
                            room.guarded(ctx, |room, ctx| room.fill(ctx))
                        });
                    }
                }
            })
        }));
    }

    /// Delivers a fill's rows, with the held events among them, in order. `begun`: the fill's
    /// number (see [`Held::arrived`]).
    fn apply_fill(&mut self, rows: Vec<events::StoredEvent>, begun: u64, ctx: &mut Context<Self>) {
        let more = rows.len() as i64 == FILL_BATCH;
        for row in rows {
            let seq = row.seq as u64;
            if seq <= self.last_seq {
                continue;
            }
            // Held events below this row are not in the database (deleted since): delivered as
            // they are, as they were announced.
            while let Some(held) = self.pending.take_below(seq) {
                self.deliver(held);
            }
            // The held copy, if any, carries the publisher's ticket.
            match self
                .pending
                .take(seq)
                .or_else(|| RoomEvent::from_stored(row))
            {
                Some(event) => self.deliver(event),
                // Skipped for good (see `RoomEvent::from_stored`).
                None => self.last_seq = seq,
            }
        }
        if more {
            return self.fill(ctx);
        }
        // The read saw every event committed before it began, and a node relays an event only
        // once it is committed: a held event that arrived before the read and is not in it
        // does not exist (a peer's bug), and must not keep the room reading.
        let absent = self.pending.drop_absent(self.last_seq, begun);
        if absent > 0 {
            log::warn!(
                "room dropped {absent} announced event(s) that are not in the database account={}",
                self.account
            );
            metrics::room_events_dropped("absent", absent);
        }
        if std::mem::take(&mut self.fill_again) {
            return self.fill(ctx);
        }
        self.deliver_ready(ctx);
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

    /// Takes a session in: it is told the last event it will not get, then gets every later one.
    fn join(&mut self, join: Join, ctx: &mut Context<Self>) {
        // A tab in a reload loop, or a script, must not pile up sessions without end.
        if self
            .tabs
            .get(&join.user)
            .is_some_and(|tabs| tabs.len() >= self.max_sessions_per_user)
        {
            join.notices.do_send(FromRoom::TooManySessions);
            return;
        }
        // Sent before any event for this session, so the welcome frame is always first.
        join.notices
            .do_send(FromRoom::Joined { seq: self.last_seq });
        let first_tab = !self.tabs.contains_key(&join.user);
        let returning = self.leaving.remove(&join.user);
        if let Some(timer) = returning {
            // Back within the grace (a reload): never went offline.
            ctx.cancel_future(timer);
        }
        self.tabs
            .entry(join.user.clone())
            .or_default()
            .push(join.session);
        self.members.insert(
            join.session,
            Member {
                user: join.user.clone(),
                framing: join.framing,
                deliver: join.deliver,
                notices: join.notices.clone(),
                backlog: join.backlog,
            },
        );
        if first_tab && returning.is_none() {
            self.presence_here(join.user, true, ctx);
        }
    }
}

/// Refuses a join the room cannot take now: its session closes with 1011 and its client comes
/// back with backoff.
fn refuse(join: Join) {
    metrics::join_refused();
    join.notices.do_send(FromRoom::Unavailable);
}

/// Events held until the events before them are delivered, by sequence number; bounded by
/// [`MAX_PENDING`] and [`MAX_PENDING_BYTES`].
#[derive(Default)]
struct Pending {
    events: BTreeMap<u64, Held>,
    bytes: usize,
}

struct Held {
    event: RoomEvent,
    /// How many fills had begun when it arrived: a fill that began later saw it in the
    /// database, if it is there.
    arrived: u64,
}

impl Pending {
    /// Holds `event` (replacing a copy of it); past the bounds drops the oldest, and answers
    /// how many.
    fn hold(&mut self, event: RoomEvent, arrived: u64) -> usize {
        self.bytes += event.frame.len();
        if let Some(old) = self.events.insert(event.seq, Held { event, arrived }) {
            self.bytes -= old.event.frame.len();
        }
        let mut dropped = 0;
        while self.events.len() > MAX_PENDING || self.bytes > MAX_PENDING_BYTES {
            self.pop_first();
            dropped += 1;
        }
        dropped
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    fn pop_first(&mut self) -> Option<RoomEvent> {
        let (_, held) = self.events.pop_first()?;
        self.bytes -= held.event.frame.len();
        Some(held.event)
    }

    /// The first held event, if its sequence number is at most `seq`.
    fn take_through(&mut self, seq: u64) -> Option<RoomEvent> {
        let first = *self.events.first_key_value()?.0;
        (first <= seq).then(|| self.pop_first()).flatten()
    }

    /// The first held event, if it comes before `seq`.
    fn take_below(&mut self, seq: u64) -> Option<RoomEvent> {
        self.take_through(seq.checked_sub(1)?)
    }

    fn take(&mut self, seq: u64) -> Option<RoomEvent> {
        let held = self.events.remove(&seq)?;
        self.bytes -= held.event.frame.len();
        Some(held.event)
    }

    /// Drops the events up to `seq` (delivered, or known not to exist).
    fn forget_through(&mut self, seq: u64) {
        while self.take_through(seq).is_some() {}
    }

    /// Drops the events after `head` that arrived before fill `begun` began; answers how many.
    fn drop_absent(&mut self, head: u64, begun: u64) -> usize {
        let absent: Vec<u64> = self
            .events
            .range(head.saturating_add(1)..)
            .filter(|(_, held)| held.arrived < begun)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &absent {
            self.take(*seq);
        }
        absent.len()
    }
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
pub struct Fill {
    pub head: Option<u64>,
}

impl Handler<Fill> for Room {
    type Result = ();

    fn handle(&mut self, Fill { head }: Fill, ctx: &mut Context<Self>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot::error::TryRecvError;

    fn released(publisher: &mut oneshot::Receiver<()>) -> bool {
        // The ticket never sends: a released publisher sees its sender dropped.
        matches!(publisher.try_recv(), Err(TryRecvError::Closed))
    }

    fn event(seq: u64, bytes: usize) -> RoomEvent {
        RoomEvent {
            seq,
            user: None,
            frame: "x".repeat(bytes).into(),
            handed: None,
        }
    }

    #[test]
    fn held_events_are_bounded_by_count_and_bytes_dropping_the_oldest() {
        let mut pending = Pending::default();
        for seq in 2..MAX_PENDING as u64 + 2 {
            assert_eq!(pending.hold(event(seq, 10), 0), 0);
        }
        assert_eq!(pending.hold(event(1_000_000, 10), 0), 1);
        assert_eq!(pending.events.len(), MAX_PENDING);
        assert_eq!(
            pending.events.first_key_value().map(|(seq, _)| *seq),
            Some(3)
        );

        let mut pending = Pending::default();
        pending.hold(event(5, 10), 0);
        assert_eq!(pending.hold(event(6, MAX_PENDING_BYTES), 0), 1);
        assert_eq!(pending.bytes, MAX_PENDING_BYTES);
        assert_eq!(pending.hold(event(7, 1), 0), 1);
        assert_eq!((pending.events.len(), pending.bytes), (1, 1));
    }

    #[test]
    fn only_events_that_arrived_before_a_complete_read_began_count_as_absent() {
        let mut pending = Pending::default();
        pending.hold(event(9, 1), 1);
        pending.hold(event(10, 1), 2);
        pending.hold(event(4, 1), 1);
        // A read (the second) saw everything up to 5: 9 arrived before it and is not there;
        // 10 arrived while it ran, so it may be; 4 is not after the head.
        assert_eq!(pending.drop_absent(5, 2), 1);
        assert_eq!(pending.events.keys().copied().collect::<Vec<_>>(), [4, 10]);
        assert_eq!(pending.bytes, 2);
    }

    #[test]
    fn a_publisher_waits_for_the_event_pacing_slack_before_its_own() {
        let mut pacing = Pacing::default();
        let (mut tickets, mut publishers): (Vec<_>, Vec<_>) =
            (0..PACING_SLACK + 2).map(|_| Handed::new()).unzip();

        // The first events of a room have nothing to wait for.
        for k in 0..PACING_SLACK {
            pacing.pace(&tickets[k]);
            assert!(released(&mut publishers[k]), "publisher {k}");
        }
        // The next waits for the first event, not for its own.
        pacing.pace(&tickets[PACING_SLACK]);
        assert!(!released(&mut publishers[PACING_SLACK]));
        drop(tickets.remove(PACING_SLACK));
        assert!(!released(&mut publishers[PACING_SLACK]));
        drop(tickets.remove(0));
        assert!(released(&mut publishers[PACING_SLACK]));

        // One whose earlier event has been taken already is released at once.
        drop(tickets.remove(0));
        pacing.pace(tickets.last().unwrap());
        assert!(released(&mut publishers[PACING_SLACK + 1]));
    }
}
