//! A room: the live sessions of one account, and the delivery of that account's events to them in
//! sequence order.
//!
//! Events are stored before they reach the room, and two publishes stored concurrently can reach
//! it in either order, so the room keeps early arrivals until the gap before them closes. A gap
//! that stays open (an event stored by another server process, or handed over while the room was
//! starting) is filled from the database: sequence numbers of an account are committed in order,
//! so once the database shows seq N, every earlier event is there too.

use std::collections::{BTreeMap, HashMap, VecDeque};
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
    socket_io: std::cell::OnceCell<ByteString>,
}

impl<'a> Framed<'a> {
    fn new(native: &'a ByteString) -> Self {
        Self {
            native,
            socket_io: std::cell::OnceCell::new(),
        }
    }

    fn get(&self, framing: Framing) -> &ByteString {
        match framing {
            Framing::Native => self.native,
            Framing::SocketIo => self.socket_io.get_or_init(|| framing.encode(self.native)),
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
        let frame = framed.get(self.framing);
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
    pending: BTreeMap<u64, RoomEvent>,
    pacing: Pacing,
    /// A database read is scheduled or under way.
    filling: bool,
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
            pending: BTreeMap::new(),
            pacing: Pacing::default(),
            filling: false,
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
            let changes = std::mem::take(&mut room.presence_changes);
            if changes.is_empty() {
                room.presence_batching = false;
            } else {
                room.announce(changes);
                room.batch_presence(ctx);
            }
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
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.last_seq + 1 {
                break;
            }
            let event = entry.remove();
            self.fan_out(&event);
            self.last_seq = event.seq;
        }
        if !self.pending.is_empty() && !self.filling {
            self.filling = true;
            ctx.run_later(GAP_GRACE, |room, ctx| {
                if room.pending.is_empty() {
                    room.filling = false;
                } else {
                    room.fill(ctx);
                }
            });
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
                room.leaving.remove(&user);
                room.presence_changed(&user, false, ctx);
            }
        });
        self.leaving.insert(user, timer);
    }

    /// Reads the account's sequence number, holding every message (joins, events) until it is
    /// known: a join is then answered with it, and an event is delivered only if it is newer.
    /// An event stored after the read reaches this room, which the broker already lists.
    fn read_last_seq(&mut self, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let account = self.account.clone();
        let read = async move {
            store
                .run(move |conn| events::current_seq(conn, &account))
                .await
        };
        ctx.wait(read.into_actor(self).map(|result, room, ctx| match result {
            Ok(seq) => {
                room.last_seq = seq;
                room.last_seq_known = true;
            }
            Err(e) => {
                log::error!("room start failed account={}: {e}", room.account);
                metrics::database_error();
                ctx.wait(actix::clock::sleep(FILL_RETRY).into_actor(room));
                room.read_last_seq(ctx);
            }
        }));
    }

    /// Reads the events after `last_seq` from the database and delivers them in order.
    fn fill(&mut self, ctx: &mut Context<Self>) {
        self.filling = true;
        let store = self.store.clone();
        let account = self.account.clone();
        let after = self.last_seq;
        let read = async move {
            store
                .run(move |conn| events::after(conn, &account, after, FILL_BATCH))
                .await
        };
        ctx.spawn(read.into_actor(self).map(|result, room, ctx| {
            room.filling = false;
            match result {
                Ok(rows) => room.apply_fill(rows, ctx),
                Err(e) => {
                    log::error!("room fill failed account={}: {e}", room.account);
                    metrics::database_error();
                    room.filling = true;
                    ctx.run_later(FILL_RETRY, |room, ctx| room.fill(ctx));
                }
            }
        }));
    }

    fn apply_fill(&mut self, rows: Vec<events::StoredEvent>, ctx: &mut Context<Self>) {
        let more = rows.len() as i64 == FILL_BATCH;
        let newest = rows.last().map(|row| row.seq as u64);
        for row in rows {
            let seq = row.seq as u64;
            if seq > self.last_seq && !self.pending.contains_key(&seq) {
                if let Some(event) = RoomEvent::from_stored(row) {
                    self.pending.insert(seq, event);
                }
            }
        }
        if let Some(newest) = newest {
            // Everything up to `newest` that exists was in this read: deliver it, skipping
            // numbers that are not there.
            while let Some(entry) = self.pending.first_entry() {
                if *entry.key() > newest {
                    break;
                }
                let event = entry.remove();
                self.fan_out(&event);
                self.last_seq = event.seq;
            }
        }
        if more {
            self.fill(ctx);
        } else {
            self.deliver_ready(ctx);
        }
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.last_seq_known {
            // Catch up on anything stored between the first session's authorisation and now.
            self.fill(ctx);
        } else {
            self.read_last_seq(ctx);
        }
    }
}

impl Handler<Join> for Room {
    type Result = ();

    fn handle(&mut self, join: Join, ctx: &mut Context<Self>) {
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

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, Leave { session, .. }: Leave, ctx: &mut Context<Self>) {
        let Some(member) = self.members.remove(&session) else {
            return;
        };
        let Some(tabs) = self.tabs.get_mut(&member.user) else {
            return;
        };
        tabs.retain(|id| *id != session);
        if tabs.is_empty() {
            self.tabs.remove(&member.user);
            self.presence_here(member.user, false, ctx);
        }
    }
}

impl Handler<RoomEvent> for Room {
    type Result = ();

    fn handle(&mut self, event: RoomEvent, ctx: &mut Context<Self>) {
        if event.seq > self.last_seq {
            self.pending.insert(event.seq, event);
            self.deliver_ready(ctx);
        }
    }
}

/// Who to tell when the server goes away: every member's notice address.
#[derive(Message)]
#[rtype(result = "Vec<Recipient<FromRoom>>")]
pub struct Members;

impl Handler<Members> for Room {
    type Result = MessageResult<Members>;

    fn handle(&mut self, _: Members, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.members.values().map(|m| m.notices.clone()).collect())
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
        self.presence_changed(&change.user, change.online, ctx);
    }
}

/// Events may have been stored that this room did not hear of (another node's, while Redis was
/// unreachable): read them from the database.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fill;

impl Handler<Fill> for Room {
    type Result = ();

    fn handle(&mut self, _: Fill, ctx: &mut Context<Self>) {
        if !self.filling && self.last_seq_known {
            self.fill(ctx);
        }
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
        self.presence_batching = false;
        self.presence_changes.clear();
        let leaving: Vec<UserId> = self.leaving.drain().map(|(user, _)| user).collect();
        for user in leaving {
            self.going_offline(user, ctx);
        }
    }
}

/// Makes the room fail, as an internal error would: for exercising its supervision.
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fail;

impl Handler<Fail> for Room {
    type Result = ();

    fn handle(&mut self, _: Fail, ctx: &mut Context<Self>) {
        log::error!("room failing on request account={}", self.account);
        ctx.stop();
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

    fn handle(&mut self, ephemeral: Ephemeral, _: &mut Context<Self>) {
        self.send_ephemeral(
            &ephemeral.frame,
            ephemeral.users.as_deref(),
            ephemeral.except.as_ref(),
        );
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
