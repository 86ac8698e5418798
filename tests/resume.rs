//! Nothing lost: resuming after a reconnect, retention, the long-poll fallback, and the bound on
//! what a client that does not read can make the server hold.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{self, token, Db, SilentClient, TestServer};

#[tokio::test]
async fn a_reconnecting_client_gets_what_it_missed_then_live() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let alice = token("acme", "alice");
    let (mut client, _) = server.connect(&alice).await;
    let first = server.publish("acme", None, "before", json!(1)).await;
    assert_eq!(client.next_event().await.0, first);
    drop(client);

    // Missed while away: account events, one for alice, one for bob (not hers).
    let a = server.publish("acme", None, "missed", json!(2)).await;
    let b = server
        .publish("acme", Some("alice"), "missed", json!(3))
        .await;
    server
        .publish("acme", Some("bob"), "not-hers", json!(4))
        .await;
    let c = server.publish("acme", None, "missed", json!(5)).await;

    let (mut client, welcome) = server.resume(&alice, first).await;
    assert_eq!(
        (&welcome["resumed"], &welcome["since"]),
        (&json!(true), &json!(first))
    );
    for expected in [a, b, c] {
        assert_eq!(client.next_event().await.0, expected);
    }
    let live = server.publish("acme", None, "live", json!(6)).await;
    assert_eq!(client.next_event().await.0, live);
    let sentinel = server.sentinel("acme", Some("alice")).await;
    client.expect_sentinel(sentinel).await;

    // A first connection says it did not resume.
    let (_, fresh) = server.connect(&alice).await;
    assert_eq!(
        (&fresh["resumed"], fresh.get("since")),
        (&json!(false), None)
    );
}

#[tokio::test]
async fn resuming_while_publishes_continue_leaves_no_gap_and_no_duplicate() {
    let db = Db::sqlite();
    let server = Arc::new(TestServer::on(&db));
    let alice = token("acme", "alice");
    for i in 0..300 {
        server.publish("acme", None, "backlog", json!(i)).await;
    }
    let running = Arc::new(AtomicBool::new(true));
    let publisher = {
        let (server, running) = (server.clone(), running.clone());
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..400 {
                if !running.load(Ordering::Relaxed) {
                    break;
                }
                last = server.publish("acme", None, "during", json!(i)).await;
            }
            last
        })
    };
    // Replays 300+ events while new ones keep coming.
    let (mut client, _) = server.resume(&alice, 0).await;
    let mut expected = 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while expected <= 350 && Instant::now() < deadline {
        assert_eq!(client.next_event().await.0, expected);
        expected += 1;
    }
    running.store(false, Ordering::Relaxed);
    let last = publisher.await.unwrap();
    while expected <= last {
        assert_eq!(
            client.next_event().await.0,
            expected,
            "in order, exactly once"
        );
        expected += 1;
    }
    let sentinel = server.sentinel("acme", Some("alice")).await;
    client.expect_sentinel(sentinel).await;
}

#[tokio::test]
async fn the_resume_frame_works_first_and_only_first() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let alice = token("acme", "alice");
    let one = server.publish("acme", None, "e", json!(1)).await;
    let two = server.publish("acme", None, "e", json!(2)).await;

    let (mut client, welcome) = server.connect(&alice).await;
    assert_eq!(welcome["seq"], two);
    client
        .send_text(&json!({"type": "resume", "since": one - 1}).to_string())
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "resumed", "since": one - 1, "seq": two})
    );
    assert_eq!(client.next_event().await.0, one);
    assert_eq!(client.next_event().await.0, two);
    let three = server.publish("acme", None, "e", json!(3)).await;
    assert_eq!(client.next_event().await.0, three);
    client.send_text(r#"{"type":"resume","since":0}"#).await;
    assert_eq!(client.next_json().await["code"], "resume-too-late");

    let (mut other, _) = server.connect(&alice).await;
    other.send_text(r#"{"type":"resume","since":"x"}"#).await;
    assert_eq!(other.next_json().await["code"], "invalid-since");
    other.send_text(r#"{"type":"resume","since":99}"#).await;
    assert_eq!(other.next_json().await["code"], "since-in-future");
}

#[tokio::test]
async fn bad_resume_points_are_refused_before_the_upgrade() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let alice = token("acme", "alice");
    server.publish("acme", None, "e", json!(1)).await;
    for (since, code) in [
        ("abc", "invalid-since"),
        ("-1", "invalid-since"),
        ("2", "since-in-future"),
    ] {
        let url = format!("{}?token={alice}&since={since}", server.ws_url());
        let (status, body) = server.try_connect(url).await.err().expect("refused");
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "since={since}"
        );
    }
}

