//! The persisted publish path without HTTP: the group-committing publisher (store + hand-off to
//! the broker), one publish at a time and 64 at once.
//!
//! `cargo bench --bench publish`

use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::value::RawValue;

use switchboard::actors::broker::Broker;
use switchboard::config::{Database, Presence, PublishQueue};
use switchboard::ids::AccountId;
use switchboard::publisher::{Publisher, Request};
use switchboard::store::Store;

fn publish(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Database::Sqlite(dir.path().join("bench.db")), 4).unwrap();
    let system = System::new();
    let publisher = system.block_on(async {
        let presence = Presence {
            grace: Duration::from_secs(5),
            broadcast_max: 1000,
        };
        let broker = Broker::new(store.clone(), presence, usize::MAX, None).start();
        let queue = PublishQueue {
            max_publishes: 4096,
            max_bytes: 64 * 1024 * 1024,
        };
        Publisher::start(store, broker, Duration::from_secs(3600), queue)
    });
    let account = AccountId::new("bench").unwrap();
    let data = || RawValue::from_string(format!("{{\"text\":\"{}\"}}", "x".repeat(180))).unwrap();

    let mut group = c.benchmark_group("publish");
    group.measurement_time(Duration::from_secs(10));
    for in_flight in [1usize, 64] {
        group.throughput(Throughput::Elements(in_flight as u64));
        group.bench_function(BenchmarkId::new("in_flight", in_flight), |b| {
            b.iter_custom(|rounds| {
                system.block_on(async {
                    let start = Instant::now();
                    for _ in 0..rounds {
                        let publishes = (0..in_flight).map(|_| {
                            publisher.publish(Request {
                                account: account.clone(),
                                user: None,
                                channel: None,
                                event: "bench".into(),
                                data: data(),
                                idempotency_key: None,
                            })
                        });
                        for seq in futures_util::future::join_all(publishes).await {
                            seq.unwrap();
                        }
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, publish);
criterion_main!(benches);
