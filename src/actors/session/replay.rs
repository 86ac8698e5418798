//! Resuming: a client that reconnects with the last sequence number it processed (`?since=N`, or
//! a `resume` frame sent first) gets every stored event it may see after N, in order, then the
//! live ones — no gap, no duplicate.
//!
//! The session is registered with its room (live) before history is read: live events arriving
//! meanwhile are held back, and written after the replay. Everything replayed is at or below the
//! replay's target — the room's position when the session joined — and everything held is above
//! it, so the merge is by sequence number with nothing to compare. When the events after N are no
//! longer all kept (retention), the client is told with `resume-failed` and carries on live.
//!
//! A replay is paced by the client's reading, event by event, and holds a bounded share of
//! `SWITCHBOARD_MAX_QUEUED_BYTES` whatever the history's size:
//!
//! - it reads a page of at most [`read_budget`] bytes (or one event) ahead, once the client has
//!   taken most of the last;
//! - it writes the next event only while what is queued for the client stays within
//!   [`replay_budget`] — an event larger than that goes when nothing else is queued — and
//!   otherwise waits until the transport has taken enough (woken by the transport, not a timer);
//! - it holds live events back up to [`held_budget`]; past it, they are dropped and the replay's
//!   target raised past them, so it reads them from the database instead. The room does the same
//!   with an event it cannot queue for a replaying session ([`super::FromRoom::Missed`]).
//!
//! A client that stops reading mid-replay is closed as a slow consumer once it has taken nothing
//! of what is queued for it for a heartbeat interval ([`super::Backlog::stalled`]).

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;
use serde_json::Value;

use super::{frame_size, Deliver, Framing, Session, Wire};
use crate::actors::broker::CatchUp;
use crate::channel::Channel;
use crate::event::RoomEvent;
use crate::metrics;
use crate::protocol::{Close, ResumePoint, ServerFrame, SinceError};
use crate::store::{events, StoreError};

/// Events read from the database at once, at most.
const READ_ROWS: i64 = 500;

/// What the replay's events, with everything else queued for the client, may reach before it
/// waits: half the bound, the other half left to live events and the session's own frames.
fn replay_budget(limit: usize) -> usize {
    limit / 2
}

/// Bytes of events read from the database ahead of the client, at most (or one event).
fn read_budget(limit: usize) -> usize {
    limit / 4
}

/// Bytes of live events held back while a replay runs; past it they are dropped and read from
/// the database later.
fn held_budget(limit: usize) -> usize {
    limit / 4
}

/// Where the session stands in resuming.
pub(super) struct Resume {
    /// The resume point asked for, by `?since=` or a `resume` frame.
    since: Option<u64>,
    /// A resume point refused before the session started (a Socket.IO recovery offset), and
    /// the offset when it was a number: said after the welcome.
    refused: Option<(SinceError, Option<u64>)>,
    /// The room's position when the session joined: live events come after it.
    joined_seq: Option<u64>,
    /// Set while replaying.
    replay: Option<Replay>,
    /// Live events up to here are already with the client (replayed, or it resumed from beyond
    /// the room's position, which events still in flight had not reached).
    skip_through: u64,
    /// The last stored event written; `None` before the first (a `resume` frame is then too
    /// late).
    written_through: Option<u64>,
}

impl Resume {
    /// The room has taken the session in.
    pub(super) fn joined(&self) -> bool {
        self.joined_seq.is_some()
    }

    pub(super) fn new(since: Option<u64>) -> Self {
        Self {
            since,
            refused: None,
            joined_seq: None,
            replay: None,
            skip_through: 0,
            written_through: None,
        }
    }
}

/// A replay under way: history read page by page, up to `through`.
struct Replay {
    /// The channels whose events are read (besides the account's and the user's own).
    channels: Arc<[Channel]>,
    /// A `subscribe` with `since`: up to the position given (the room's when it answered), only
    /// this channel's events are read — the others were delivered live already; past it (the
    /// target raised for live events dropped), everything the session follows.
    narrow: Option<(Channel, u64)>,
    /// Every event the client may see up to here has been read (or was already with it).
    read_to: u64,
    /// Replays up to here: the room's position at joining, raised past live events dropped.
    through: u64,
    /// Events read and not yet written, framed for the wire, in order.
    ahead: VecDeque<(u64, ByteString)>,
    /// The history has been checked (and the client told): events may be written.
    flowing: bool,
    reading: bool,
    /// Waiting for the transport to take what is queued.
    waiting: bool,
    /// Live frames held back until the replay is done. Uncounted from the backlog while held
    /// (which counts what the transport has to take) and counted again when written.
    held: Vec<(Option<u64>, ByteString)>,
    held_bytes: usize,
}

