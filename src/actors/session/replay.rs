//! Resuming: a client that reconnects with the last sequence number it processed (`?since=N`, or
//! a `resume` frame sent first) gets every stored event it may see after N, in order, then the
//! live ones — no gap, no duplicate.
//!
//! The session is registered with its room (live) before history is read: live events arriving
//! meanwhile are held back, and written after the replay. Everything replayed is at or below the
//! room's position when the session joined, and everything live is above it, so the merge is by
//! sequence number with nothing to compare. When the events after N are no longer all kept
//! (retention), the client is told with `resume-failed` and carries on live from there.

use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;
use serde_json::Value;

use super::{Deliver, Session, Wire};
use crate::actors::broker::CatchUp;
use crate::actors::room::RoomEvent;
use crate::metrics;
use crate::protocol::{Close, ResumePoint, ServerFrame, SinceError};
use crate::store::{events, StoreError};

/// Events read from the database per replay step.
const REPLAY_CHUNK: i64 = 500;
/// How long a replay waits for the client to drain half its backlog before the next step.
const REPLAY_PAUSE: Duration = Duration::from_millis(20);

/// Where the session stands in resuming.
pub(super) struct Resume {
    /// The resume point asked for, by `?since=` or a `resume` frame.
    since: Option<u64>,
    /// The room's position when the session joined: live events come after it.
    joined_seq: Option<u64>,
    /// Live frames held back while replaying (`None` when not replaying); the room counted them
    /// in the backlog, so they are bounded with it.
    held: Option<Vec<(Option<u64>, ByteString)>>,
    /// A resume point refused before the session started (a Socket.IO recovery offset), and
    /// the offset when it was a number: said after the welcome.
    refused: Option<(SinceError, Option<u64>)>,
    /// Live events up to here are already with the client (it resumed from beyond the room's
    /// position, which events still in flight had not reached).
    skip_through: u64,
    /// An event has been written: a `resume` frame now would come too late.
    events_written: bool,
}

impl Resume {
    pub(super) fn new(since: Option<u64>) -> Self {
        Self {
            since,
            joined_seq: None,
            held: None,
            refused: None,
            skip_through: 0,
            events_written: false,
        }
    }
}

