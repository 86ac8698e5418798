//! The pacing ticket of one event, [`Handed`]: it records the event's publish-to-delivery latency
//! and holds back the publisher until a room's sessions have nearly caught up with it
//! ([`Pacing`]).
//!
//! Engine layer: may use only `metrics` and the standard library; producers create tickets, the
//! room paces them, sessions drop them once a frame is written.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::metrics;

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

    pub(crate) fn offered(&self) {
        self.0.offered.store(true, Ordering::Relaxed);
    }
}

/// The tickets of a room's last [`PACING_SLACK`] events, oldest first: the publisher of each new
/// event waits on the oldest of them.
#[derive(Default)]
pub(crate) struct Pacing {
    recent: VecDeque<Weak<Ticket>>,
}

impl Pacing {
    /// Moves the publisher waiting for `handed`'s event onto the ticket of the event
    /// [`PACING_SLACK`] before it — or releases it, when that one has been taken already or the
    /// room has not handed out as many events yet.
    pub(crate) fn pace(&mut self, handed: &Handed) {
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