impl Replay {
    fn new(read_to: u64, through: u64, channels: Arc<[Channel]>) -> Self {
        Self {
            channels,
            narrow: None,
            read_to,
            through,
            ahead: VecDeque::new(),
            flowing: false,
            reading: false,
            waiting: false,
            held: Vec::new(),
            held_bytes: 0,
        }
    }
}

/// How the client asked: the answer differs (the welcome says it, or a `resumed` frame).
#[derive(Clone, PartialEq, Eq)]
enum Asked {
    Query,
    Frame,
    /// A `subscribe` with `since`: answered by `subscribed`.
    Subscribe {
        channel: Channel,
        reference: Option<Value>,
    },
}

impl<W: Wire> Session<W> {
    /// A resume point the check refused before the session started (Socket.IO's recovery
    /// offset): the session starts afresh and, after its welcome, says why with `resume-failed`.
    pub fn with_refused_resume(mut self, error: SinceError, since: Option<u64>) -> Self {
        self.resume.refused = Some((error, since));
        self
    }

    fn welcome(&mut self, ctx: &mut W::Context, seq: u64, resumed: bool) {
        let welcome = ServerFrame::Welcome {
            session_id: self.id.to_string(),
            account_id: self.identity.account.as_str(),
            user_id: self.identity.user.as_str(),
            seq,
            heartbeat_interval_ms: self.shared.heartbeat.interval.as_millis() as u64,
            client_timeout_ms: self.shared.heartbeat.timeout.as_millis() as u64,
            token_expires_at: self.identity.expires_at,
            resumed,
            since: self.resume.since,
            channels: self
                .following
                .at_connect
                .iter()
                .map(|c| c.as_str())
                .collect(),
        };
        let text = self.wire.frame(&welcome);
        // A client that starts afresh resumes from here; one replaying, from its last event.
        if self.reserve(ctx, text.len()) {
            self.wire.send_at(ctx, text, (!resumed).then_some(seq));
        }
        self.lifetime.welcomed = true;
        self.check_token(ctx);
    }

    /// The room took the session in at `seq`.
    pub(super) fn joined(&mut self, seq: u64, ctx: &mut W::Context) {
        self.resume.joined_seq = Some(seq);
        if let Some((error, since)) = self.resume.refused.take() {
            metrics::resume(error.code());
            self.welcome(ctx, seq, false);
            let refused = ServerFrame::ResumeRefused {
                code: error.code(),
                message: error.to_string(),
                since,
                seq,
            };
            return self.write(ctx, &refused);
        }
        match self.resume.since {
            None => self.welcome(ctx, seq, false),
            Some(since) => self.begin_replay(since, Asked::Query, ctx),
        }
        self.send_early_follows();
    }

    /// A replay is under way.
    pub(super) fn replaying(&self) -> bool {
        self.resume.replay.is_some()
    }

    /// A frame from the room (which counted it in the backlog): written, or held back while a
    /// replay runs.
    pub(super) fn deliver(
        &mut self,
        // The ticket, if any, is let go at once: a frame held for a replay must not hold the
        // account's publishers back.
        Deliver { frame, seq, .. }: Deliver,
        ctx: &mut W::Context,
    ) {
        if self.backlog.overflowed() {
            // The room stopped queueing for this client; what it missed comes back on resume.
            return self.slow_consumer(ctx);
        }
        if seq.is_some_and(|seq| seq <= self.resume.skip_through) {
            return self.backlog.release(frame_size(frame.len()));
        }
        let welcomed = self.lifetime.welcomed;
        match &mut self.resume.replay {
            // Ephemeral events have no place in the sequence: nothing to merge them with.
            Some(_) if seq.is_none() && welcomed => self.write_counted(ctx, seq, frame),
            Some(replay) => {
                self.backlog.release(frame_size(frame.len()));
                replay.hold(seq, frame, held_budget(self.backlog.limit()));
            }
            None => self.write_counted(ctx, seq, frame),
        }
    }

