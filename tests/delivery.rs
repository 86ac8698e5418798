//! What is published arrives: at every session of the account, or at every tab of one user, in
//! sequence order — and events for an account with no sessions are kept.

use serde_json::json;

use crate::common::{token, unique, TestServer};
use crate::on_each_backend;

on_each_backend! {
    async fn account_events_reach_every_session(db) {
        let server = TestServer::on(&db);
        let account = unique("acct");
        let (mut alice, welcome) = server.connect(&token(&account, "alice")).await;
        let (mut alice_tab, _) = server.connect(&token(&account, "alice")).await;
        let (mut bob, _) = server.connect(&token(&account, "bob")).await;
        assert_eq!(welcome["seq"], 0);

        let data = json!({"conversation": 9, "text": "hi there", "nested": [1, {"a": null}]});
        let seq = server.publish(&account, None, "new-message", data.clone()).await;
        assert_eq!(seq, 1);
        for client in [&mut alice, &mut alice_tab, &mut bob] {
            assert_eq!(client.next_event().await, (1, "new-message".to_owned(), data.clone()));
        }
    }

    async fn user_events_reach_every_tab_of_that_user_only(db) {
        let server = TestServer::on(&db);
        let account = unique("acct");
        let other = unique("other");
        let (mut tab1, _) = server.connect(&token(&account, "alice")).await;
        let (mut tab2, _) = server.connect(&token(&account, "alice")).await;
        let (mut bob, _) = server.connect(&token(&account, "bob")).await;
        // The same user id in another account is another person.
        let (mut namesake, _) = server.connect(&token(&other, "alice")).await;

        let seq = server.publish(&account, Some("alice"), "notification", json!({"n": 1})).await;
        for tab in [&mut tab1, &mut tab2] {
            assert_eq!(tab.next_event().await.0, seq);
        }
        // Nothing for the namesake; nor for bob, whose next frame is the account-wide event below.
        let sentinel = server.sentinel(&other, Some("alice")).await;
        namesake.expect_sentinel(sentinel).await;

        // Account-wide events still reach everyone in the account, after the targeted one.
        let next = server.publish(&account, None, "announcement", json!(null)).await;
        assert_eq!(next, seq + 1);
        for client in [&mut tab1, &mut tab2, &mut bob] {
            assert_eq!(client.next_event().await.0, next);
        }
        let sentinel = server.sentinel(&other, Some("alice")).await;
        namesake.expect_sentinel(sentinel).await;
    }

    async fn events_for_an_account_without_sessions_are_stored(db) {
        let server = TestServer::on(&db);
        let account = unique("acct");
        for expected in 1..=3 {
            assert_eq!(server.publish(&account, None, "queued", json!(expected)).await, expected);
        }
        let (mut client, welcome) = server.connect(&token(&account, "alice")).await;
        assert_eq!(welcome["seq"], 3);
        // Nothing replayed unasked: the next frame is the live event.
        assert_eq!(server.publish(&account, None, "live", json!({})).await, 4);
        assert_eq!(client.next_event().await.0, 4);
    }

    async fn concurrent_publishes_arrive_in_sequence_order(db) {
        let server = std::sync::Arc::new(TestServer::on(&db));
        let account = unique("acct");
        let (mut first, _) = server.connect(&token(&account, "alice")).await;
        let (mut second, _) = server.connect(&token(&account, "bob")).await;

        const TASKS: u64 = 8;
        const EACH: u64 = 25;
        let publishers: Vec<_> = (0..TASKS)
            .map(|task| {
                let server = server.clone();
                let account = account.clone();
                tokio::spawn(async move {
                    for i in 0..EACH {
                        server.publish(&account, None, "tick", json!({"task": task, "i": i})).await;
                    }
                })
            })
            .collect();
        for publisher in publishers {
            publisher.await.unwrap();
        }
        let sentinel = server.sentinel(&account, None).await;
        for client in [&mut first, &mut second] {
            for expected in 1..=TASKS * EACH {
                assert_eq!(client.next_event().await.0, expected);
            }
            client.expect_sentinel(sentinel).await;
        }
    }
}

