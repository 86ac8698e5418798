//! The count of bytes queued for a client, whatever its transport: counted by whoever queues a
//! frame (the room for events, the session for its own frames and its replay), uncounted by the
//! transport as its client takes them. The transports themselves are adapters (`ws`,
//! `socket_io`, `sse`); this is what the engine asks of them.
//!
//! Uses only the standard library and `futures_util`'s waker.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

/// Bytes written for a client and not yet taken by the socket writer: counted by whoever
/// queues a frame (the room for events, the session for its own frames and its replay) and
/// uncounted by the transport as the socket takes them. Shared by the session, its room
/// membership and the transport.
///
/// At most `limit` bytes are counted in `queued`; a frame larger than the limit by itself is
/// counted apart, in `oversized`, one at a time. So a session holds at most the limit, plus — while
/// one is written — one event larger than it.
#[derive(Debug)]
pub struct Backlog {
    queued: AtomicUsize,
    /// A frame larger than `limit`, counted alone (0 when none is queued). The bytes the
    /// transport takes count against it first; only the sum of the two counts is exact.
    oversized: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
    /// The session is replaying history: what does not fit now, it reads from the database
    /// later (see [`Backlog::reserve_stored`]), so the room never closes it for that — a client
    /// that stops taking bytes is closed instead ([`Backlog::stalled`]).
    replaying: AtomicBool,
    /// When the transport last took bytes, or bytes were queued after none were (milliseconds
    /// since `epoch`): since then the client has had something to take.
    owed_since: AtomicU64,
    epoch: Instant,
    /// How long a client may take nothing of what is queued for it before it is held to have
    /// stopped reading (milliseconds; 0: not set): a replaying session is then closed, and an
    /// ended session's connection reset.
    stall_after: AtomicU64,
    /// One more than the count below which `drained` is woken; 0 when nobody waits.
    wake_below: AtomicUsize,
    drained: AtomicWaker,
}

/// What became of an event offered to a session (see [`Backlog::reserve_stored`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    Queued,
    /// Not queued, and the client is not closed for it: its replay reads the event from the
    /// database.
    Missed,
    /// Not queued: the client fell too far behind, and is closed as a slow consumer.
    Refused,
}