    /// The room could not queue event `seq` while the session was replaying: the replay reads it
    /// from the database. (Should the replay have ended meanwhile, a new one reads just that.)
    pub(super) fn missed(&mut self, seq: u64, ctx: &mut W::Context) {
        if let Some(replay) = &mut self.resume.replay {
            replay.through = replay.through.max(seq);
            return;
        }
        let resume = &self.resume;
        let from = [resume.written_through, resume.joined_seq]
            .into_iter()
            .flatten()
            .fold(resume.skip_through, u64::max);
        let mut replay = Replay::new(from, seq, self.following.channels.clone().into());
        replay.flowing = true;
        self.resume.replay = Some(replay);
        self.backlog.set_replaying(true);
        self.pump(ctx);
    }

    /// Writes a frame already counted in the backlog.
    fn write_counted(&mut self, ctx: &mut W::Context, seq: Option<u64>, frame: ByteString) {
        if !self.closing() {
            if let Some(seq) = seq {
                // A channel's history, replayed after a `subscribe`, goes below what was written.
                let written = &mut self.resume.written_through;
                *written = Some(written.map_or(seq, |w| w.max(seq)));
            }
            self.wire.send_at(ctx, frame, seq);
        }
    }

    /// A `resume` frame: honoured only as the first thing the session delivers.
    pub(super) fn on_resume(&mut self, since: &Value, ctx: &mut W::Context) {
        let refusal = match SinceError::parse(since) {
            Err(e) => Some(e),
            Ok(_)
                if self.resume.since.is_some()
                    || self.resume.written_through.is_some()
                    || self.resume.replay.is_some() =>
            {
                metrics::resume("resume-too-late");
                Some(SinceError::TooLate)
            }
            Ok(since) => {
                self.resume.since = Some(since);
                self.backlog.set_replaying(true);
                // Not yet joined: the join will replay, as for `?since=`.
                if self.resume.joined_seq.is_some() {
                    self.begin_replay(since, Asked::Frame, ctx);
                }
                None
            }
        };
        if let Some(error) = refusal {
            self.refuse_since(ctx, error);
        }
    }

    fn refuse_since(&mut self, ctx: &mut W::Context, error: SinceError) {
        self.refuse_since_with(ctx, error, None);
    }

    pub(super) fn refuse_since_with(
        &mut self,
        ctx: &mut W::Context,
        error: SinceError,
        reference: Option<Value>,
    ) {
        let frame = ServerFrame::Error {
            code: error.code(),
            message: error.to_string(),
            reference,
            retry_after_ms: None,
        };
        self.write(ctx, &frame);
    }

    /// A `subscribe` with `since`, answered by the room at `seq`: the channel's events after
    /// `since`, up to `seq`, are replayed; live events wait until they are written.
    pub(super) fn begin_channel_replay(
        &mut self,
        channel: Channel,
        since: u64,
        seq: u64,
        reference: Option<Value>,
        ctx: &mut W::Context,
    ) {
        let mut replay = Replay::new(since, seq, self.following.channels.clone().into());
        replay.narrow = Some((channel.clone(), seq));
        self.start_replay(replay, since, Asked::Subscribe { channel, reference }, ctx);
    }

    fn begin_replay(&mut self, since: u64, asked: Asked, ctx: &mut W::Context) {
        let joined = self.resume.joined_seq.expect("replay starts once joined");
        let replay = Replay::new(since, joined, self.following.at_connect.clone());
        self.start_replay(replay, since, asked, ctx);
    }

    fn start_replay(&mut self, replay: Replay, since: u64, asked: Asked, ctx: &mut W::Context) {
        self.resume.replay = Some(replay);
        self.backlog.set_replaying(true);
        let store = self.shared.store.clone();
        let account = self.identity.account.clone();
        let history = async move { store.run(move |conn| events::history(conn, &account)).await };
        ctx.spawn(history.into_actor(self).map(move |result, session, ctx| {
            session.guarded(ctx, |session, ctx| match result {
                Ok(history) => session.checked(since, history, asked, ctx),
                Err(e) => session.replay_failed(ctx, &e),
            });
        }));
    }

