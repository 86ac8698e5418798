//! In-process fan-out: one event through the broker to a room of N sessions (actors without
//! sockets, each counting what it receives). Measures the actor path — routing, the room's
//! ordering, one `do_send` per recipient — that every publish pays before any socket write.
//!
//! `cargo bench --bench fanout`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::value::RawValue;
use tokio::sync::Notify;

use switchboard::actors::broker::{Broker, Join, Publish};
use switchboard::actors::session::{Backlog, Deliver, Framing, FromRoom};
use switchboard::config::{Database, Presence};
use switchboard::event::RoomEvent;
use switchboard::ids::{AccountId, SessionId, UserId};
use switchboard::protocol::event_frame;
use switchboard::store::Store;

/// Stands in for a session: counts deliveries, and wakes the benchmark when a round is complete.
struct Counter {
    room_size: usize,
    delivered: Arc<AtomicUsize>,
    joined: Arc<AtomicUsize>,
    done: Arc<Notify>,
}

impl Actor for Counter {
    type Context = Context<Self>;
}

impl Handler<Deliver> for Counter {
    type Result = ();

    fn handle(&mut self, _: Deliver, _: &mut Context<Self>) {
        if (self.delivered.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(self.room_size) {
            self.done.notify_one();
        }
    }
}

impl Handler<FromRoom> for Counter {
    type Result = ();

    fn handle(&mut self, _: FromRoom, _: &mut Context<Self>) {
        if (self.joined.fetch_add(1, Ordering::Relaxed) + 1) == self.room_size {
            self.done.notify_one();
        }
    }
}

fn fan_out(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let database = Database::Sqlite(dir.path().join("bench.db"));
    let mut group = c.benchmark_group("fan_out");
    group.measurement_time(Duration::from_secs(10));
    for room_size in [1_000usize, 10_000] {
        group.throughput(Throughput::Elements(room_size as u64));
        group.bench_function(BenchmarkId::from_parameter(room_size), |b| {
            let system = System::new();
            let store = Store::open(&database, 2).unwrap();
            let account = AccountId::new(&format!("bench-{room_size}")).unwrap();
            let done = Arc::new(Notify::new());
            let broker = system.block_on(async {
                let broker = Broker::new(
                    store,
                    Presence {
                        grace: Duration::from_secs(5),
                        broadcast_max: 1000,
                    },
                    usize::MAX,
                    None,
                )
                .start();
                let delivered = Arc::new(AtomicUsize::new(0));
                let joined = Arc::new(AtomicUsize::new(0));
                for i in 0..room_size {
                    let counter = Counter {
                        room_size,
                        delivered: delivered.clone(),
                        joined: joined.clone(),
                        done: done.clone(),
                    }
                    .start();
                    broker.do_send(Join {
                        framing: Framing::Native,
                        transport: "bench",
                        session: SessionId::random(),
                        account: account.clone(),
                        user: UserId::new(&format!("user-{}", i % 100)).unwrap(),
                        seen_seq: Some(0),
                        deliver: counter.clone().recipient(),
                        notices: counter.recipient(),
                        backlog: Arc::new(Backlog::new(usize::MAX)),
                        answered: None,
                        channels: Vec::new(),
                        connected_at: 0,
                    });
                }
                done.notified().await;
                broker
            });
            let data =
                RawValue::from_string(format!("{{\"text\":\"{}\"}}", "x".repeat(180))).unwrap();
            let mut seq = 0;
            b.iter_custom(|rounds| {
                system.block_on(async {
                    let start = Instant::now();
                    for _ in 0..rounds {
                        seq += 1;
                        broker.do_send(Publish {
                            account: account.clone(),
                            event: RoomEvent {
                                seq,
                                user: None,
                                channel: None,
                                frame: event_frame(seq, None, "new-message", &data),
                                handed: None,
                            },
                        });
                        done.notified().await;
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