/// Publishes with an `Idempotency-Key`; returns the status, the replay header and the body.
async fn publish_with_key(
    server: &TestServer,
    key: &str,
    body: &serde_json::Value,
) -> (u16, bool, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(server.http_url("/api/v1/publish"))
        .header(
            "authorization",
            format!("Bearer {}", crate::common::API_KEY),
        )
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let replayed = response.headers().get("idempotent-replayed").is_some();
    (status, replayed, response.json().await.unwrap())
}

on_each_backend! {
    async fn a_retried_publish_with_its_idempotency_key_is_stored_once(db) {
        let server = std::sync::Arc::new(TestServer::on(&db));
        let account = unique("idem");
        let (mut client, _) = server.connect(&token(&account, "alice")).await;
        let body = json!({"account_id": account, "event": "order-paid", "data": {"order": 7}});

        let (status, replayed, first) = publish_with_key(&server, "order-7-paid", &body).await;
        assert_eq!((status, replayed), (200, false), "{first}");
        // Retries — one after the other, then eight at once — get the same answer.
        let (status, replayed, again) = publish_with_key(&server, "order-7-paid", &body).await;
        assert_eq!((status, replayed, &again), (200, true, &first));
        let retries = (0..8).map(|_| {
            let (server, body) = (server.clone(), body.clone());
            tokio::spawn(async move { publish_with_key(&server, "order-7-paid", &body).await })
        });
        for retry in futures_util::future::join_all(retries).await {
            let (status, replayed, answer) = retry.unwrap();
            assert_eq!((status, replayed, &answer), (200, true, &first));
        }
        // Another key is another event; the key is per account.
        let (_, replayed, other) = publish_with_key(&server, "order-8-paid", &body).await;
        assert!(!replayed);
        assert_eq!(other["seq"], first["seq"].as_u64().unwrap() + 1);
        let elsewhere = json!({"account_id": unique("idem-other"), "event": "order-paid"});
        let (_, replayed, _) = publish_with_key(&server, "order-7-paid", &elsewhere).await;
        assert!(!replayed);

        // The session saw each stored event once.
        assert_eq!(client.next_event().await.0, first["seq"].as_u64().unwrap());
        assert_eq!(client.next_event().await.0, other["seq"].as_u64().unwrap());
        let sentinel = server.sentinel(&account, Some("alice")).await;
        client.expect_sentinel(sentinel).await;
    }
}

