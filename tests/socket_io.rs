//! Socket.IO compatibility (`/socket.io/`), tested with clients nobody here wrote: the npm
//! `socket.io-client` (tests/socketio/client.test.mjs, Node's test runner) and the PyPI
//! `python-socketio` client (tests/socketio/python_client.py), each against a real server on an
//! ephemeral port. The clients are installed on first use — `npm ci` into tests/socketio, and a
//! virtual environment under target/ — so `cargo test` needs only Node and Python on the machine.
//! Then the Engine.IO transport's refusals, by plain HTTP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::engine_io::{
    client_from, connect_error, error_code, get, get_by, open, packets, post, EngineSocket, Poller,
};
use crate::common::process::{Process, Switchboard};
use crate::common::{token, Api, Db, TestServer, API_KEY, JWT_SECRET};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

/// `npm ci` once, if socket.io-client is not installed yet.
fn node_client() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = root().join("tests/socketio");
        if !dir.join("node_modules/socket.io-client").exists() {
            run(
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&dir),
                "installing socket.io-client",
            );
        }
        dir
    })
}

/// A virtual environment with the pinned python-socketio client, made once.
fn python_client() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = root().join("target/socketio-venv");
        let python = venv.join("bin/python");
        let installed = python.exists()
            && Command::new(&python)
                .args(["-c", "import socketio, requests, websocket"])
                .status()
                .is_ok_and(|s| s.success());
        if !installed {
            run(
                Command::new("python3").args(["-m", "venv"]).arg(&venv),
                "creating a virtual environment",
            );
            let requirements = root().join("tests/socketio/requirements.txt");
            run(
                Command::new(&python)
                    .args(["-m", "pip", "install", "--quiet", "-r"])
                    .arg(requirements),
                "installing python-socketio",
            );
        }
        python
    })
}

/// The server's address and credentials, as the client suites read them.
fn client_env(command: &mut Command, server: &TestServer) {
    command
        .env("SWITCHBOARD_URL", server.http_url(""))
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .env("SWITCHBOARD_JWT_SECRET", JWT_SECRET);
}

#[test]
fn socket_io_client_from_npm() {
    let dir = node_client();
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let mut node = Command::new("node");
    node.args(["--test", "--test-reporter=spec", "."])
        .current_dir(dir);
    client_env(&mut node, &server);
    let output = run(&mut node, "the socket.io-client suite");
    assert!(output.contains("pass 10"), "{output}");
}

#[test]
fn python_socketio_client_from_pypi() {
    let python = python_client();
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let mut suite = Command::new(python);
    suite.arg(root().join("tests/socketio/python_client.py"));
    client_env(&mut suite, &server);
    let output = run(&mut suite, "the python-socketio suite");
    assert!(
        output.contains("Ran 6 tests") && output.contains("OK"),
        "{output}"
    );
}