#[tokio::test]
async fn resuming_from_beyond_retention_says_so() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.retention.max_events = 5;
    config.retention.interval = Duration::from_millis(50);
    let server = TestServer::start(config);
    let alice = token("acme", "alice");
    for i in 1..=10 {
        server.publish("acme", None, "e", json!(i)).await;
    }
    // Wait (bounded) for the pruner: the long-poll reports what is kept.
    server.until_pruned(&alice, 4).await;
    let (status, gone) = server
        .as_user(
            &alice,
            Method::GET,
            "/api/v1/events?since=4&timeout=0",
            None,
        )
        .await;
    assert_eq!(
        (status, &gone["error"]["code"], &gone["error"]["oldest_seq"]),
        (410, &json!("resume-failed"), &json!(6))
    );

    // At the edge: everything after 5 is kept.
    let (mut client, welcome) = server.resume(&alice, 5).await;
    assert_eq!(welcome["resumed"], true);
    for seq in 6..=10 {
        assert_eq!(client.next_event().await.0, seq);
    }
    // One before: the client is told to reload, and carries on live.
    let (mut client, welcome) = server.resume(&alice, 4).await;
    assert_eq!(welcome["resumed"], false);
    assert_eq!(
        client.next_json().await,
        json!({"type": "resume-failed", "since": 4, "oldest_seq": 6, "seq": 10})
    );
    let live = server.publish("acme", None, "e", json!(11)).await;
    assert_eq!(client.next_event().await.0, live);
}

