//! Delivery in sequence order: events that arrive early are held until the gap before them
//! closes, and a gap that stays open is filled from the database.
//!
//! Part of the room actor (engine layer): reads `store::events` through the store's executor,
//! never inside a handler.

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;

use super::{refuse, Room};
use crate::event::RoomEvent;
use crate::metrics;
use crate::store::events;

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
pub(super) const MAX_PENDING: usize = 4096;
const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

impl Room {
    /// Delivers every pending event that is next in sequence; schedules a fill if a gap remains.
    pub(super) fn deliver_ready(&mut self, ctx: &mut Context<Self>) {
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

    pub(super) fn deliver(&mut self, event: RoomEvent) {
        if event.seq > self.last_seq {
            self.fan_out(&event);
            self.last_seq = event.seq;
        }
    }

    /// Holds an event until the events before it have been delivered.
    pub(super) fn hold(&mut self, event: RoomEvent) {
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

    /// Reads the account's sequence number. Until it is known, joins wait (a join is answered
    /// with it) and events are held (one is delivered only if it is newer); other messages are
    /// handled as they come. An event stored after the read reaches this room, which the broker
    /// already lists.
    pub(super) fn read_last_seq(&mut self, ctx: &mut Context<Self>) {
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

    pub(super) fn last_seq_read(&mut self, seq: u64, ctx: &mut Context<Self>) {
        self.last_seq = seq;
        self.last_seq_known = true;
        for join in std::mem::take(&mut self.waiting) {
            self.join(join, ctx);
        }
        self.pending.forget_through(seq);
        self.deliver_ready(ctx);
    }

    /// Reads the events after `last_seq` from the database and delivers them in order.
    pub(super) fn fill(&mut self, ctx: &mut Context<Self>) {
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
    pub(super) fn apply_fill(
        &mut self,
        rows: Vec<events::StoredEvent>,
        begun: u64,
        ctx: &mut Context<Self>,
    ) {
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
}

/// Events held until the events before them are delivered, by sequence number; bounded by
/// [`MAX_PENDING`] and [`MAX_PENDING_BYTES`].
#[derive(Default)]
pub(super) struct Pending {
    events: BTreeMap<u64, Held>,
    bytes: usize,
}

pub(super) struct Held {
    event: RoomEvent,
    /// How many fills had begun when it arrived: a fill that began later saw it in the
    /// database, if it is there.
    arrived: u64,
}

impl Pending {
    /// Holds `event` (replacing a copy of it); past the bounds drops the oldest, and answers
    /// how many.
    pub(super) fn hold(&mut self, event: RoomEvent, arrived: u64) -> usize {
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

    pub(super) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub(super) fn pop_first(&mut self) -> Option<RoomEvent> {
        let (_, held) = self.events.pop_first()?;
        self.bytes -= held.event.frame.len();
        Some(held.event)
    }

    /// The first held event, if its sequence number is at most `seq`.
    pub(super) fn take_through(&mut self, seq: u64) -> Option<RoomEvent> {
        let first = *self.events.first_key_value()?.0;
        (first <= seq).then(|| self.pop_first()).flatten()
    }

    /// The first held event, if it comes before `seq`.
    pub(super) fn take_below(&mut self, seq: u64) -> Option<RoomEvent> {
        self.take_through(seq.checked_sub(1)?)
    }

    pub(super) fn take(&mut self, seq: u64) -> Option<RoomEvent> {
        let held = self.events.remove(&seq)?;
        self.bytes -= held.event.frame.len();
        Some(held.event)
    }

    /// Drops the events up to `seq` (delivered, or known not to exist).
    pub(super) fn forget_through(&mut self, seq: u64) {
        while self.take_through(seq).is_some() {}
    }

    /// Drops the events after `head` that arrived before fill `begun` began; answers how many.
    pub(super) fn drop_absent(&mut self, head: u64, begun: u64) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, bytes: usize) -> RoomEvent {
        RoomEvent {
            seq,
            user: None,
            channel: None,
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
}
