//! Server-Sent Events (`GET /sse`): the same session as `/ws`, its frames as an event stream —
//! refusals as HTTP errors before the stream, events with their sequence numbers as ids, resume by
//! `Last-Event-ID`, isolation, the heartbeat comment, the slow-consumer bound, the token's
//! lifetime and its refresh over REST, the cap on sessions per user, the drain.
//!
//! The client is written by hand over TCP (HTTP/1.1, chunked), so that a test can also shrink
//! its receive window and stop reading, as a stalled browser would.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::process::Switchboard;
use crate::common::{self, now, token, unique, Api, Db, TestServer, JWT_SECRET, WAIT};

/// What an event stream carries, one block (up to a blank line) at a time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Item {
    Retry(u64),
    Comment(String),
    Event { id: Option<u64>, data: Value },
}

/// An event stream read by hand.
pub(crate) struct EventStream {
    stream: TcpStream,
    /// Bytes read and not yet de-chunked.
    raw: Vec<u8>,
    /// The stream's text, de-chunked, not yet parsed.
    text: String,
    /// The last chunk (size 0) came: the response is over.
    ended: bool,
}

/// A refused stream: the status and the JSON body.
type Refused = (u16, Value);

impl EventStream {
    pub(crate) async fn open(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, Refused> {
        Self::open_with(addr, target, headers, None).await
    }

    /// `window`: the client's receive buffer, when it must be small.
    async fn open_with(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
        window: Option<u32>,
    ) -> Result<Self, Refused> {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(window) = window {
            socket.set_recv_buffer_size(window).unwrap();
        }
        let mut stream = socket.connect(addr).await.expect("tcp connect");
        let mut request =
            format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut this = Self {
            stream,
            raw: Vec::new(),
            text: String::new(),
            ended: false,
        };
        let head_end = loop {
            if let Some(i) = this.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(this.fill().await, "closed before the head");
        };
        let head = String::from_utf8_lossy(&this.raw[..head_end]).to_lowercase();
        this.raw.drain(..head_end);
        let status: u16 = head[9..12].parse().unwrap();
        if status != 200 {
            let length: usize = header(&head, "content-length").unwrap().parse().unwrap();
            while this.raw.len() < length {
                assert!(this.fill().await, "closed before the body");
            }
            return Err((status, serde_json::from_slice(&this.raw[..length]).unwrap()));
        }
        assert_eq!(
            header(&head, "content-type").as_deref(),
            Some("text/event-stream"),
            "{head}"
        );
        assert_eq!(
            header(&head, "cache-control").as_deref(),
            Some("no-cache"),
            "{head}"
        );
        assert_eq!(
            header(&head, "x-accel-buffering").as_deref(),
            Some("no"),
            "{head}"
        );
        assert_eq!(
            header(&head, "transfer-encoding").as_deref(),
            Some("chunked"),
            "{head}"
        );
        Ok(this)
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("the server sent nothing")
            .unwrap_or(0);
        self.raw.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Moves whole chunks from `raw` to `text`.
    fn dechunk(&mut self) {
        while let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&self.raw[..line_end]).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            let data = &self.raw[line_end + 2..line_end + 2 + size];
            self.text
                .push_str(std::str::from_utf8(data).expect("UTF-8"));
            self.raw.drain(..line_end + 2 + size + 2);
            if size == 0 {
                self.ended = true;
                return;
            }
        }
    }

    /// The next block, or `None` once the stream has ended.
    pub(crate) async fn next_item(&mut self) -> Option<Item> {
        loop {
            self.dechunk();
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                return Some(parse(block.trim_end()));
            }
            if self.ended || !self.fill().await {
                return None;
            }
        }
    }

    /// The next event, with its id; comments and presence left out.
    async fn next_event(&mut self) -> (Option<u64>, Value) {
        loop {
            match self.next_item().await.expect("the stream ended") {
                Item::Event { id, data } if !is_presence(&data) => return (id, data),
                _ => {}
            }
        }
    }

    /// The welcome, after the `retry:` that comes first.
    async fn welcome(&mut self) -> (Option<u64>, Value) {
        let first = self.next_item().await;
        assert_eq!(first, Some(Item::Retry(2000)));
        let (id, welcome) = self.next_event().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (id, welcome)
    }

    /// The events until the stream's `close` event; that close, and that the stream then ends.
    async fn close(&mut self) -> Value {
        loop {
            let (_, frame) = self.next_event().await;
            if frame["type"] == "close" {
                assert_eq!(
                    self.next_item().await,
                    None,
                    "the stream ends after its close"
                );
                return frame;
            }
        }
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_owned())
}