#[tokio::test]
async fn engine_io_refusals_are_clear_and_disturb_nothing() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);

    // Wrong protocol version, unknown transport, unknown sid: 400 with a code each.
    let cases = [
        ("EIO=3&transport=polling", "unsupported-protocol"),
        ("transport=polling", "unsupported-protocol"),
        ("EIO=4&transport=flashsocket", "unknown-transport"),
        ("EIO=4&transport=polling&sid=eio_nope", "unknown-sid"),
    ];
    for (query, code) in cases {
        let (status, body) = get(&server, query).await;
        assert_eq!(
            (status, error_code(&body)),
            (400, json!(code)),
            "{query}: {body}"
        );
    }
    // A WebSocket request that is not an upgrade.
    let (status, body) = get(&server, "EIO=4&transport=websocket").await;
    assert_eq!((status, error_code(&body)), (400, json!("not-websocket")));

    // A CONNECT with a bad token: CONNECT_ERROR with a code, read by the next poll, and the
    // connection closed after it (socket.io-client tries again on a new one).
    let sid = open(&server).await;
    let query = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(
        post(&server, &query, r#"40{"token":"nope"}"#).await,
        (200, "ok".into())
    );
    let (status, body) = get(&server, &query).await;
    assert_eq!(status, 200);
    let (error, close) = body.split_once('\x1e').expect("two packets");
    let error: Value =
        serde_json::from_str(error.strip_prefix("44").expect("CONNECT_ERROR")).unwrap();
    assert_eq!(error["data"]["code"], "malformed-token");
    assert_eq!(close, "1");
    let (status, body) = post(&server, &query, r#"40{"token":"nope"}"#).await;
    assert_eq!((status, error_code(&body)), (400, json!("unknown-sid")));

    // A new connection with a good token: a session.
    let query = format!("EIO=4&transport=polling&sid={}", open(&server).await);
    let connect = format!("40{}", json!({ "token": token("acme", "u1") }));
    assert_eq!(post(&server, &query, connect).await.0, 200);
    let (_, body) = get(&server, &query).await;
    let connected: Value = serde_json::from_str(body.strip_prefix("40").expect("CONNECT")).unwrap();
    assert!(
        connected["sid"].is_string() && connected["pid"].is_string(),
        "{body}"
    );

    // A binary event is refused with its acknowledgement; the session carries on.
    assert_eq!(
        post(
            &server,
            &query,
            r#"451-7["upload",{"_placeholder":true,"num":0}]"#
        )
        .await
        .0,
        200
    );
    let (_, body) = get(&server, &query).await;
    let answer: Value = serde_json::from_str(body.strip_prefix("437").expect("an ack")).unwrap();
    assert_eq!(answer[0]["code"], "binary-not-supported", "{body}");
    assert_eq!(post(&server, &query, r#"428["presence",{}]"#).await.0, 200);
    let (_, body) = get(&server, &query).await;
    assert!(
        body.starts_with("438[") && body.contains("\"u1\""),
        "{body}"
    );

    // Over the payload limit: 413, and the connection is closed: the next poll gets the close
    // packet, and nothing more is taken.
    let (status, body) = post(&server, &query, "4".repeat(1 << 20)).await;
    assert_eq!(
        (status, error_code(&body)),
        (413, json!("payload-too-large"))
    );
    assert_eq!(get(&server, &query).await, (200, "1".into()));
    let (status, body) = post(&server, &query, r#"42["presence",{}]"#).await;
    assert_eq!((status, error_code(&body)), (400, json!("unknown-sid")));

    // Other connections are undisturbed.
    let other = open(&server).await;
    let query = format!("EIO=4&transport=polling&sid={other}");
    let connect = format!("40{}", json!({ "token": token("acme", "u2") }));
    assert_eq!(post(&server, &query, connect).await.0, 200);
    assert!(get(&server, &query).await.1.starts_with("40{"));
}

#[tokio::test]
async fn engine_io_pings_come_from_the_session_and_a_silent_client_is_closed() {
    let db = Db::sqlite();
    let mut config = crate::common::config(&db);
    config.heartbeat = switchboard::config::Heartbeat {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(400),
    };
    let server = TestServer::start(config);
    let (_, body) = get(&server, "EIO=4&transport=polling").await;
    let open: Value = serde_json::from_str(&body[1..]).unwrap();
    // Our heartbeat, in Engine.IO's terms: a ping every interval, the rest of the timeout to answer.
    assert_eq!(
        (open["pingInterval"].as_u64(), open["pingTimeout"].as_u64()),
        (Some(100), Some(300))
    );
    let query = format!(
        "EIO=4&transport=polling&sid={}",
        open["sid"].as_str().unwrap()
    );
    let connect = format!("40{}", json!({ "token": token("acme", "u1") }));
    assert_eq!(post(&server, &query, connect).await.0, 200);
    assert!(get(&server, &query).await.1.starts_with("40{"));

    // Answering every ping keeps the session well past the timeout.
    let answering = Instant::now() + Duration::from_millis(1200);
    let mut pings = 0;
    while Instant::now() < answering {
        let (status, body) = get(&server, &query).await;
        assert_eq!(status, 200, "{body}");
        for packet in body.split('\x1e') {
            assert_eq!(packet, "2", "only pings while nothing happens: {body}");
            pings += 1;
            assert_eq!(post(&server, &query, "3").await.0, 200);
        }
    }
    assert!(pings >= 5, "{pings} pings in 1.2 s at a 100 ms interval");

    // Silent from now on: told why, then closed.
    let mut seen = String::new();
    let closed = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < closed, "not closed: {seen}");
        let (status, body) = get(&server, &query).await;
        if status == 400 {
            assert_eq!(error_code(&body), json!("unknown-sid"));
            break;
        }
        seen.push_str(&body);
        if body == "1" {
            break;
        }
    }
    assert!(seen.contains(r#""name":"heartbeat-timeout""#), "{seen}");
}

#[tokio::test]
async fn recovering_from_beyond_retention_is_not_a_recovery_and_says_so() {
    let db = Db::sqlite();
    let mut config = crate::common::config(&db);
    config.retention.max_events = 5;
    config.retention.interval = Duration::from_millis(50);
    let server = TestServer::start(config);
    let auth = json!({ "token": token("acme", "alice") });
    let (_, first) = Poller::connect(&server, auth.clone()).await;
    let pid = first["pid"].as_str().unwrap().to_owned();
    for i in 1..=10 {
        server.publish("acme", None, "e", json!(i)).await;
    }
    // Wait (bounded) for the pruner: the long-poll reports what is kept.
    server.until_pruned(&token("acme", "alice"), 4).await;

    // Within what is kept: the same pid (socket.recovered), then what was missed.
    let mut recovering = auth.clone();
    recovering["pid"] = json!(pid);
    recovering["offset"] = json!("8");
    let (mut client, connected) = Poller::connect(&server, recovering.clone()).await;
    assert_eq!(connected["pid"], json!(pid));
    assert_eq!(client.next().await, r#"42["e",9,"9"]"#);
    assert_eq!(client.next().await, r#"42["e",10,"10"]"#);

    // Beyond it: another pid (not recovered), and why.
    recovering["offset"] = json!("4");
    let (mut client, connected) = Poller::connect(&server, recovering).await;
    assert_ne!(connected["pid"], json!(pid));
    let failed = client.next().await;
    let failed: Value = serde_json::from_str(failed.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(
        failed,
        json!(["resume-failed", {"type": "resume-failed", "since": 4, "oldest_seq": 6, "seq": 10}])
    );
    let live = server.publish("acme", None, "e", json!(11)).await;
    assert_eq!(client.next().await, format!(r#"42["e",11,"{live}"]"#));
}

#[tokio::test]
async fn connects_count_against_the_address_and_past_its_allowance_are_refused_unverified() {
    let db = Db::sqlite();
    let mut config = crate::common::config(&db);
    config.auth_failures_per_minute = std::num::NonZeroU32::new(3).unwrap();
    let server = TestServer::start(config);
    // Connections opened while the address is still in good standing, on both transports.
    let mut polling = Vec::new();
    for _ in 0..6 {
        polling.push(format!(
            "EIO=4&transport=polling&sid={}",
            open(&server).await
        ));
    }
    let (mut socket, _) = EngineSocket::open(&server).await;

    // Bad tokens, each verified and refused for what it is, until the address is over its
    // allowance (three a minute: the fourth failure passes it).
    let mut codes = Vec::new();
    for query in &polling[..5] {
        assert_eq!(post(&server, query, r#"40{"token":"nope"}"#).await.0, 200);
        let (_, body) = get(&server, query).await;
        codes.push(connect_error(packets(&body)[0])["data"]["code"].clone());
    }
    assert_eq!(
        codes,
        [
            "malformed-token",
            "malformed-token",
            "malformed-token",
            "malformed-token",
            "too-many-auth-failures"
        ]
    );
    // From now on nothing from there is verified, a good token included, on either transport.
    let good = format!("40{}", json!({ "token": token("acme", "u1") }));
    assert_eq!(post(&server, &polling[5], good.clone()).await.0, 200);
    let (_, body) = get(&server, &polling[5]).await;
    let refused = connect_error(packets(&body)[0]);
    assert_eq!(refused["data"]["code"], "too-many-auth-failures", "{body}");
    assert!(refused["message"].as_str().unwrap().contains("retry after"));
    socket.send(&good).await;
    let packet = socket
        .next(crate::common::WAIT)
        .await
        .expect("CONNECT_ERROR");
    assert_eq!(
        connect_error(&packet)["data"]["code"],
        "too-many-auth-failures"
    );
    assert_eq!(
        socket.next(crate::common::WAIT).await,
        None,
        "closed after it"
    );
    // And no new connection is opened.
    let (status, body) = get(&server, "EIO=4&transport=polling").await;
    assert_eq!(
        (status, error_code(&body)),
        (429, json!("too-many-auth-failures"))
    );
}

/// An EVENT packet's arguments.
fn emitted(packet: &str) -> Vec<Value> {
    let args = packet
        .strip_prefix("42")
        .unwrap_or_else(|| panic!("not an event: {packet:.200}"));
    serde_json::from_str(args).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_client_is_never_closed_by_a_large_recovery_nor_by_what_it_took() {
    let db = Db::sqlite();
    // SWITCHBOARD_MAX_QUEUED_BYTES is 1 MiB here: the history is four times that, and so is
    // what the client takes live afterwards.
    let server = TestServer::on(&db);
    let auth = json!({ "token": token("acme", "alice") });
    let (_, first) = Poller::connect(&server, auth.clone()).await;
    let pid = first["pid"].clone();
    let pad = "x".repeat(96 << 10);
    const HISTORY: u64 = 40;
    for i in 0..HISTORY {
        server
            .publish("acme", None, "bulk", json!({"i": i, "pad": pad}))
            .await;
    }

    let mut recovering = auth.clone();
    recovering["pid"] = pid.clone();
    recovering["offset"] = json!("0");
    let (mut polling, connected) = Poller::connect(&server, recovering.clone()).await;
    assert_eq!(connected["pid"], pid, "recovered, on long-polling");
    let (mut websocket, connected) = EngineSocket::connect(&server, &recovering).await;
    assert_eq!(connected["pid"], pid, "recovered, on a WebSocket");
    let check = |packet: String, seq: u64| {
        let args = emitted(&packet);
        assert_eq!(args[0], "bulk");
        assert_eq!(args[1]["i"], seq - 1);
        assert_eq!(
            args[2],
            json!(seq.to_string()),
            "every event once, in order"
        );
    };
    for seq in 1..=HISTORY {
        check(polling.next().await, seq);
        check(websocket.next_packet().await, seq);
    }
    for i in HISTORY..2 * HISTORY {
        let seq = server
            .publish("acme", None, "bulk", json!({"i": i, "pad": pad}))
            .await;
        check(polling.next().await, seq);
        check(websocket.next_packet().await, seq);
    }
}

#[tokio::test]
async fn connections_without_a_session_are_closed_after_the_handshake_timeout() {
    let db = Db::sqlite();
    let mut config = crate::common::config(&db);
    config.handshakes.timeout = Duration::from_millis(300);
    let server = TestServer::start(config);
    let query = format!("EIO=4&transport=polling&sid={}", open(&server).await);
    let (mut socket, _) = EngineSocket::open(&server).await;
    let (mut connected, _) =
        Poller::connect(&server, json!({ "token": token("acme", "u1") })).await;

    // The waiting poll is answered with the close (well before the heartbeat's 30 s).
    let started = Instant::now();
    assert_eq!(get(&server, &query).await, (200, "1".into()));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(socket.next(Duration::from_secs(5)).await, None);
    // A connection that connected its session in time carries on.
    connected.post(r#"421["ping",{}]"#).await;
    assert!(connected.next().await.starts_with("431[{\"type\":\"pong\""));
}

#[tokio::test]
async fn connections_without_a_session_are_capped_per_address_and_in_all() {
    let db = Db::sqlite();
    let mut config = crate::common::config(&db);
    config.handshakes.max_per_address = 3;
    config.handshakes.max = 5;
    let server = TestServer::start(config);
    let opening = "EIO=4&transport=polling";
    let sid = |body: &str| -> String {
        let open: Value = serde_json::from_str(&body[1..]).unwrap();
        open["sid"].as_str().unwrap().to_owned()
    };
    let first = client_from([127, 0, 0, 1]);
    let mut sids = Vec::new();
    for _ in 0..3 {
        let (status, _, body) = get_by(&first, &server, opening).await;
        assert_eq!(status, 200, "{body}");
        sids.push(sid(&body));
    }
    let (status, retry_after, body) = get_by(&first, &server, opening).await;
    assert_eq!(
        (status, error_code(&body)),
        (429, json!("too-many-unauthenticated"))
    );
    assert_eq!(retry_after.as_deref(), Some("10"), "the handshake timeout");

    // One of them connects a session: its place is free again.
    let query = format!("EIO=4&transport=polling&sid={}", sids[0]);
    let connect = format!("40{}", json!({ "token": token("acme", "u1") }));
    assert_eq!(post(&server, &query, connect).await.0, 200);
    assert!(get(&server, &query).await.1.starts_with("40{"));
    assert_eq!(get_by(&first, &server, opening).await.0, 200);

    // Other addresses have their own places, up to the server's bound.
    let second = client_from([127, 0, 0, 2]);
    for _ in 0..2 {
        assert_eq!(get_by(&second, &server, opening).await.0, 200);
    }
    let third = client_from([127, 0, 0, 3]);
    let (status, _, body) = get_by(&third, &server, opening).await;
    assert_eq!(
        (status, error_code(&body)),
        (503, json!("too-many-unauthenticated"))
    );

    // One connection holds one WebSocket probing to upgrade it at a time.
    let query = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={}",
        server.addr, sids[1]
    );
    let (_probe, _) = tokio_tungstenite::connect_async(query.as_str())
        .await
        .unwrap();
    match tokio_tungstenite::connect_async(query.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let body = String::from_utf8(response.body().clone().unwrap()).unwrap();
            assert_eq!(error_code(&body), json!("overlapping-upgrade"));
        }
        other => panic!("a second probe: {other:?}"),
    }
}

/// The server as a process of its own, so that its memory is its own to measure.
fn server_process(dir: &Path) -> (Process, Api) {
    Switchboard::new().in_dir(dir).keys().serve()
}

/// A process's resident memory, in bytes.
fn resident_bytes(process: &Process) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

#[tokio::test]
async fn refused_connects_close_the_connection_and_pile_nothing_up() {
    let dir = tempfile::tempdir().unwrap();
    let (server, api) = server_process(dir.path());

    // As many CONNECTs without a token as a POST may carry before a session: one answer, a
    // proper connect_error, and the close.
    let query = format!("EIO=4&transport=polling&sid={}", open(&api).await);
    assert_eq!(
        post(&api, &query, ["40"; 8].join("\x1e")).await,
        (200, "ok".into())
    );
    let (_, body) = get(&api, &query).await;
    assert_eq!(packets(&body).len(), 2, "{body}");
    let error = connect_error(packets(&body)[0]);
    assert_eq!(error["data"]["code"], "missing-token");
    assert!(
        error["message"].as_str().unwrap().contains("token"),
        "{error}"
    );
    assert_eq!(packets(&body)[1], "1");

    // The report's reproduction, bounded: 20 POSTs of 21,845 CONNECTs (64 KiB each) on one
    // connection. Refused, and the connection closed; the server holds nothing for them.
    let before = resident_bytes(&server);
    let query = format!("EIO=4&transport=polling&sid={}", open(&api).await);
    let flood = ["40"; 21_845].join("\x1e");
    let mut answers = Vec::new();
    for _ in 0..20 {
        let (status, body) = post(&api, &query, flood.clone()).await;
        answers.push((status, error_code(&body)));
    }
    let grown = resident_bytes(&server).saturating_sub(before);
    assert_eq!(answers[0], (400, json!("too-many-packets")));
    let closed = (400, json!("unknown-sid"));
    assert!(answers[1..].iter().all(|a| *a == closed), "{answers:?}");
    assert!(grown < 16 << 20, "the server grew by {} MiB", grown >> 20);
}

#[tokio::test]
async fn a_token_longer_than_tokens_may_be_is_neither_kept_nor_taken() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    // Well signed, but over 8 KiB: what a connection would otherwise hold until its CONNECT.
    let long = crate::common::sign(
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        json!({"sub": "u1", "account_id": "acme", "exp": crate::common::now() + 60,
               "pad": "x".repeat(8 * 1024)}),
    );
    let response = reqwest::Client::new()
        .get(server.http_url("/socket.io/?EIO=4&transport=polling"))
        .bearer_auth(&long)
        .send()
        .await
        .unwrap();
    let opened: Value = serde_json::from_str(&response.text().await.unwrap()[1..]).unwrap();
    let query = format!(
        "EIO=4&transport=polling&sid={}",
        opened["sid"].as_str().unwrap()
    );
    assert_eq!(post(&server, &query, "40").await.0, 200);
    let (_, body) = get(&server, &query).await;
    assert_eq!(
        connect_error(packets(&body)[0])["data"]["code"],
        "token-too-long"
    );
    // Nor in the CONNECT, nor anywhere else.
    let query = format!("EIO=4&transport=polling&sid={}", open(&server).await);
    assert_eq!(
        post(&server, &query, format!("40{}", json!({ "token": long })))
            .await
            .0,
        200
    );
    let (_, body) = get(&server, &query).await;
    assert_eq!(
        connect_error(packets(&body)[0])["data"]["code"],
        "token-too-long"
    );
    let (status, body) = server
        .as_user(&long, reqwest::Method::GET, "/api/v1/presence", None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("token-too-long"))
    );
}