    /// The resume point checked against the account's `history` (oldest kept, last): the client
    /// is told, and the replay starts.
    fn checked(&mut self, since: u64, history: (u64, u64), asked: Asked, ctx: &mut W::Context) {
        let joined = match (&asked, &self.resume.replay) {
            (Asked::Subscribe { .. }, Some(replay)) => replay.narrow.as_ref().map_or(0, |n| n.1),
            _ => self.resume.joined_seq.unwrap_or(0),
        };
        let point = match ResumePoint::check(since, history) {
            Ok(point) => point,
            Err(error) => {
                // Only a `resume` frame gets here; `?since=` was checked before the upgrade.
                self.refuse_since(ctx, error);
                self.resume.since = None;
                // Live from the room's position: what was held (or dropped) meanwhile follows.
                return self.start_flowing(joined, ctx);
            }
        };
        if history.1 > joined {
            // The room is behind the database (it missed another node's news): it reads what
            // it missed, and delivers it to this session with the rest.
            self.shared
                .broker
                .do_send(CatchUp(Some(self.identity.account.clone())));
        }
        let kept = point == ResumePoint::Kept;
        metrics::resume(if kept { "resumed" } else { "resume-failed" });
        match asked {
            Asked::Query => self.welcome(ctx, joined, kept),
            Asked::Frame if kept => {
                self.write(ctx, &ServerFrame::Resumed { since, seq: joined });
            }
            Asked::Frame => {}
            Asked::Subscribe { channel, reference } => {
                let replayed = kept.then_some(since);
                self.subscribed_frame(ctx, &channel, joined, replayed, reference);
            }
        }
        match point {
            ResumePoint::Kept => self.start_flowing(since, ctx),
            ResumePoint::Pruned { oldest } => {
                let failed = ServerFrame::ResumeFailed {
                    since,
                    oldest_seq: oldest,
                    seq: joined,
                };
                self.write(ctx, &failed);
                self.start_flowing(joined, ctx);
            }
        }
    }

    /// Starts writing the replay: everything the client may see after `from`, up to the
    /// target (nothing, when the client is there already).
    fn start_flowing(&mut self, from: u64, ctx: &mut W::Context) {
        if let Some(replay) = &mut self.resume.replay {
            replay.read_to = from;
            replay.flowing = true;
        }
        self.pump(ctx);
    }

    /// Writes replayed events while the backlog has room for them; reads the next page when
    /// they are written; finishes once the target is reached.
    fn pump(&mut self, ctx: &mut W::Context) {
        let budget = replay_budget(self.backlog.limit());
        if self.backlog.overflowed() {
            // It stopped reading for too long (see `Backlog::stalled`).
            return self.slow_consumer(ctx);
        }
        loop {
            if self.closing() {
                return;
            }
            let Some(replay) = &mut self.resume.replay else {
                return;
            };
            if !replay.flowing || replay.reading || replay.waiting {
                return;
            }
            let Some((_, frame)) = replay.ahead.front() else {
                if replay.read_to >= replay.through {
                    return self.finish_replay(ctx);
                }
                // The next page is read once the client has taken most of the last: what is
                // read and what is queued are not held at their largest at once.
                let level = read_budget(self.backlog.limit());
                if self.backlog.queued() > level {
                    return self.wait_for_drain(level, ctx);
                }
                return self.read_page(ctx);
            };
            let size = frame_size(frame.len());
            if !self.backlog.admit(size, budget) {
                // Larger than the budget: it goes alone.
                let level = budget.saturating_sub(size);
                return self.wait_for_drain(level, ctx);
            }
            if let Some((seq, frame)) = replay.ahead.pop_front() {
                self.write_counted(ctx, Some(seq), frame);
            }
        }
    }

    /// Resumes the replay once no more than `level` bytes are queued for the client.
    fn wait_for_drain(&mut self, level: usize, ctx: &mut W::Context) {
        if let Some(replay) = &mut self.resume.replay {
            replay.waiting = true;
        }
        let drained = self.backlog.drained_to(level);
        ctx.spawn(drained.into_actor(self).map(|(), session, ctx| {
            if let Some(replay) = &mut session.resume.replay {
                replay.waiting = false;
            }
            session.guarded(ctx, Self::pump);
        }));
    }