#[tokio::test]
async fn the_long_poll_answers_at_once_wakes_on_publish_and_times_out_empty() {
    let db = Db::sqlite();
    let server = Arc::new(TestServer::on(&db));
    let alice = token("acme", "alice");
    let first = server.publish("acme", None, "e", json!({"n": 1})).await;

    let (status, body) = server
        .as_user(&alice, Method::GET, "/api/v1/events?since=0", None)
        .await;
    // Byte for byte the frame the WebSocket sends.
    let text = reqwest::Client::new()
        .get(server.http_url("/api/v1/events?since=0&timeout=0"))
        .header("authorization", format!("Bearer {alice}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let frame = format!(r#"{{"type":"event","seq":{first},"event":"e","data":{{"n":1}}}}"#);
    assert!(text.contains(&frame), "{text}");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"events": [{"type": "event", "seq": first, "event": "e", "data": {"n": 1}}], "since": first})
    );

    // Waiting: woken by a publish (for her account, for her).
    let waiting = {
        let server = server.clone();
        let alice = alice.clone();
        tokio::spawn(async move {
            server
                .as_user(
                    &alice,
                    Method::GET,
                    &format!("/api/v1/events?since={first}&timeout=20"),
                    None,
                )
                .await
        })
    };
    // Nothing outside the server tells that a long-poll is waiting: it registers before it reads,
    // so it answers the same whichever comes first, which is the point. The pause only makes the
    // wake the likely path.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server
        .publish("globex", None, "elsewhere", json!(null))
        .await;
    server
        .publish("acme", Some("bob"), "for-bob", json!(null))
        .await;
    let mine = server
        .publish("acme", Some("alice"), "for-alice", json!(null))
        .await;
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 200);
    let seqs: Vec<u64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [mine], "only what alice may see: {body}");

    // Nothing new: an empty answer after the timeout, the position unchanged.
    let (status, body) = server
        .as_user(
            &alice,
            Method::GET,
            &format!("/api/v1/events?since={mine}&timeout=1"),
            None,
        )
        .await;
    assert_eq!((status, body), (200, json!({"events": [], "since": mine})));
    // Without `since`: where "now" is, at once and without the history.
    let (status, body) = server
        .as_user(&alice, Method::GET, "/api/v1/events?timeout=20", None)
        .await;
    assert_eq!((status, body), (200, json!({"events": [], "since": mine})));
    // Another account's user sees none of acme's events.
    let (_, theirs) = server
        .as_user(
            &token("globex", "eve"),
            Method::GET,
            "/api/v1/events?since=0&timeout=0",
            None,
        )
        .await;
    let names: Vec<&str> = theirs["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["elsewhere"]);
    for (query, code) in [
        ("?since=", "invalid-since"),
        ("?since=x", "invalid-since"),
        ("?since=999", "since-in-future"),
        ("?since=0&timeout=x", "invalid-field"),
    ] {
        let (status, body) = server
            .as_user(&alice, Method::GET, &format!("/api/v1/events{query}"), None)
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{query}"
        );
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_at_the_bound_and_memory_stays_flat() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.max_queued_bytes = 256 * 1024;
    let server = TestServer::start(config);
    let (mut reader, _) = server.connect(&token("acme", "bob")).await;
    let mut stalled = SilentClient::connect(server.addr, &token("acme", "alice")).await;

    const EVENTS: usize = 400;
    let payload = "x".repeat(100 * 1024);
    let before = rss_bytes();
    for i in 0..EVENTS {
        server
            .publish("acme", None, "bulk", json!({"i": i, "pad": payload}))
            .await;
        // The reading client keeps up, and is never closed.
        assert_eq!(reader.next_event().await.1, "bulk");
    }
    let growth = rss_bytes().saturating_sub(before);
    let sent = (EVENTS * payload.len()) as u64;
    eprintln!(
        "slow consumer: {} MiB sent to a client that did not read; server RSS grew {} MiB",
        sent >> 20,
        growth >> 20
    );
    assert!(
        growth < sent / 2,
        "memory grew {growth} bytes for {sent} bytes sent"
    );

    // The stalled client finds, once it reads, what was queued for it and then the close with
    // the slow-consumer code — or, if it comes back more than a heartbeat interval after the
    // close, the connection reset: either way, closed (`heartbeat::stalled` has both).
    let close = loop {
        match stalled.next_frame().await {
            Some((0x8, payload)) => break Some(payload),
            Some(_) => {}
            None => break None,
        }
    };
    if let Some(close) = close {
        assert_eq!(u16::from_be_bytes([close[0], close[1]]), 4001);
        assert_eq!(&close[2..], b"slow consumer");
    }
}