fn parse(block: &str) -> Item {
    let (mut id, mut data) = (None, None);
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            return Item::Comment(comment.trim().to_owned());
        } else if let Some(retry) = line.strip_prefix("retry: ") {
            return Item::Retry(retry.parse().unwrap());
        } else if let Some(value) = line.strip_prefix("id: ") {
            id = Some(value.parse().unwrap());
        } else if let Some(value) = line.strip_prefix("data: ") {
            assert!(data.is_none(), "one data line per event: {block}");
            data = Some(serde_json::from_str(value).unwrap());
        } else {
            panic!("unexpected line {line:?} in {block:?}");
        }
    }
    Item::Event {
        id,
        data: data.expect("an event has data"),
    }
}

fn is_presence(frame: &Value) -> bool {
    matches!(
        frame["event"].as_str(),
        Some("presence-changed" | "user-online" | "user-offline")
    )
}

async fn open(api: &Api, token: &str) -> (EventStream, Option<u64>, Value) {
    let mut stream = EventStream::open(api.addr, &format!("/sse?token={token}"), &[])
        .await
        .unwrap_or_else(|refused| panic!("refused: {refused:?}"));
    let (id, welcome) = stream.welcome().await;
    (stream, id, welcome)
}

/// A request's target and headers, and the status and code of its refusal.
type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16, &'a str);

#[tokio::test]
async fn refusals_come_before_the_stream_as_http_errors_with_their_codes() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let account = unique("sse-refusals");
    let good = token(&account, "alice");
    server.publish(&account, None, "one", json!(1)).await;
    let bearer = format!("Bearer {good}");
    let cases: [Case; 7] = [
        ("/sse".into(), vec![], 401, "missing-token"),
        (
            "/sse?token=not-a-token".into(),
            vec![],
            401,
            "malformed-token",
        ),
        (
            format!("/sse?token={good}&since=x"),
            vec![],
            400,
            "invalid-since",
        ),
        (
            format!("/sse?token={good}"),
            vec![("Last-Event-ID", "-1")],
            400,
            "invalid-since",
        ),
        (
            format!("/sse?token={good}&since=99"),
            vec![],
            400,
            "since-in-future",
        ),
        (
            "/sse".into(),
            vec![("Last-Event-ID", "99"), ("Authorization", &bearer)],
            400,
            "since-in-future",
        ),
        (
            format!("/sse?token={good}"),
            vec![("Origin", "https://evil.example")],
            403,
            "origin-not-allowed",
        ),
    ];
    for (target, headers, status, code) in cases {
        let refused = EventStream::open(server.addr, &target, &headers)
            .await
            .err();
        let (got, body) = refused.unwrap_or_else(|| panic!("{target} was not refused"));
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{target}: {body}"
        );
    }
    // An empty Last-Event-ID is none: the query's resume point decides (here, one ahead).
    let target = format!("/sse?token={good}&since=99");
    let refused = EventStream::open(server.addr, &target, &[("Last-Event-ID", "")]).await;
    let (status, body) = refused.err().expect("refused");
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("since-in-future"))
    );
    // The header, for clients that can set one, and the query are both fine.
    let mut stream = EventStream::open(server.addr, "/sse", &[("Authorization", &bearer)])
        .await
        .unwrap();
    stream.welcome().await;
}

