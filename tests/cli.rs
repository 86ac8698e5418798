//! The binary as a user runs it: development mode from nothing, `keys`, `token`, a session and a
//! publish — and no secret in any log line, at debug level.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::common::process::{Process, Switchboard};

fn cli(dir: &Path, args: &[&str]) -> String {
    let output = Switchboard::new().in_dir(dir).args(args).output();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `switchboard token` for alice of acme, with the development keys in `dir`.
fn alice_token(dir: &Path) -> String {
    cli(dir, &["token", "--account", "acme", "--user", "alice"])
        .trim()
        .to_owned()
}

/// The server as a user starts it: in `dir`, on embedded defaults, at debug level.
fn start_server(dir: &Path) -> Process {
    Switchboard::new()
        .in_dir(dir)
        .env("RUST_LOG", "debug")
        .spawn()
}

#[tokio::test]
async fn the_run_command_works_from_nothing_and_logs_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path());
    let addr = server.listening_on();
    assert!(server
        .wait_for("database: sqlite")
        .contains("switchboard.db"));
    server.wait_for("heartbeat: ping every 15s");
    server.wait_for("DEVELOPMENT MODE");
    server.wait_for("demo inbox: http://");
    assert!(dir.path().join("switchboard.db").exists());
    let keys_file = dir.path().join("switchboard-dev-keys.json");
    let mode = std::fs::metadata(&keys_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "keys file readable by others");

    let keys = cli(dir.path(), &["keys"]);
    let value = |name: &str| {
        keys.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in `keys` output: {keys}"))
            .to_owned()
    };
    let (jwt_secret, api_key) = (
        value("SWITCHBOARD_JWT_SECRET"),
        value("SWITCHBOARD_API_KEY"),
    );
    assert!(jwt_secret.len() >= 32 && api_key.len() >= 16);
    let token = alice_token(dir.path());

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
        .await
        .expect("dev token connects");
    let welcome = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(welcome.contains(r#""account_id":"acme""#), "{welcome}");

    let response = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/publish"))
        .header("authorization", format!("Bearer {api_key}"))
        .body(json!({"account_id": "acme", "event": "hello", "data": {"n": 1}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let event = loop {
        let frame = ws.next().await.unwrap().unwrap().into_text().unwrap();
        // Skip the presence announcement of alice herself.
        if !frame.contains("user-online") {
            break frame;
        }
    };
    assert_eq!(
        event.as_str(),
        r#"{"type":"event","seq":1,"event":"hello","data":{"n":1}}"#
    );

    // A refused token must not be logged either.
    let forged = format!("{token}x");
    let _ = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={forged}")).await;

    server.wait_for("connect account=acme user=alice session=");
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let disconnect = server.wait_for("disconnect account=acme user=alice");
    assert!(
        disconnect.contains("reason=client closed (1000)"),
        "{disconnect}"
    );

    let log = server.log.join("\n");
    assert!(log.contains("\"GET /ws?token=[redacted]\" 401"), "{log}");
    let signature = token.rsplit('.').next().unwrap();
    for secret in [token.as_str(), signature, &jwt_secret, &api_key] {
        assert!(!log.contains(secret), "a secret reached the log:\n{log}");
    }
}

/// The global presence receiver follows the address rules of an integration's `outbound_url`,
/// checked as the server starts: a loopback one, without `SWITCHBOARD_OUTBOUND_ALLOW_PRIVATE`,
/// stops it with the setting named.
#[test]
fn a_presence_webhook_url_the_address_rules_refuse_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = Switchboard::new()
        .in_dir(dir.path())
        .keys()
        .env(
            "SWITCHBOARD_PRESENCE_WEBHOOK_URL",
            "http://127.0.0.1:9/hooks",
        )
        .env(
            "SWITCHBOARD_PRESENCE_WEBHOOK_SECRET",
            "a-presence-secret-long-enough",
        )
        .output_within(Duration::from_secs(20));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SWITCHBOARD_PRESENCE_WEBHOOK_URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("a-presence-secret"), "{stderr}");
}

#[test]
fn bad_configuration_is_refused_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let output = Switchboard::new()
        .in_dir(dir.path())
        .env("SWITCHBOARD_JWT_SECRET", "short")
        .env("SWITCHBOARD_API_KEY", "an-api-key-long-enough")
        .output();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SWITCHBOARD_JWT_SECRET") && stderr.contains("32 bytes"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("short"),
        "the rejected secret was echoed: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_tool_measures_a_running_server() {
    let db = crate::common::Db::sqlite();
    let server = crate::common::TestServer::on(&db);
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let chart = dir.path().join("sweep.svg");
    let addr = server.addr;
    let bench = Switchboard::new()
        .in_dir(dir.path())
        .keys()
        .args([
            "bench",
            "--url",
            &format!("http://{addr}"),
            "--sweep",
            "10,30",
        ])
        .args([
            "--accounts",
            "2",
            "--tabs",
            "2",
            "--events",
            "20",
            "--in-flight",
            "4",
        ])
        .args([
            "--server-pid",
            &std::process::id().to_string(),
            "--timeout",
            "60s",
        ])
        .args([
            OsStr::new("--json"),
            report.as_os_str(),
            OsStr::new("--chart"),
            chart.as_os_str(),
        ]);
    let table = run_to_success(bench).await;
    assert!(
        table.contains("deliv/s") && table.contains("p99 ms"),
        "{table}"
    );

    let reports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    for (r, connections) in reports.as_array().unwrap().iter().zip([10u64, 30]) {
        assert_eq!(r["connections"], connections);
        // 20 events over 2 accounts: each reaches the half of the connections in its account.
        assert_eq!(r["expected_deliveries"], connections * 10);
        assert_eq!(r["deliveries"], r["expected_deliveries"]);
        assert_eq!(
            (
                r["lost"].as_u64(),
                r["duplicated"].as_u64(),
                r["cross_account"].as_u64()
            ),
            (Some(0), Some(0), Some(0))
        );
        assert!(
            r["latency_ms"]["p99"].as_f64().unwrap() >= r["latency_ms"]["p50"].as_f64().unwrap()
        );
        assert!(r["server_cpu_per_delivery_us"].is_number());
    }
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("deliveries per second"));
}