/// A small deterministic generator, so a failing chaos run can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default, Debug)]
struct Tally {
    delivered: usize,
    connects: usize,
    heartbeat_closes: usize,
    slow_consumer_closes: usize,
    client_drops: usize,
    other_ends: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_every_client_ends_with_exactly_the_events_it_is_entitled_to() {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use crate::common::Received;

    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.heartbeat = switchboard::config::Heartbeat {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(400),
    };
    config.max_queued_bytes = 64 * 1024;
    config.workers = Some(2);
    let server = Arc::new(TestServer::start(config));
    let clients: &[(&str, &str)] = &[
        ("acme", "alice"),
        ("acme", "alice"),
        ("acme", "alice"),
        ("acme", "bob"),
        ("acme", "bob"),
        ("globex", "carol"),
        ("globex", "carol"),
        ("globex", "dave"),
    ];
    // What each (account, user) is entitled to, known once the publishers are done.
    type Entitled = HashMap<(String, String), Vec<u64>>;
    let expected: Arc<OnceLock<Entitled>> = Arc::default();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let deadline = Instant::now() + Duration::from_secs(120);

    let readers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, &(account, user))| {
            let (server, expected, tally) = (server.clone(), expected.clone(), tally.clone());
            tokio::spawn(async move {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1234_5678));
                let jwt = token(account, user);
                let mut got: Vec<u64> = Vec::new();
                let key = (account.to_owned(), user.to_owned());
                loop {
                    let done = expected
                        .get()
                        .map(|e| e[&key].len() == got.len())
                        .unwrap_or(false);
                    if done || Instant::now() > deadline {
                        return (key, got);
                    }
                    let since = got.last().copied().unwrap_or(0);
                    let (mut client, welcome) = server.resume(&jwt, since).await;
                    assert_eq!(welcome["resumed"], true, "retention keeps everything here");
                    tally.lock().unwrap().connects += 1;
                    let mut budget = 1 + rng.below(40);
                    loop {
                        match client.receive(Duration::from_millis(500)).await {
                            Received::Json(frame) if frame["type"] == "event" => {
                                let seq = frame["seq"].as_u64().unwrap();
                                assert!(
                                    got.last().is_none_or(|&last| seq > last),
                                    "{user}: {seq} after {:?}: duplicate or out of order",
                                    got.last()
                                );
                                assert_eq!(
                                    frame["data"]["account"], account,
                                    "cross-account frame"
                                );
                                got.push(seq);
                                tally.lock().unwrap().delivered += 1;
                            }
                            Received::Json(frame) => panic!("unexpected frame {frame}"),
                            Received::Closed(frame) => {
                                let mut t = tally.lock().unwrap();
                                match frame.map(|f| u16::from(f.code)) {
                                    Some(4000) => t.heartbeat_closes += 1,
                                    Some(4001) => t.slow_consumer_closes += 1,
                                    _ => t.other_ends += 1,
                                }
                                break;
                            }
                            Received::TimedOut => {
                                if expected.get().is_some_and(|e| e[&key].len() == got.len()) {
                                    break;
                                }
                            }
                        }
                        budget -= 1;
                        if budget == 0 {
                            match rng.below(3) {
                                0 => {
                                    tally.lock().unwrap().client_drops += 1;
                                    break; // the client drops the connection
                                }
                                // Stop reading for a while: the server's heartbeat or the
                                // slow-consumer bound closes the session.
                                1 => {
                                    tokio::time::sleep(Duration::from_millis(300 + rng.below(900)))
                                        .await
                                }
                                _ => {}
                            }
                            budget = 1 + rng.below(40);
                        }
                    }
                }
            })
        })
        .collect();

    // Publishers: continuous, several at once, some for one user, some large.
    let publishers: Vec<_> = (0..3u64)
        .map(|p| {
            let server = server.clone();
            tokio::spawn(async move {
                let mut rng = Rng(0xdead_beef ^ ((p + 1) * 0x9999));
                let mut sent = Vec::new();
                for i in 0..150 {
                    let account = ["acme", "globex"][rng.below(2) as usize];
                    let users: &[&str] = if account == "acme" {
                        &["alice", "bob"]
                    } else {
                        &["carol", "dave"]
                    };
                    let user = (rng.below(4) == 0).then(|| users[rng.below(2) as usize]);
                    let pad = "p".repeat(if rng.below(5) == 0 { 8 * 1024 } else { 32 });
                    let data = json!({"account": account, "from": p, "i": i, "pad": pad});
                    let seq = server.publish(account, user, "chaos", data).await;
                    sent.push((account, user, seq));
                    // At an uneven pace, as publishers are: the scenario, not a wait.
                    tokio::time::sleep(Duration::from_millis(rng.below(8))).await;
                }
                sent
            })
        })
        .collect();
    let mut sent = Vec::new();
    for publisher in publishers {
        sent.extend(publisher.await.unwrap());
    }
    let mut entitled = Entitled::new();
    for &(account, user) in clients {
        let mut seqs: Vec<u64> = sent
            .iter()
            .filter(|(a, u, _)| *a == account && u.is_none_or(|u| u == user))
            .map(|(_, _, seq)| *seq)
            .collect();
        seqs.sort_unstable();
        entitled.insert((account.to_owned(), user.to_owned()), seqs);
    }
    expected.set(entitled.clone()).unwrap();

    for reader in readers {
        let (key, got) = reader.await.unwrap();
        assert_eq!(got, entitled[&key], "{key:?} holds exactly its sequence");
    }
    let tally = tally.lock().unwrap();
    eprintln!("chaos: {} publishes, {tally:?}", sent.len());
    assert!(
        tally.connects > clients.len(),
        "connections were cut and resumed"
    );
}