on_each_backend! {
    async fn a_burst_of_keyed_publishes_is_stored_once_per_key_with_gap_free_numbers(db) {
        // Many publishes at once, so that the publisher stores them in large batches (one
        // transaction of several accounts, more rows than one insert statement takes on SQLite),
        // each key sent twice: both answers are one event's, and each account's events are
        // numbered 1, 2, 3, … without a gap.
        let server = std::sync::Arc::new(TestServer::on(&db));
        let accounts: Vec<String> = (0..3).map(|_| unique("burst")).collect();
        let requests = (0..450).map(|i| {
            let server = server.clone();
            let account = accounts[i % 3].clone();
            let key = format!("k{}", (i / 3) % 75);
            tokio::spawn(async move {
                let body = json!({"account_id": account, "event": "burst", "data": {"i": i}});
                let (status, replayed, answer) = publish_with_key(&server, &key, &body).await;
                assert_eq!(status, 200, "{answer}");
                (account, key, replayed, answer["seq"].as_u64().unwrap())
            })
        });
        let answers = futures_util::future::join_all(requests).await;
        let mut seqs: std::collections::HashMap<(String, String), Vec<(bool, u64)>> =
            Default::default();
        for answer in answers {
            let (account, key, replayed, seq) = answer.unwrap();
            seqs.entry((account, key)).or_default().push((replayed, seq));
        }
        for account in &accounts {
            let mut stored: Vec<u64> = Vec::new();
            for ((a, key), answers) in &seqs {
                if a != account {
                    continue;
                }
                assert_eq!(answers.len(), 2, "{key}: {answers:?}");
                assert_eq!(answers[0].1, answers[1].1, "{key}: one event: {answers:?}");
                assert_eq!(answers.iter().filter(|(r, _)| !r).count(), 1, "{answers:?}");
                stored.push(answers[0].1);
            }
            stored.sort();
            assert_eq!(stored, (1..=75).collect::<Vec<u64>>(), "{account}");
        }
    }
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_refused() {
    let db = crate::common::Db::sqlite();
    let server = TestServer::on(&db);
    let body = json!({"account_id": "acme", "event": "x"});
    for key in ["", &"k".repeat(256), "with space"] {
        let (status, _, answer) = publish_with_key(&server, key, &body).await;
        assert_eq!(status, 400, "{key:?}");
        assert_eq!(answer["error"]["code"], "invalid-field");
    }
}

#[tokio::test]
async fn a_room_that_fails_is_restarted_and_its_sessions_miss_nothing() {
    let db = crate::common::Db::sqlite();
    let server = std::sync::Arc::new(TestServer::on(&db));
    let account = unique("phoenix");
    let (mut alice, _) = server.connect(&token(&account, "alice")).await;
    let (mut bob, _) = server.connect(&token(&account, "bob")).await;
    let first = server.publish(&account, None, "before", json!(0)).await;
    for client in [&mut alice, &mut bob] {
        assert_eq!(client.next_event().await.0, first);
    }

    // Publishing goes on while the room fails, twice.
    let (publisher, mut answered) = publish_during(&server, &account);
    use switchboard::actors::broker::FailRoom;
    for _ in 0..2 {
        assert!(server
            .broker
            .send(FailRoom(
                switchboard::ids::AccountId::new(&account).unwrap()
            ))
            .await
            .unwrap());
        publish_answered(&mut answered).await;
    }
    let published = publisher.await.unwrap();

    // Every session, still registered, gets every event once, in order (and nothing else: the
    // next is the one below).
    for client in [&mut alice, &mut bob] {
        let mut seen = Vec::new();
        while seen.len() < published.len() {
            seen.push(client.next_event().await.0);
        }
        assert_eq!(seen, published);
    }
    // And the room works as before.
    let after = server.publish(&account, None, "after", json!(null)).await;
    assert_eq!(alice.next_event().await.0, after);
    assert_eq!(bob.next_event().await.0, after);
}

/// Publishes 40 `during` events for the account from a task of its own, answering their sequence
/// numbers; the receiver sees how many have been answered so far.
fn publish_during(
    server: &std::sync::Arc<TestServer>,
    account: &str,
) -> (
    tokio::task::JoinHandle<Vec<u64>>,
    tokio::sync::watch::Receiver<usize>,
) {
    let (server, account) = (server.clone(), account.to_owned());
    let (count, answered) = tokio::sync::watch::channel(0);
    let publisher = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for i in 0..40 {
            seqs.push(server.publish(&account, None, "during", json!(i)).await);
            count.send_replace(seqs.len());
        }
        seqs
    });
    (publisher, answered)
}

/// Waits until one more publish has been answered (or the publisher is done): the room that
/// failed took it.
async fn publish_answered(answered: &mut tokio::sync::watch::Receiver<usize>) {
    answered.borrow_and_update();
    let _ = answered.changed().await;
}

#[tokio::test]
async fn a_session_that_fails_closes_alone() {
    let db = crate::common::Db::sqlite();
    let server = TestServer::on(&db); // one worker thread serves every session here
    let account = unique("isolated");
    let (mut alice, _) = server.connect(&token(&account, "alice")).await;
    let (mut bob, _) = server.connect(&token(&account, "bob")).await;

    use switchboard::actors::broker::FailUserSessions;
    use switchboard::ids::{AccountId, UserId};
    server.broker.do_send(FailUserSessions(
        AccountId::new(&account).unwrap(),
        UserId::new("alice").unwrap(),
    ));
    assert_eq!(alice.expect_close().await, 1011);

    // Bob, on the same worker thread, and the room carry on; alice can come back.
    let seq = server.publish(&account, None, "after", json!(null)).await;
    assert_eq!(bob.next_event().await.0, seq);
    let (mut again, _) = server.connect(&token(&account, "alice")).await;
    let next = server.publish(&account, None, "again", json!(null)).await;
    assert_eq!(again.next_event().await.0, next);
    assert_eq!(bob.next_event().await.0, next);
}