/// `switchboard bench` over event streams, with channels and events to random accounts: each event
/// reaches only its channel's followers in its account — 16 sessions over 2 accounts and 4
/// channels, so 2 per event — and none is lost, repeated or misdelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_tool_measures_channels_over_event_streams() {
    let db = crate::common::Db::sqlite();
    let server = crate::common::TestServer::on(&db);
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let bench = Switchboard::new()
        .in_dir(dir.path())
        .keys()
        .args(["bench", "--url", &format!("http://{}", server.addr)])
        .args([
            "--transport",
            "sse",
            "--connections",
            "16",
            "--accounts",
            "2",
        ])
        .args(["--channels", "4", "--target", "random", "--events", "40"])
        .args(["--timeout", "60s"])
        .args([OsStr::new("--json"), report.as_os_str()]);
    let table = run_to_success(bench).await;
    assert!(table.contains("wrong ch"), "{table}");
    let reports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let r = &reports[0];
    assert_eq!(r["transport"], "sse");
    assert_eq!(r["expected_deliveries"], 40 * 2, "{r}");
    assert_eq!(r["deliveries"], r["expected_deliveries"], "{r}");
    for count in ["lost", "duplicated", "cross_account", "wrong_channel"] {
        assert_eq!(r[count], 0, "{count}: {r}");
    }
}