/// Event sizes for a large history: small ones, and some larger than a 1 MiB bound by themselves.
const MIXED_SIZES: [usize; 5] = [300, 8 << 10, 96 << 10, 400 << 10, 1536 << 10];

crate::on_each_backend! {
    // The server runs as a process of its own, so that its memory is measured apart from the
    // client's and from the other tests running beside this one.
    async fn a_replay_far_larger_than_the_bound_is_paced_by_a_reading_client(db) {
        let (process, api) = common::process::Switchboard::new()
            .keys()
            .database(db.url())
            .env("SWITCHBOARD_MAX_QUEUED_BYTES", (1 << 20).to_string())
            // What the server holds, not what its allocator keeps for reuse; and SQLite's page
            // cache (2 MiB per connection, in the server's process) for two connections only.
            .env("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
            .env("SWITCHBOARD_DB_POOL_SIZE", "2")
            .env("SWITCHBOARD_MAX_PUBLISH_BYTES", (2 << 20).to_string())
            .env("RUST_LOG", "warn,switchboard=info")
            .serve();
        let account = common::unique("replay");
        let reader = token(&account, "reader");

        // 50 MiB of history, in events of mixed sizes.
        let mut sizes = Vec::new();
        let mut history = 0;
        while history < 50 << 20 {
            let size = MIXED_SIZES[sizes.len() % MIXED_SIZES.len()];
            let data = json!({"i": sizes.len(), "pad": "x".repeat(size)});
            let seq = api.publish(&account, None, "bulk", data).await;
            assert_eq!(seq, sizes.len() as u64 + 1);
            sizes.push(size);
            history += size;
        }
        let pid = process.child.id();
        let before = common::process::rss_of(pid);
        let mut peak = before;

        let started = Instant::now();
        let (mut client, welcome) = api.resume(&reader, 0).await;
        assert_eq!(welcome["resumed"], true);
        for (i, size) in sizes.iter().enumerate() {
            match client.receive(common::WAIT).await {
                common::Received::Json(frame) => {
                    assert_eq!(frame["seq"], i + 1, "every event once, in order");
                    assert_eq!(frame["data"]["i"], i);
                    assert_eq!(frame["data"]["pad"].as_str().map(str::len), Some(*size));
                }
                other => panic!("after {i} of {} events: {other:?}", sizes.len()),
            }
            peak = peak.max(common::process::rss_of(pid));
        }
        let sentinel = api.sentinel(&account, Some("reader")).await;
        client.expect_sentinel(sentinel).await;
        let growth = peak.saturating_sub(before);
        eprintln!(
            "replay: {} MiB in {} events (largest {} KiB) replayed in {:?} with a 1 MiB bound; \
             the server's RSS grew {} KiB at most",
            history >> 20,
            sizes.len(),
            MIXED_SIZES.iter().max().unwrap() >> 10,
            started.elapsed(),
            growth >> 10
        );
        assert!(
            growth < (history / 4) as u64,
            "the server's memory grew {growth} bytes for a {history}-byte replay"
        );
    }
}

/// A WebSocket client whose socket buffers little (64 KiB), so that when it stops reading the
/// server soon has nowhere to put more.
async fn connect_with_a_small_window(
    server: &TestServer,
    url: String,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    tokio_tungstenite::client_async(url, stream)
        .await
        .unwrap()
        .0
}

/// The next text frame, as JSON; or the close code — 1006 (as browsers report it) for a
/// connection that ended without a close frame.
async fn next_frame(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> Result<serde_json::Value, u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(common::WAIT, ws.next())
            .await
            .expect("a frame within the wait");
        match message {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map_or(1005, |f| f.code.into())),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(1006),
        }
    }
}