#[tokio::test]
async fn events_arrive_with_their_sequence_numbers_as_ids_and_ephemeral_ones_without() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.presence.grace = Duration::from_millis(50);
    let server = TestServer::start(config);
    let account = unique("sse-events");
    let before = server.publish(&account, None, "before", json!(0)).await;
    let (mut alice, id, welcome) = open(&server, &token(&account, "alice")).await;
    // A fresh session's welcome says where it stands, so a reconnect resumes from there.
    assert_eq!((id, &welcome["seq"]), (Some(before), &json!(before)));
    assert_eq!(welcome["account_id"], account.as_str());
    assert_eq!(
        welcome["session_id"].as_str().map(str::len),
        Some(16),
        "{welcome}"
    );

    for i in 1..=3 {
        let seq = server
            .publish(&account, None, "tick", json!({"i": i}))
            .await;
        let (id, frame) = alice.next_event().await;
        assert_eq!(id, Some(seq));
        assert_eq!(
            frame,
            json!({"type": "event", "seq": seq, "event": "tick", "data": {"i": i}})
        );
    }
    // Bob comes online: an ephemeral event, without an id.
    let (_bob, _) = server.connect(&token(&account, "bob")).await;
    let presence = loop {
        match alice.next_item().await.expect("the stream goes on") {
            Item::Event { id, data } if is_presence(&data) && data.to_string().contains("bob") => {
                break (id, data)
            }
            _ => {}
        }
    };
    assert_eq!(presence.0, None, "{presence:?}");
    assert!(presence.1.get("seq").is_none(), "{presence:?}");

    let metrics = reqwest::get(server.http_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchboard_sessions{") && l.contains(r#"transport="sse""#)),
        "{metrics}"
    );
}

#[tokio::test]
async fn last_event_id_resumes_after_the_stream_is_lost_with_nothing_lost_or_repeated() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let account = unique("sse-resume");
    let alice = token(&account, "alice");
    let (mut stream, _, _) = open(&server, &alice).await;
    let mut seen = Vec::new();
    for i in 0..3 {
        let seq = server.publish(&account, None, "tick", json!(i)).await;
        let (id, _) = stream.next_event().await;
        assert_eq!(id, Some(seq));
        seen.push(seq);
    }
    drop(stream);
    let mut published = seen.clone();
    for i in 3..6 {
        published.push(server.publish(&account, None, "tick", json!(i)).await);
    }
    // As a browser reconnects: the URL it was opened with (its `since` long stale), and the id
    // of the last event it received, which wins.
    let last = seen.last().unwrap().to_string();
    let target = format!("/sse?token={alice}&since={}", seen[0]);
    let mut stream = EventStream::open(server.addr, &target, &[("Last-Event-ID", &last)])
        .await
        .unwrap();
    let (id, welcome) = stream.welcome().await;
    assert_eq!((id, &welcome["resumed"]), (None, &json!(true)), "{welcome}");
    while seen.len() < published.len() {
        let (id, frame) = stream.next_event().await;
        assert_eq!(id, frame["seq"].as_u64());
        seen.push(id.unwrap());
    }
    let live = server.publish(&account, None, "live", json!(null)).await;
    assert_eq!(stream.next_event().await.0, Some(live));
    published.push(live);
    seen.push(live);
    assert_eq!(seen, published);
}

#[tokio::test]
async fn a_stream_gets_only_its_accounts_and_its_users_events() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let (account, other) = (unique("sse-mine"), unique("sse-other"));
    let (mut alice, _, _) = open(&server, &token(&account, "alice")).await;
    server.publish(&other, None, "theirs", json!(1)).await;
    server
        .publish(&account, Some("bob"), "bobs", json!(2))
        .await;
    let own = server
        .publish(&account, Some("alice"), "alices", json!(3))
        .await;
    let sentinel = server.sentinel(&account, None).await;
    assert_eq!(alice.next_event().await.0, Some(own));
    assert_eq!(alice.next_event().await.0, Some(sentinel));

    // The control API names its transport.
    let path = format!("/api/v1/accounts/{account}/sessions");
    let (status, body) = server.admin(Method::GET, &path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"][0]["transport"], json!("sse"), "{body}");
}

#[tokio::test]
async fn a_heartbeat_comment_comes_every_interval_and_a_reading_client_is_kept() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.heartbeat = switchboard::config::Heartbeat {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(600),
    };
    let server = TestServer::start(config);
    let account = unique("sse-heartbeat");
    let (mut stream, _, welcome) = open(&server, &token(&account, "alice")).await;
    assert_eq!(welcome["heartbeat_interval_ms"], 200);
    // Five pings: well past the timeout, and the client — which cannot answer — is still there,
    // because it takes what it is sent.
    let mut pings = 0;
    while pings < 5 {
        match stream.next_item().await.expect("the stream goes on") {
            Item::Comment(text) => {
                assert_eq!(text, "ping");
                pings += 1;
            }
            Item::Event { data, .. } => assert!(is_presence(&data), "{data}"),
            other => panic!("{other:?}"),
        }
    }
    let seq = server.publish(&account, None, "still", json!(null)).await;
    assert_eq!(stream.next_event().await.0, Some(seq));
}