/// `switchboard bench --abuse`, short: a few sessions receive events with and without the attacker
/// beside them, against the server binary; none is lost, and the report says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_abuse_benchmark_loses_no_event_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (server, api) = Switchboard::new()
        .in_dir(dir.path())
        .keys()
        .env("RUST_LOG", "warn,switchboard::server=info")
        .serve();
    let report = dir.path().join("abuse.json");
    let bench = Switchboard::new()
        .in_dir(dir.path())
        .keys()
        .args(["bench", "--abuse", "--url", &format!("http://{}", api.addr)])
        .args([
            "--abuse-seconds",
            "2",
            "--connections",
            "20",
            "--accounts",
            "2",
        ])
        .args(["--rate", "20", "--timeout", "60s"])
        .args(["--server-pid", &server.child.id().to_string()])
        .args([OsStr::new("--json"), report.as_os_str()]);
    let table = run_to_success(bench).await;
    assert!(
        table.contains("p99 under attack / baseline") && table.contains("slow request bodies"),
        "{table}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2, "{report}");
    for phase in phases {
        assert_eq!(phase["publish_failures"], 0, "{phase}");
        assert_eq!(phase["expected_deliveries"], 400, "{phase}");
        assert_eq!(
            (
                phase["lost"].as_u64(),
                phase["duplicated"].as_u64(),
                phase["cross_account"].as_u64()
            ),
            (Some(0), Some(0), Some(0)),
            "{phase}"
        );
        assert!(phase["server_rss_peak_bytes"]
            .as_u64()
            .is_some_and(|b| b > 0));
    }
    // The attacker did attack, and was refused.
    let attack = report["attack"].as_array().unwrap();
    assert_eq!(attack.len(), 6, "{report}");
    assert!(
        attack.iter().all(|t| t["attempts"].as_u64() > Some(0)),
        "{report}"
    );
    assert!(report["p99_factor"].as_f64().is_some_and(|f| f > 0.0));
    drop(server);
}

#[test]
fn a_port_in_use_is_a_clear_error_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = Switchboard::new()
        .in_dir(dir.path())
        .env("SWITCHBOARD_BIND", &addr)
        .output();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Nothing was created: the database is opened only once the port is ours.
    assert!(!dir.path().join("switchboard.db").exists());
}

/// The scheduling policy of a thread (field 41 of its `stat`); `None` once it has exited.
fn policy(stat_path: &Path) -> Option<u32> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(38)?.parse().ok()
}

/// The scheduling policy of each of `pid`'s threads.
fn thread_policies(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|task| policy(&task.ok()?.path().join("stat")))
        .collect()
}

/// Every thread of the server runs under `SCHED_BATCH` (docs/performance.md), unless told
/// `normal`, or started at a nice value of the operator's, which the server leaves alone.
#[test]
fn the_server_threads_run_under_the_scheduling_policy_configured() {
    const SCHED_BATCH: u32 = 3;
    let as_started = policy(Path::new("/proc/thread-self/stat")).unwrap();
    assert_ne!(
        as_started, SCHED_BATCH,
        "run the tests under the default policy"
    );
    let dir = tempfile::tempdir().unwrap();
    let started = |command: Switchboard, expect: &str| {
        let mut server = command.spawn();
        server.wait_for(expect);
        server.wait_for("starting service");
        let policies = thread_policies(server.child.id());
        assert!(policies.len() > 3, "{policies:?}");
        policies
    };
    let server = || Switchboard::new().in_dir(dir.path());

    let batch = started(server(), "scheduling: SCHED_BATCH");
    assert!(batch.iter().all(|&p| p == SCHED_BATCH), "{batch:?}");
    let normal = started(
        server().env("SWITCHBOARD_SCHEDULING", "normal"),
        "scheduling: left as started",
    );
    assert!(normal.iter().all(|&p| p == as_started), "{normal:?}");
    let niced = started(
        server().under("nice", &["-n", "5"]),
        "as the server runs at nice 5",
    );
    assert!(niced.iter().all(|&p| p == as_started), "{niced:?}");

    let refused = server().env("SWITCHBOARD_SCHEDULING", "fastest").output();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("--scheduling") && stderr.contains("batch, normal"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_closes_every_session_with_1001_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path());
    let addr = server.listening_on();
    let token = alice_token(dir.path());
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
        .await
        .unwrap();
    ws.next().await.unwrap().unwrap(); // welcome

    // A browser's connection between two requests, kept alive: it must not hold the stop.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: switchboard\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0; 512];
    let n = idle.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));

    server.signal("TERM");
    // The client is told, rather than left to find out when the connection drops.
    let close = loop {
        match ws.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("a close code");
    assert_eq!(close.code, CloseCode::Away);
    assert_eq!(close.reason.as_str(), "server shutting down; reconnect");
    drop(ws);
    server.wait_for("session(s) closed with 1001");
    // And the process ends on its own, without waiting for the idle connection to time out
    // (5 s; the server's own graceful timeout is 10 s).
    let status = server.exits_within(Duration::from_secs(3));
    assert!(status.success(), "{status}");
    drop(idle);
}