crate::on_each_backend! {
    async fn a_client_that_stops_reading_mid_replay_is_closed_as_a_slow_consumer_and_resumes_to_the_end(db) {
        let mut config = common::config(&db);
        // A replaying client that takes nothing for a heartbeat interval has stopped reading; the
        // heartbeat timeout would come long after.
        config.heartbeat = switchboard::config::Heartbeat {
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(20),
        };
        let server = TestServer::start(config);
        let account = common::unique("stall");
        let reader = token(&account, "reader");
        const EVENTS: u64 = 160;
        let pad = "x".repeat(96 << 10);
        for i in 0..EVENTS {
            server.publish(&account, None, "bulk", json!({"i": i, "pad": pad})).await;
        }

        let url = format!("{}?token={reader}&since=0", server.ws_url());
        let mut ws = connect_with_a_small_window(&server, url).await;
        assert_eq!(next_frame(&mut ws).await.unwrap()["type"], "welcome");
        let mut last = 0;
        while last < 20 {
            let frame = next_frame(&mut ws).await.expect("an event, not a close");
            assert_eq!(frame["seq"], last + 1);
            last += 1;
        }
        // The client stops reading for ten heartbeat intervals: once its socket is full, it
        // takes nothing of what the replay queued for it. (Nothing to wait for instead: the
        // server cannot tell a client that stopped reading from a slow one but by time.)
        tokio::time::sleep(Duration::from_secs(2)).await;
        // What was on its way still arrives, in order, then the slow-consumer close — or, as the
        // client took nothing of what was left for a heartbeat interval more, the connection's
        // reset.
        let code = loop {
            match next_frame(&mut ws).await {
                Ok(frame) => {
                    assert_eq!(frame["seq"], last + 1, "in order, once");
                    last += 1;
                }
                Err(code) => break code,
            }
        };
        assert!(
            code == 4001 || code == 1006,
            "closed as a slow consumer after {last} events, not {code}"
        );
        assert!(last < EVENTS, "closed mid-replay");
        eprintln!("stopped reading after 20 events; closed after {last} of {EVENTS}");

        // It resumes from where it got to, and gets the rest.
        let (mut client, welcome) = server.resume(&reader, last).await;
        assert_eq!(welcome["resumed"], true);
        for seq in last + 1..=EVENTS {
            assert_eq!(client.next_event().await.0, seq);
        }
        let sentinel = server.sentinel(&account, Some("reader")).await;
        client.expect_sentinel(sentinel).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_during_a_long_replay_come_after_it_once_without_closing_a_reader() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.max_publish_bytes = 1 << 20;
    let server = Arc::new(TestServer::start(config));
    let reader = token("acme", "reader");
    // 12 MiB of history; live events meanwhile, some larger than what a replay holds for them.
    let sizes = |big: usize, small: usize, n: usize| (0..n).map(move |i| [small, big][i % 2]);
    const HISTORY: u64 = 28;
    const LIVE: u64 = 40;
    for (i, size) in sizes(900 << 10, 16 << 10, HISTORY as usize).enumerate() {
        let data = json!({"i": i, "pad": "h".repeat(size)});
        server.publish("acme", None, "history", data).await;
    }
    let url = format!("{}?token={reader}&since=0", server.ws_url());
    let mut ws = connect_with_a_small_window(&server, url).await;
    assert_eq!(next_frame(&mut ws).await.unwrap()["type"], "welcome");
    assert_eq!(next_frame(&mut ws).await.unwrap()["seq"], 1);
    // The client pauses (far less than a heartbeat interval) while events are published: the
    // replay fills its share of the bound and waits, and live events find no room.
    let live = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (server, live) = (server.clone(), live.clone());
        tokio::spawn(async move {
            for (i, size) in sizes(600 << 10, 4 << 10, LIVE as usize).enumerate() {
                let data = json!({"i": i, "pad": "l".repeat(size)});
                server.publish("acme", None, "live", data).await;
                live.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    common::eventually(
        "a quarter of the live events published",
        common::WAIT,
        || async {
            match live.load(Ordering::Relaxed) {
                n if n >= LIVE as usize / 4 => Ok(()),
                n => Err(n),
            }
        },
    )
    .await;
    for expected in 2..=HISTORY + LIVE {
        let frame = next_frame(&mut ws).await.expect("an event, not a close");
        assert_eq!(frame["seq"], expected, "in order, once");
    }
    publisher.await.unwrap();
    // Nothing more: the next frame is a sentinel published now.
    let sentinel = server.sentinel("acme", Some("reader")).await;
    let next = next_frame(&mut ws).await;
    let expected = json!({"type": "event", "seq": sentinel, "event": "sentinel", "data": null});
    assert_eq!(next, Ok(expected), "nothing more");
}

#[tokio::test]
async fn a_resume_point_ahead_of_the_account_gets_one_documented_answer_on_every_wire() {
    use crate::common::engine_io::Poller;
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let alice = token("acme", "alice");
    let seq = server.publish("acme", None, "e", json!(1)).await;
    let ahead = seq + 5;

    // `/ws?since=`: refused before the upgrade.
    let url = format!("{}?token={alice}&since={ahead}", server.ws_url());
    let (status, body) = server.try_connect(url).await.err().expect("refused");
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("since-in-future"))
    );
    // The long-poll: likewise.
    let path = format!("/api/v1/events?since={ahead}&timeout=0");
    let (status, body) = server.as_user(&alice, Method::GET, &path, None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("since-in-future"))
    );
    // The `resume` frame: an error frame, and the session carries on live.
    let (mut client, _) = server.connect(&alice).await;
    client
        .send_text(&json!({"type": "resume", "since": ahead}).to_string())
        .await;
    assert_eq!(client.next_json().await["code"], "since-in-future");

    // Socket.IO's recovery offset: connected afresh (another pid: `socket.recovered` is false),
    // and told why with `resume-failed`.
    let auth = json!({ "token": alice });
    let (_, first) = Poller::connect(&server, auth.clone()).await;
    let mut now = seq;
    for (offset, code, since) in [
        (json!(ahead.to_string()), "since-in-future", Some(ahead)),
        (json!("not-a-number"), "invalid-since", None),
    ] {
        let mut recovering = auth.clone();
        recovering["pid"] = first["pid"].clone();
        recovering["offset"] = offset;
        let (mut socket, connected) = Poller::connect(&server, recovering).await;
        assert_ne!(connected["pid"], first["pid"], "not recovered");
        let packet = socket.next().await;
        let failed: Value = serde_json::from_str(packet.strip_prefix("42").unwrap()).unwrap();
        assert_eq!(failed[0], "resume-failed", "{packet}");
        assert_eq!(
            (
                &failed[1]["code"],
                failed[1].get("since"),
                &failed[1]["seq"]
            ),
            (&json!(code), since.map(Value::from).as_ref(), &json!(now)),
            "{packet}"
        );
        assert!(failed[1]["message"].as_str().is_some_and(|m| !m.is_empty()));
        let live = server.publish("acme", None, "e", json!(2)).await;
        assert_eq!(socket.next().await, format!(r#"42["e",2,"{live}"]"#));
        let next = client.next_event().await.0;
        assert_eq!(next, live, "the /ws session carried on live");
        now = live;
    }
}