/// A server with a small bound, bob (a WebSocket, watching presence) and carol, an event stream
/// with a small window that reads her welcome and nothing more: events are published until bob
/// sees carol's session end.
async fn stalled_until_ended(
    interval: Duration,
) -> (TestServer, String, crate::common::Client, EventStream) {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.max_queued_bytes = 128 << 10;
    config.max_publish_bytes = 1 << 20;
    config.presence.grace = Duration::from_millis(50);
    config.heartbeat.interval = interval;
    let server = TestServer::start(config);
    let account = unique("sse-slow");
    let (mut bob, _) = server.connect(&token(&account, "bob")).await;
    bob.watch_presence();
    let target = format!("/sse?token={}", token(&account, "carol"));
    let mut carol = EventStream::open_with(server.addr, &target, &[], Some(4096))
        .await
        .unwrap();
    carol.welcome().await;
    let pad = "x".repeat(16 << 10);
    for i in 0..2000 {
        let seq = server
            .publish(&account, None, "bulk", json!({"i": i, "pad": pad}))
            .await;
        let mut offline = false;
        loop {
            let frame = bob.next_json().await;
            offline |= went_offline(&frame, "carol");
            if frame["seq"] == seq {
                break;
            }
        }
        if offline {
            return (server, account, bob, carol);
        }
    }
    panic!("carol's session was never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_ended_at_the_bound_with_a_close_event() {
    let (server, account, mut bob, mut carol) = stalled_until_ended(Duration::from_secs(5)).await;
    // Carol reads again at once: what was queued for her, then why it ended.
    let close = carol.close().await;
    assert_eq!(
        close,
        json!({"type": "close", "code": 4001, "name": "slow-consumer", "reason": "slow consumer", "reconnect": true})
    );
    // Bob, of the same account, went on receiving throughout, and still does.
    let seq = server.publish(&account, None, "after", json!({})).await;
    assert_eq!(bob.next_event().await.0, seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_ended_stream_left_untaken_past_the_stall_limit_is_dropped_and_the_connection_cut()
{
    let interval = Duration::from_millis(500);
    let (_server, _, _, mut carol) = stalled_until_ended(interval).await;
    // Carol reads again only well past the stall limit (a heartbeat interval; a time that must
    // pass): she gets what the kernel and the HTTP layer held, not the rest, nor the close.
    tokio::time::sleep(interval * 4).await;
    while let Some(item) = carol.next_item().await {
        if let Item::Event { data, .. } = item {
            assert_ne!(data["type"], "close", "the rest was written after all");
        }
    }
    assert!(!carol.ended, "the stream was cut, not ended");
}

fn went_offline(frame: &Value, user: &str) -> bool {
    let data = &frame["data"];
    match frame["event"].as_str() {
        Some("user-offline") => data["user_id"] == user,
        Some("presence-changed") => data["offline"]
            .as_array()
            .is_some_and(|users| users.iter().any(|u| u == user)),
        _ => false,
    }
}

/// A token for `user` of `account` that expires `seconds` from now.
fn expiring_in(account: &str, user: &str, seconds: u64) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    common::sign(
        jsonwebtoken::Algorithm::HS256,
        &key,
        json!({ "sub": user, "account_id": account, "exp": now() + seconds }),
    )
}

async fn refresh(api: &Api, session: &str, token: &str) -> (u16, Value) {
    let path = format!("/api/v1/sessions/{session}/auth");
    api.as_user(token, Method::POST, &path, None).await
}

#[tokio::test]
async fn a_live_stream_takes_a_fresh_token_over_rest_and_outlives_the_first() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.token_refresh_lead = Duration::from_secs(2);
    config.heartbeat.interval = Duration::from_millis(200);
    let server = TestServer::start(config);
    let account = unique("sse-refresh");
    let first = expiring_in(&account, "alice", 3);
    let (mut stream, _, welcome) = open(&server, &first).await;
    let session = welcome["session_id"].as_str().unwrap().to_owned();
    let expires_at = welcome["token_expires_at"].as_u64().unwrap();
    let (_, warning) = stream.next_event().await;
    assert_eq!(
        warning,
        json!({"type": "token-expiring", "expires_at": expires_at})
    );

    // Another user's token, and an unknown session, are refused; the session is untouched.
    let (status, body) = refresh(&server, &session, &token(&account, "bob")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("token-mismatch"))
    );
    let (status, body) = refresh(&server, "0123456789abcdef", &token(&account, "alice")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not-found"))
    );
    let (status, body) = refresh(&server, &session, "not-a-token").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("malformed-token"))
    );

    let fresh = expiring_in(&account, "alice", 3600);
    let (status, answer) = refresh(&server, &session, &fresh).await;
    assert_eq!(
        (status, &answer["type"]),
        (200, &json!("authenticated")),
        "{answer}"
    );
    let (_, told) = stream.next_event().await;
    assert_eq!(told["type"], "authenticated");
    assert_eq!(told["expires_at"], answer["expires_at"]);
    // Past the first token's expiry, the stream still delivers. (A time that must pass.)
    tokio::time::sleep(Duration::from_secs(expires_at + 1 - now())).await;
    let seq = server.publish(&account, None, "later", json!(null)).await;
    assert_eq!(stream.next_event().await.0, Some(seq));
}