/// How the client asked: the answer differs (the welcome says it, or a `resumed` frame).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Asked {
    Query,
    Frame,
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
        };
        let text = self.wire.frame(&welcome);
        self.write_framed(text, ctx);
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
    }

    /// A frame from the room (which counted it in the backlog): written, or held back while a
    /// replay runs.
    pub(super) fn deliver(
        &mut self,
        // The ticket, if any, is let go once the frame is written (or held for the replay).
        Deliver { frame, seq, .. }: Deliver,
        ctx: &mut W::Context,
    ) {
        if self.backlog.overflowed() {
            // The room stopped queueing for this client; what it missed comes back on resume.
            return self.slow_consumer(ctx);
        }
        if seq.is_some_and(|seq| seq <= self.resume.skip_through) {
            return;
        }
        match &mut self.resume.held {
            Some(held) => held.push((seq, frame)),
            None => self.write_counted(ctx, seq, frame),
        }
    }

    /// Writes a frame already counted in the backlog.
    fn write_counted(&mut self, ctx: &mut W::Context, seq: Option<u64>, frame: ByteString) {
        if !self.closing() {
            self.resume.events_written |= seq.is_some();
            self.wire.send(ctx, frame);
        }
    }

    /// A `resume` frame: honoured only as the first thing the session delivers.
    pub(super) fn on_resume(&mut self, since: &Value, ctx: &mut W::Context) {
        let refusal = match SinceError::parse(since) {
            Err(e) => Some(e),
            Ok(_) if self.resume.since.is_some() || self.resume.events_written => {
                metrics::resume("resume-too-late");
                Some(SinceError::TooLate)
            }
            Ok(since) => {
                self.resume.since = Some(since);
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
        let frame = ServerFrame::Error {
            code: error.code(),
            message: error.to_string(),
            reference: None,
            retry_after_ms: None,
        };
        self.write(ctx, &frame);
    }

    fn begin_replay(&mut self, since: u64, asked: Asked, ctx: &mut W::Context) {
        let joined = self.resume.joined_seq.expect("replay starts once joined");
        self.resume.held = Some(Vec::new());
        let store = self.shared.store.clone();
        let account = self.identity.account.clone();
        let history = async move { store.run(move |conn| events::history(conn, &account)).await };
        ctx.spawn(history.into_actor(self).map(move |result, session, ctx| {
            let (oldest, last) = match result {
                Ok(history) => history,
                Err(e) => return session.replay_failed(ctx, &e),
            };
            let point = match ResumePoint::check(since, (oldest, last)) {
                Ok(point) => point,
                Err(error) => {
                    // Only a `resume` frame gets here; `?since=` was checked before the upgrade.
                    session.refuse_since(ctx, error);
                    session.resume.since = None;
                    return session.finish_replay(ctx);
                }
            };
            if last > joined {
                // The room is behind the database (it missed another node's news): it reads
                // what it missed, and delivers it to this session with the rest.
                session
                    .shared
                    .broker
                    .do_send(CatchUp(Some(session.identity.account.clone())));
            }
            let kept = point == ResumePoint::Kept;
            metrics::resume(if kept { "resumed" } else { "resume-failed" });
            match asked {
                Asked::Query => session.welcome(ctx, joined, kept),
                Asked::Frame if kept => {
                    session.write(ctx, &ServerFrame::Resumed { since, seq: joined });
                }
                Asked::Frame => {}
            }
            if !kept {
                let failed = ServerFrame::ResumeFailed {
                    since,
                    oldest_seq: oldest,
                    seq: joined,
                };
                session.write(ctx, &failed);
                return session.finish_replay(ctx);
            }
            if since >= joined {
                session.resume.skip_through = since;
                session.finish_replay(ctx);
            } else {
                session.replay_step(since, joined, ctx);
            }
        }));
    }

    /// Writes the next chunk of history after `after`, up to `up_to`.
    fn replay_step(&mut self, after: u64, up_to: u64, ctx: &mut W::Context) {
        let store = self.shared.store.clone();
        let (account, user) = (self.identity.account.clone(), self.identity.user.clone());
        let read = async move {
            store
                .run(move |conn| {
                    events::visible(conn, &account, &user, after, Some(up_to), REPLAY_CHUNK)
                })
                .await
        };
        ctx.spawn(read.into_actor(self).map(move |result, session, ctx| {
            let rows = match result {
                Ok(rows) => rows,
                Err(e) => return session.replay_failed(ctx, &e),
            };
            let more = rows.len() as i64 == REPLAY_CHUNK;
            let mut last = after;
            for row in rows {
                last = row.seq as u64;
                if let Some(event) = RoomEvent::from_stored(row) {
                    // Read back for this session alone: framed here, for its wire.
                    let frame = session.wire.event(event.frame);
                    if session.reserve(ctx, frame.len()) {
                        session.write_counted(ctx, Some(event.seq), frame);
                    }
                }
            }
            if session.closing() {
                return;
            }
            if more && last < up_to {
                session.replay_when_drained(last, up_to, ctx);
            } else {
                session.finish_replay(ctx);
            }
        }));
    }

    /// Paces a long replay by the client's reading: the next chunk once half the backlog drained.
    fn replay_when_drained(&mut self, after: u64, up_to: u64, ctx: &mut W::Context) {
        if self.backlog.queued() > self.shared.max_queued_bytes / 2 {
            ctx.run_later(REPLAY_PAUSE, move |session, ctx| {
                session.replay_when_drained(after, up_to, ctx)
            });
        } else {
            self.replay_step(after, up_to, ctx);
        }
    }

    /// The replay is done: write what arrived live meanwhile, and go live.
    fn finish_replay(&mut self, ctx: &mut W::Context) {
        let held = self.resume.held.take().unwrap_or_default();
        for (seq, frame) in held {
            if seq.is_none_or(|seq| seq > self.resume.skip_through) {
                self.write_counted(ctx, seq, frame);
            }
        }
    }

    fn replay_failed(&mut self, ctx: &mut W::Context, error: &StoreError) {
        log::error!("replay failed session={}: {error}", self.id);
        self.close(ctx, Close::ServerError);
    }
}