impl Backlog {
    pub fn new(limit: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            oversized: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
            replaying: AtomicBool::new(false),
            owed_since: AtomicU64::new(0),
            epoch: Instant::now(),
            stall_after: AtomicU64::new(0),
            wake_below: AtomicUsize::new(0),
            drained: AtomicWaker::new(),
        }
    }

    /// Counts a frame of `bytes` for the client; `false` (and overflowed from then on) when it
    /// would pass the limit.
    pub fn reserve(&self, bytes: usize) -> bool {
        let reserved = self.count(bytes, self.limit, false);
        if !reserved {
            self.overflowed.store(true, Ordering::Relaxed);
        }
        reserved
    }

    /// Counts a stored event's frame, offered live: as [`Backlog::reserve`], except that while the
    /// session replays, a frame that does not fit is [`Reservation::Missed`] rather than a reason
    /// to close the session.
    pub fn reserve_stored(&self, bytes: usize) -> Reservation {
        if self.count(bytes, self.limit, false) {
            Reservation::Queued
        } else if self.replaying.load(Ordering::SeqCst) {
            Reservation::Missed
        } else {
            self.overflowed.store(true, Ordering::Relaxed);
            Reservation::Refused
        }
    }

    /// Counts a replayed frame if what is queued, with it, stays within `budget` — or if nothing
    /// is queued at all (a frame larger than the budget, or than the limit, goes alone). Never
    /// overflows: a replay waits ([`Backlog::drained_to`]) for what does not fit.
    pub fn admit(&self, bytes: usize, budget: usize) -> bool {
        self.count(bytes, budget.min(self.limit), true)
    }

    /// `alone`: a frame larger than the limit is counted only if nothing else is queued.
    fn count(&self, bytes: usize, budget: usize, alone: bool) -> bool {
        // The stall clock runs only during a replay: live delivery pays nothing for it.
        let replaying = self.replaying.load(Ordering::Relaxed);
        let owed = if replaying { self.queued() } else { 1 };
        let counted = if bytes > self.limit {
            !(alone && self.queued.load(Ordering::SeqCst) != 0)
                && self
                    .oversized
                    .compare_exchange(0, bytes, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
        } else {
            let nothing_else = |q: usize| q == 0 && self.oversized.load(Ordering::SeqCst) == 0;
            self.queued
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                    (q + bytes <= budget || nothing_else(q)).then_some(q + bytes)
                })
                .is_ok()
        };
        if counted && owed == 0 {
            // The client owes nothing from before: its time to take these starts now.
            self.owed_since.store(self.now(), Ordering::Relaxed);
        }
        counted
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The client fell too far behind: nothing more is queued for it.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Everything counted for the client and not yet taken.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst) + self.oversized.load(Ordering::SeqCst)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn set_replaying(&self, replaying: bool) {
        // What is queued from before, the client has had no time to take yet.
        self.owed_since.store(self.now(), Ordering::Relaxed);
        self.replaying.store(replaying, Ordering::SeqCst);
    }

    /// How long a client may take nothing of what is queued for it.
    pub fn set_stall_limit(&self, limit: Duration) {
        let limit = limit.as_millis().clamp(1, u64::MAX.into()) as u64;
        self.stall_after.store(limit, Ordering::Relaxed);
    }

    /// The stall limit, once a session has set it.
    pub fn stall_limit(&self) -> Option<Duration> {
        match self.stall_after.load(Ordering::Relaxed) {
            0 => None,
            limit => Some(Duration::from_millis(limit)),
        }
    }

    /// A replaying client has taken nothing of what is queued for it for longer than the stall
    /// limit: it stopped reading. (Checked by the session on each heartbeat tick.)
    pub fn stalled(&self) -> bool {
        self.stalled_at(self.owed_since.load(Ordering::Relaxed), self.now())
    }

    fn stalled_at(&self, owed_since: u64, now: u64) -> bool {
        let limit = self.stall_after.load(Ordering::Relaxed);
        limit != 0
            && self.replaying.load(Ordering::SeqCst)
            && self.queued() != 0
            && now.saturating_sub(owed_since) > limit
    }

    /// The socket (or a poll) took `bytes`.
    pub fn taken(&self, bytes: usize) {
        if self.replaying.load(Ordering::Relaxed) {
            self.owed_since.store(self.now(), Ordering::Relaxed);
        }
        self.release(bytes);
    }

    /// Uncounts `bytes` that will not be written after all (a frame dropped), or were written.
    pub fn release(&self, bytes: usize) {
        let mut rest = bytes;
        if self.oversized.load(Ordering::SeqCst) != 0 {
            if let Ok(before) =
                self.oversized
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| {
                        Some(o.saturating_sub(rest))
                    })
            {
                rest -= before.min(rest);
            }
        }
        // Saturating: a frame nobody counted (a Socket.IO connection's own packets, such as its
        // open packet) must not wrap.
        let _ = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                Some(q.saturating_sub(rest))
            });
        let wake_below = self.wake_below.load(Ordering::SeqCst);
        if wake_below != 0 && self.queued() < wake_below {
            self.drained.wake();
        }
    }

    /// Resolves once no more than `level` bytes are queued: woken by the transport as it takes
    /// bytes, not by a timer. One waiter at a time (the session's replay).
    pub fn drained_to(self: &Arc<Self>, level: usize) -> impl Future<Output = ()> + 'static {
        let backlog = self.clone();
        std::future::poll_fn(move |cx| {
            backlog.drained.register(cx.waker());
            backlog.wake_below.store(level + 1, Ordering::SeqCst);
            if backlog.queued() <= level {
                backlog.wake_below.store(0, Ordering::SeqCst);
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// What a frame with `payload` bytes counts in a backlog: its size as an unmasked WebSocket frame,
/// the unit every transport counts in (the others' own framing differs by a few bytes).
pub fn frame_size(payload: usize) -> usize {
    payload
        + match payload {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Wake};

    const LIMIT: usize = 1000;

    #[test]
    fn a_frame_larger_than_the_limit_is_counted_alone_with_up_to_the_limit_beside_it() {
        let backlog = Backlog::new(LIMIT);
        assert!(backlog.reserve(10));
        // Beside other frames: a live one may come (one at a time) …
        assert!(backlog.reserve(3 * LIMIT));
        assert!(!backlog.admit(2 * LIMIT, LIMIT), "a second one waits");
        assert_eq!(backlog.reserve_stored(2 * LIMIT), Reservation::Refused);
        assert!(backlog.overflowed());
        // … and the limit of others beside it, no more.
        let backlog = Backlog::new(LIMIT);
        assert!(backlog.reserve(3 * LIMIT));
        assert!(backlog.reserve(LIMIT));
        assert!(!backlog.admit(1, LIMIT));
        assert_eq!(backlog.queued(), 4 * LIMIT);
        // What the transport takes counts against the large one first; the sum stays exact.
        backlog.taken(3 * LIMIT + 400);
        assert_eq!(backlog.queued(), LIMIT - 400);
        assert!(backlog.admit(400, LIMIT));
        assert!(!backlog.overflowed());
    }

    #[test]
    fn a_replay_is_admitted_within_its_budget_or_alone_and_never_overflows() {
        let backlog = Backlog::new(LIMIT);
        assert!(backlog.admit(400, LIMIT / 2));
        assert!(!backlog.admit(200, LIMIT / 2));
        // Larger than the budget: only when nothing else is queued.
        assert!(!backlog.admit(LIMIT, LIMIT / 2));
        backlog.taken(400);
        assert!(backlog.admit(LIMIT, LIMIT / 2));
        backlog.taken(LIMIT);
        assert!(backlog.admit(5 * LIMIT, LIMIT / 2));
        assert!(!backlog.overflowed());
    }

    #[test]
    fn a_stored_event_that_does_not_fit_is_missed_while_replaying() {
        let backlog = Backlog::new(LIMIT);
        backlog.set_replaying(true);
        assert!(backlog.reserve(LIMIT));
        assert_eq!(backlog.reserve_stored(1), Reservation::Missed);
        assert!(!backlog.overflowed());
        backlog.set_replaying(false);
        assert_eq!(backlog.reserve_stored(1), Reservation::Refused);
        assert!(backlog.overflowed());
    }

    struct Woken(AtomicBool);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_replay_is_woken_by_the_transport_once_drained_enough() {
        let backlog = Arc::new(Backlog::new(LIMIT));
        assert!(backlog.reserve(800));
        let woken = Arc::new(Woken(AtomicBool::new(false)));
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut drained = std::pin::pin!(backlog.drained_to(300));
        assert!(drained.as_mut().poll(&mut cx).is_pending());
        backlog.taken(400);
        assert!(!woken.0.load(Ordering::SeqCst), "400 still queued");
        backlog.taken(100);
        assert!(woken.0.load(Ordering::SeqCst));
        assert!(drained.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn a_replaying_client_that_takes_nothing_for_the_stall_limit_has_stalled() {
        let backlog = Backlog::new(LIMIT);
        backlog.set_stall_limit(Duration::from_millis(200));
        assert!(backlog.reserve(100));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!backlog.stalled(), "not replaying: the bound decides");
        backlog.set_replaying(true);
        assert!(
            !backlog.stalled(),
            "the client's time starts with the replay"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(backlog.stalled());
        // A client that takes bytes again before the session's next tick reads again.
        backlog.taken(50);
        assert!(!backlog.stalled() && !backlog.overflowed());
        // A client that keeps taking has not stalled.
        let backlog = Backlog::new(LIMIT);
        backlog.set_stall_limit(Duration::from_millis(500));
        backlog.set_replaying(true);
        for _ in 0..5 {
            assert!(backlog.reserve(100));
            std::thread::sleep(Duration::from_millis(10));
            backlog.taken(100);
        }
        assert!(!backlog.stalled() && !backlog.overflowed());
    }
}