#[tokio::test]
async fn an_expired_token_without_a_refresh_ends_the_stream_with_4002() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.token_refresh_lead = Duration::from_secs(2);
    config.heartbeat.interval = Duration::from_millis(200);
    let server = TestServer::start(config);
    let account = unique("sse-expired");
    let (mut stream, _, _) = open(&server, &expiring_in(&account, "alice", 2)).await;
    let close = stream.close().await;
    assert_eq!(
        (close["code"].as_u64(), &close["reconnect"]),
        (Some(4002), &json!(false))
    );
}

#[tokio::test]
async fn a_user_past_the_sessions_cap_gets_a_close_event_4004() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.max_sessions_per_user = 1;
    let server = TestServer::start(config);
    let account = unique("sse-cap");
    let (_first, _) = server.connect(&token(&account, "alice")).await;
    let target = format!("/sse?token={}", token(&account, "alice"));
    let mut second = EventStream::open(server.addr, &target, &[]).await.unwrap();
    assert_eq!(second.next_item().await, Some(Item::Retry(2000)));
    let close = second.close().await;
    assert_eq!(
        (close["code"].as_u64(), close["name"].as_str()),
        (Some(4004), Some("too-many-sessions"))
    );
}

/// The server drops the stream (it is drained, then stopped); a client resumes on the next one
/// by `Last-Event-ID`.
#[tokio::test]
async fn a_drained_server_ends_streams_with_1001_and_they_resume_on_the_next_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let command = Switchboard::new().keys().in_dir(dir.path());
    let (mut process, api) = command.serve();
    let account = unique("sse-drain");
    let alice = token(&account, "alice");
    let (mut stream, _, _) = open(&api, &alice).await;
    let mut published = Vec::new();
    for i in 0..3 {
        published.push(api.publish(&account, None, "tick", json!(i)).await);
        assert_eq!(stream.next_event().await.0, published.last().copied());
    }
    process.signal("TERM");
    let close = stream.close().await;
    assert_eq!(
        (close["code"].as_u64(), &close["reconnect"]),
        (Some(1001), &json!(true))
    );
    assert!(process.exits_within(Duration::from_secs(10)).success());

    let (_next, api) = command.serve();
    for i in 3..6 {
        published.push(api.publish(&account, None, "tick", json!(i)).await);
    }
    let last = published[2].to_string();
    let target = format!("/sse?token={alice}");
    let mut stream = EventStream::open(api.addr, &target, &[("Last-Event-ID", &last)])
        .await
        .unwrap();
    stream.welcome().await;
    for seq in &published[3..] {
        assert_eq!(stream.next_event().await.0, Some(*seq));
    }
}