/// The server as `start_server` starts it (at `info`), with `env` added.
fn server_with(dir: &Path, env: &[(&str, &str)]) -> Process {
    Switchboard::new().in_dir(dir).envs(env).spawn()
}

/// Only one of the two keys configured is a production set-up half done: development mode would
/// fill in the other and, unannounced, let pages from any origin open WebSockets and serve the
/// demo. It is refused unless development is meant (`SWITCHBOARD_DEV_MODE=true`), and then said
/// as loudly as full development mode; `SWITCHBOARD_DEV_MODE=false` refuses to generate any key.
#[test]
fn half_configured_keys_are_refused_unless_development_is_meant() {
    use crate::common::{API_KEY, JWT_SECRET};
    let dir = tempfile::tempdir().unwrap();
    let jwt_only = [("SWITCHBOARD_JWT_SECRET", JWT_SECRET)];
    let key_only = [("SWITCHBOARD_API_KEY", API_KEY)];
    for (env, missing) in [
        (&jwt_only[..], "SWITCHBOARD_API_KEY"),
        (&key_only[..], "SWITCHBOARD_JWT_SECRET"),
        (
            &[("SWITCHBOARD_DEV_MODE", "false")][..],
            "SWITCHBOARD_JWT_SECRET",
        ),
    ] {
        let mut server = server_with(dir.path(), env);
        let status = server.exits_within(Duration::from_secs(10));
        assert!(!status.success(), "{env:?} started");
        let line = server.wait_for("SWITCHBOARD_DEV_MODE");
        assert!(line.contains(missing), "{env:?}: {line}");
        assert!(
            !server.log.join("\n").contains(JWT_SECRET) && !server.log.join("\n").contains(API_KEY)
        );
    }
    assert!(!dir.path().join("switchboard-dev-keys.json").exists());

    let meant = [("SWITCHBOARD_DEV_MODE", "true"), jwt_only[0]];
    let mut server = server_with(dir.path(), &meant);
    server.wait_for("listening on http://");
    let warning = server.wait_for("DEVELOPMENT MODE");
    assert!(
        warning.contains("no API key") && warning.contains("any origin"),
        "{warning}"
    );
}

/// Query values reach the request log only for parameters known to be harmless: Facebook's verify
/// token (right or wrong) and any parameter the server has never heard of are redacted.
#[tokio::test]
async fn the_request_log_shows_only_query_values_known_to_be_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let verify_token = "fb-verify-token-0123456789";
    let mut server = server_with(
        dir.path(),
        &[("SWITCHBOARD_FACEBOOK_VERIFY_TOKEN", verify_token)],
    );
    let addr = server.listening_on();
    let get = |query: String| {
        let url = format!("http://{addr}{query}");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    let handshake = |token: &str| {
        format!("/webhooks/facebook?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=42")
    };
    assert_eq!(get(handshake(verify_token)).await, 200);
    assert_eq!(get(handshake("a-wrong-guess-0123")).await, 403);
    assert_eq!(
        get("/healthz?sessionkey=hunter2-hunter2&since=7".into()).await,
        200
    );
    let line = server.wait_for("GET /healthz?");
    assert!(line.contains("since=7"), "{line}");
    let log = server.log.join("\n");
    assert!(log.contains("hub.verify_token=[redacted]"), "{log}");
    for secret in [verify_token, "a-wrong-guess-0123", "hunter2-hunter2"] {
        assert!(!log.contains(secret), "{secret} reached the log:\n{log}");
    }
}

/// Runs a command to its end, off the test's runtime, and returns what it printed; fails the test
/// with its error output if it did not succeed.
async fn run_to_success(command: Switchboard) -> String {
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
