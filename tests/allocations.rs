//! An event is serialized once per publish and the same bytes go to every recipient: fanning a
//! 64 KiB event out to 1,000 sessions — half of them Socket.IO clients, which get it framed once
//! more, once — allocates nowhere near 1,000 copies of it. Counted with an instrumented global
//! allocator, so this test is a binary of its own.

use std::alloc::System as Os;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::value::RawValue;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::sync::Notify;

use switchboard::actors::broker::{Broker, Join, Publish};
use switchboard::actors::session::{Backlog, Deliver, Framing, FromRoom};
use switchboard::config::{Database, Presence};
use switchboard::event::RoomEvent;
use switchboard::ids::{AccountId, SessionId, UserId};
use switchboard::protocol::event_frame;
use switchboard::store::Store;

#[global_allocator]
static GLOBAL: &StatsAlloc<Os> = &INSTRUMENTED_SYSTEM;

const SESSIONS: usize = 1000;
const PAYLOAD: usize = 64 * 1024;

/// Stands in for a session: counts what it is given.
struct Recipient {
    count: Arc<AtomicUsize>,
    done: Arc<Notify>,
}

impl Actor for Recipient {
    type Context = Context<Self>;
}

impl Handler<Deliver> for Recipient {
    type Result = ();

    fn handle(&mut self, deliver: Deliver, _: &mut Context<Self>) {
        assert!(deliver.frame.len() > PAYLOAD);
        if self.count.fetch_add(1, Ordering::Relaxed) + 1 == SESSIONS {
            self.done.notify_one();
        }
    }
}

impl Handler<FromRoom> for Recipient {
    type Result = ();

    fn handle(&mut self, _: FromRoom, _: &mut Context<Self>) {}
}

#[test]
fn fan_out_shares_one_serialized_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Database::Sqlite(dir.path().join("a.db")), 2).unwrap();
    let system = System::new();
    system.block_on(async {
        let presence = Presence {
            grace: Duration::from_secs(5),
            broadcast_max: 0,
        };
        let broker = Broker::new(store, presence, usize::MAX, None).start();
        let account = AccountId::new("acme").unwrap();
        let (count, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let mut joined = Vec::new();
        for i in 0..SESSIONS {
            let recipient = Recipient {
                count: count.clone(),
                done: done.clone(),
            }
            .start();
            let (answered, answer) = tokio::sync::oneshot::channel();
            joined.push(answer);
            broker.do_send(Join {
                framing: if i % 2 == 0 {
                    Framing::Native
                } else {
                    Framing::SocketIo
                },
                transport: "test",
                session: SessionId::random(),
                account: account.clone(),
                user: UserId::new(&format!("u{i}")).unwrap(),
                seen_seq: Some(0),
                deliver: recipient.clone().recipient(),
                notices: recipient.recipient(),
                backlog: Arc::new(Backlog::new(usize::MAX)),
                answered: Some(answered),
                channels: Vec::new(),
                connected_at: 0,
            });
        }
        // Every join answered (the room's start-up read done) before counting.
        for answer in joined {
            let _ = answer.await;
        }

        let data = RawValue::from_string(format!("\"{}\"", "x".repeat(PAYLOAD))).unwrap();
        let region = Region::new(GLOBAL);
        broker.do_send(Publish {
            account: account.clone(),
            event: RoomEvent {
                seq: 1,
                user: None,
                channel: None,
                frame: event_frame(1, None, "big", &data),
                handed: None,
            },
        });
        done.notified().await;
        let allocated = region.change().bytes_allocated;
        eprintln!(
            "fan-out of a {PAYLOAD}-byte event to {SESSIONS} sessions allocated {allocated} bytes"
        );
        // One copy is the serialization, one its Socket.IO framing; a copy per recipient would
        // be ~64 MiB.
        assert!(
            allocated < 3 * PAYLOAD + SESSIONS * 1024,
            "allocated {allocated} bytes"
        );
    });
}