#[tokio::test]
async fn a_room_that_panics_is_restarted_and_its_sessions_miss_nothing() {
    let db = crate::common::Db::sqlite();
    let server = std::sync::Arc::new(TestServer::on(&db));
    let account = unique("panicky");
    let (mut alice, _) = server.connect(&token(&account, "alice")).await;
    let (mut bob, _) = crate::common::engine_io::Poller::connect(
        &server,
        json!({ "token": token(&account, "bob") }),
    )
    .await;

    // Publishing goes on while the room panics, twice (as a bug in it would).
    let (publisher, mut answered) = publish_during(&server, &account);
    use switchboard::actors::broker::PanicRoom;
    for _ in 0..2 {
        assert!(server
            .broker
            .send(PanicRoom(
                switchboard::ids::AccountId::new(&account).unwrap()
            ))
            .await
            .unwrap());
        publish_answered(&mut answered).await;
    }
    let published = publisher.await.unwrap();

    // Its sessions, native and Socket.IO, stayed registered and get every event once, in order.
    for (i, seq) in published.iter().enumerate() {
        assert_eq!(
            alice.next_event().await,
            (*seq, "during".to_owned(), json!(i))
        );
        assert_eq!(bob.next().await, format!(r#"42["during",{i},"{seq}"]"#));
    }
    // Nothing else: the next frame is this one.
    let after = server.publish(&account, None, "after", json!(null)).await;
    assert_eq!(alice.next_event().await.0, after);
    assert_eq!(bob.next().await, format!(r#"42["after",null,"{after}"]"#));
}

/// Holds the account's writes in the database (a transaction with its sequence row locked) until
/// dropped: what a database too slow for the publishes looks like to the publisher.
struct HeldWrites {
    conn: diesel::r2d2::PooledConnection<switchboard::store::connection::Manager>,
    _store: switchboard::store::Store,
}

impl HeldWrites {
    fn hold(db: &crate::common::Db, account: &str) -> Self {
        use diesel::connection::SimpleConnection;
        use switchboard::config::Database;
        let database = Database::parse(db.url()).unwrap();
        let store = switchboard::store::Store::open(&database, 1).unwrap();
        let mut conn = store.connection().unwrap();
        let lock = match database {
            Database::Sqlite(_) => "BEGIN IMMEDIATE".to_owned(),
            Database::Postgres(_) => format!(
                "BEGIN; SELECT last_seq FROM account_sequences WHERE account_id = '{account}' \
                 FOR UPDATE"
            ),
        };
        conn.batch_execute(&lock).unwrap();
        Self {
            conn,
            _store: store,
        }
    }
}

impl Drop for HeldWrites {
    fn drop(&mut self) {
        use diesel::connection::SimpleConnection;
        self.conn.batch_execute("COMMIT").unwrap();
    }
}

on_each_backend! {
    async fn publishes_past_the_queue_bound_are_refused_with_503_and_nothing_is_stored(db) {
        let mut config = crate::common::config(&db);
        config.publish_queue.max_publishes = 2;
        let server = std::sync::Arc::new(TestServer::start(config));
        let account = unique("overload");
        assert_eq!(server.publish(&account, None, "first", json!(0)).await, 1);

        let held = HeldWrites::hold(&db, &account);
        let mut publishes = tokio::task::JoinSet::new();
        for i in 0..8 {
            let (server, account) = (server.clone(), account.clone());
            publishes.spawn(async move {
                let response = reqwest::Client::new()
                    .post(server.http_url("/api/v1/publish"))
                    .header("authorization", format!("Bearer {}", crate::common::API_KEY))
                    .json(&json!({"account_id": account, "event": "burst", "data": i}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                (status, retry_after, response.json::<serde_json::Value>().await.unwrap())
            });
        }
        // Two wait for the database; the others are refused at once.
        for _ in 0..6 {
            let refused = tokio::time::timeout(crate::common::WAIT, publishes.join_next()).await;
            let (status, retry_after, answer) = refused.expect("refused at once").unwrap().unwrap();
            assert_eq!(status, 503, "{answer}");
            assert_eq!(answer["error"]["code"], "overloaded");
            assert_eq!(retry_after.as_deref(), Some("1"));
        }
        drop(held);
        let mut stored = Vec::new();
        while let Some(answer) = publishes.join_next().await {
            let (status, _, answer) = answer.unwrap();
            assert_eq!(status, 200, "{answer}");
            stored.push(answer["seq"].as_u64().unwrap());
        }
        stored.sort_unstable();
        assert_eq!(stored, [2, 3]);
        // The refused ones were not stored: the account's last event is the third.
        let (_, welcome) = server.connect(&token(&account, "alice")).await;
        assert_eq!(welcome["seq"], 3);
    }
}