    /// Reads the next page of history, sized to [`read_budget`].
    fn read_page(&mut self, ctx: &mut W::Context) {
        let Some(replay) = &mut self.resume.replay else {
            return;
        };
        replay.reading = true;
        let (span, channels, unchanneled) = match &replay.narrow {
            Some((channel, up_to)) if replay.read_to < *up_to => (
                (replay.read_to, replay.through.min(*up_to)),
                Arc::from([channel.clone()]),
                false,
            ),
            _ => (
                (replay.read_to, replay.through),
                replay.channels.clone(),
                true,
            ),
        };
        let max_bytes = read_budget(self.backlog.limit());
        let store = self.shared.store.clone();
        let (account, user) = (self.identity.account.clone(), self.identity.user.clone());
        let read = async move {
            store
                .run(move |conn| {
                    let reader = events::Reader {
                        user: &user,
                        channels: &channels,
                        unchanneled,
                    };
                    let page = events::page(conn, &account, reader, span, READ_ROWS, max_bytes)?;
                    Ok::<_, StoreError>(Read::framed(page, W::FRAMING))
                })
                .await
        };
        ctx.spawn(read.into_actor(self).map(|result, session, ctx| {
            session.guarded(ctx, |session, ctx| match result {
                Ok(read) => session.have_read(read, ctx),
                Err(e) => session.replay_failed(ctx, &e),
            });
        }));
    }

    fn have_read(&mut self, read: Read, ctx: &mut W::Context) {
        let Some(replay) = &mut self.resume.replay else {
            return;
        };
        replay.reading = false;
        let from = replay.read_to;
        match read.oldest {
            // Retention pruned events the replay had not reached: the client reloads its state
            // and carries on from the target, as when resuming from too far back.
            Some(oldest) if from + 1 < oldest => {
                replay.ahead.clear();
                replay.read_to = replay.through;
                let failed = ServerFrame::ResumeFailed {
                    since: from,
                    oldest_seq: oldest,
                    seq: replay.through,
                };
                metrics::resume("resume-failed");
                self.write(ctx, &failed);
            }
            _ => {
                replay.ahead.extend(read.frames);
                replay.read_to = read.covered;
            }
        }
        self.pump(ctx);
    }

    /// The replay is done: write what arrived live meanwhile, and go live.
    fn finish_replay(&mut self, ctx: &mut W::Context) {
        let Some(replay) = self.resume.replay.take() else {
            return;
        };
        self.backlog.set_replaying(false);
        self.resume.skip_through = self.resume.skip_through.max(replay.read_to);
        for (seq, frame) in replay.held {
            if seq.is_none_or(|seq| seq > self.resume.skip_through)
                && self.reserve(ctx, frame.len())
            {
                self.write_counted(ctx, seq, frame);
            }
        }
    }

    fn replay_failed(&mut self, ctx: &mut W::Context, error: &StoreError) {
        log::error!("replay failed session={}: {error}", self.id);
        self.close(ctx, Close::ServerError);
    }
}

impl Replay {
    /// Holds a live frame back; past `budget`, drops the stored events held (the replay reads
    /// them from the database instead). Ephemeral ones — before the welcome only — are kept.
    fn hold(&mut self, seq: Option<u64>, frame: ByteString, budget: usize) {
        self.held_bytes += frame_size(frame.len());
        self.held.push((seq, frame));
        if self.held_bytes <= budget {
            return;
        }
        let through = &mut self.through;
        self.held.retain(|(seq, _)| match seq {
            Some(seq) => {
                *through = (*through).max(*seq);
                false
            }
            None => true,
        });
        self.held_bytes = self
            .held
            .iter()
            .map(|(_, frame)| frame_size(frame.len()))
            .sum();
    }
}

/// A page of history, framed for the session's wire on the blocking pool.
struct Read {
    frames: Vec<(u64, ByteString)>,
    covered: u64,
    oldest: Option<u64>,
}

impl Read {
    fn framed(page: events::Page, framing: Framing) -> Self {
        let frames = page
            .rows
            .into_iter()
            .filter_map(RoomEvent::from_stored)
            .filter_map(|event| Some((event.seq, framing.encode(&event.frame)?)))
            .collect();
        Self {
            frames,
            covered: page.covered,
            oldest: page.oldest,
        }
    }
}
