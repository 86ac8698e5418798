//! The one place tests start servers: a real Switchboard on an ephemeral port, in its own thread
//! and actix System, stopped when dropped; plus real WebSocket and HTTP clients.

#![allow(dead_code)]

pub mod engine_io;
pub mod process;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use switchboard::config::{
    Config, Database, EdgeLimits, Heartbeat, JwtConfig, JwtKey, OutboundConfig, Presence,
    Retention, Scheduling, Secret, WebhookConfig,
};

pub const JWT_SECRET: &str = "test-jwt-secret-that-is-32-bytes-or-more";
pub const API_KEY: &str = "test-api-key-0123456789";
/// Also accepted: a key being rotated out.
pub const PREVIOUS_API_KEY: &str = "test-previous-api-key-9876543210";
pub const FACEBOOK_VERIFY_TOKEN: &str = "test-verify-token";
/// Environment variable naming a PostgreSQL database for the `postgres` variants of the tests.
pub const POSTGRES_ENV: &str = "SWITCHBOARD_TEST_DATABASE_URL";
/// How long a test waits for a frame it expects.
pub const WAIT: Duration = Duration::from_secs(10);
/// How often [`eventually`] asks again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Asks `check` until it answers `Ok`, for at most `wait`: for what a test can only see by asking
/// (an endpoint, a counter of its own), the wait ends as soon as it holds. Fails the test naming
/// `what` and the last answer.
pub async fn eventually<T, E, F, Fut>(what: &str, wait: Duration, mut check: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match check().await {
            Ok(done) => return done,
            Err(last) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {wait:?}; last {last:?}"
            ),
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A database for a test: a fresh SQLite file, or the PostgreSQL database from [`POSTGRES_ENV`]
/// (shared, so tests there use account ids of their own).
pub struct Db {
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = dir.path().join("switchboard.db").display().to_string();
        Self {
            url,
            _dir: Some(dir),
        }
    }

    /// The PostgreSQL database named by [`POSTGRES_ENV`]. The tests that use it are built as
    /// ignored unless the variable was set at build time (`build.rs`); run anyway (with
    /// `--include-ignored`) without it, they fail rather than pass having done nothing.
    pub fn postgres() -> Self {
        match std::env::var(POSTGRES_ENV) {
            Ok(url) if !url.is_empty() => Self { url, _dir: None },
            _ => panic!(
                "this test needs PostgreSQL: set {POSTGRES_ENV} (and build the tests with it)"
            ),
        }
    }

    /// A database at `url`, which the test owns.
    pub fn with_url(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            _dir: None,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Runs the test body once on SQLite and once on PostgreSQL. The PostgreSQL variant is ignored
/// (and listed so by `cargo test`) unless [`POSTGRES_ENV`] was set when the tests were built.
#[macro_export]
macro_rules! on_each_backend {
    ($(async fn $name:ident($db:ident) $body:block)*) => {$(
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let $db = $crate::common::Db::sqlite();
                $body
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(switchboard_postgres),
                ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
            )]
            async fn postgres() {
                let $db = $crate::common::Db::postgres();
                $body
            }
        }
    )*};
}

/// An account id no other test (or earlier run on a shared database) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{nanos:x}-{:x}", rand_u32())
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    u32::from_le_bytes(b)
}

/// The configuration tests start from: HS256 with [`JWT_SECRET`]; heartbeats slow enough that a
/// client busy elsewhere in a test is not dropped (the heartbeat tests set their own).
pub fn config(db: &Db) -> Config {
    Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        database: Database::parse(db.url()).unwrap(),
        db_pool_size: 4,
        jwt: JwtConfig {
            key: JwtKey::Secret(Secret::new(JWT_SECRET.into())),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(0),
        },
        api_key: Secret::new(API_KEY.into()),
        previous_api_keys: vec![Secret::new(PREVIOUS_API_KEY.into())],
        heartbeat: Heartbeat {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        },
        max_frame_bytes: 64 * 1024,
        max_publish_bytes: 256 * 1024,
        workers: Some(1),
        // The binary sets the policy for its process (`scheduling::apply`); an in-process server
        // runs in the test's.
        scheduling: Scheduling::Normal,
        webhooks: WebhookConfig {
            facebook_verify_token: Some(Secret::new(FACEBOOK_VERIFY_TOKEN.into())),
            max_body_bytes: 64 * 1024,
            tolerance: Duration::from_secs(300),
        },
        cluster: None,
        outbox: None,
        publish_queue: switchboard::config::PublishQueue {
            max_publishes: 4096,
            max_bytes: 64 * 1024 * 1024,
        },
        drain_period: Duration::from_millis(500),
        outbound: OutboundConfig {
            max_attempts: 3,
            retry_base: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
            lease: Duration::from_secs(6),
            // Tests on PostgreSQL share one database, where every test's server would be a node
            // of one cluster for outbound deliveries, sending other tests' replies with its own
            // settings: a server looks for due deliveries at start only, unless a test says so.
            scan_interval: Duration::from_secs(3600),
            // The receivers tests start are on loopback.
            allow_private: true,
        },
        presence: Presence {
            grace: Duration::from_millis(300),
            broadcast_max: 1000,
        },
        retention: Retention {
            max_age: Duration::from_secs(3600),
            max_events: 100_000,
            interval: Duration::from_secs(60),
            idempotency_window: Duration::from_secs(3600),
        },
        max_queued_bytes: 1024 * 1024,
        long_poll_max: Duration::from_secs(30),
        token_refresh_lead: Duration::from_secs(60),
        frames_per_second: std::num::NonZeroU32::new(1000).unwrap(),
        // The default: the tests of the limit count on it.
        sends_per_second: std::num::NonZeroU32::new(10).unwrap(),
        max_sessions_per_user: 50,
        auth_failures_per_minute: std::num::NonZeroU32::new(10_000).unwrap(),
        handshakes: switchboard::config::Handshakes {
            timeout: Duration::from_secs(10),
            max_per_address: 10_000,
            max: 10_000,
        },
        allowed_origins: switchboard::config::Origins::Listed(vec![
            "https://app.example.com".into()
        ]),
        edge: EdgeLimits {
            body_timeout: Duration::from_secs(20),
            body_min_rate: 1024,
            max_connections_per_address: 1024,
            max_pending_connections: 4096,
        },
        metrics_token: None,
        presence_webhook: None,
        dev_mode: None,
        demo: switchboard::config::Demo::Off,
    }
}

pub struct TestServer {
    pub api: Api,
    /// The engine's broker, for tests that reach past the API (making a room fail).
    pub broker: actix::Addr<switchboard::actors::broker::Broker>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(config: Config) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let running = switchboard::server::start(config)
                    .await
                    .expect("server starts");
                tx.send((running.addr, running.server.handle(), running.broker()))
                    .unwrap();
                let _ = running.server.await;
            });
        });
        let (addr, handle, broker) = rx.recv().expect("server thread reports its address");
        Self {
            api: Api { addr },
            broker,
            handle,
            thread: Some(thread),
        }
    }

    pub fn on(db: &Db) -> Self {
        Self::start(config(db))
    }
}

impl std::ops::Deref for TestServer {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A server's API, as its clients reach it.
pub struct Api {
    pub addr: SocketAddr,
}

impl Api {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Publishes with the API key; returns the status and the JSON body.
    pub async fn publish_raw(&self, auth: Option<&str>, body: String) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(self.http_url("/api/v1/publish"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.expect("publish request");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Publishes the `sentinel` event for `user` of `account` (for the whole account without one);
    /// answers its sequence number, for [`Client::expect_sentinel`].
    pub async fn sentinel(&self, account: &str, user: Option<&str>) -> u64 {
        self.publish(account, user, "sentinel", Value::Null).await
    }

    /// Publishes an event and returns its sequence number.
    pub async fn publish(
        &self,
        account: &str,
        user: Option<&str>,
        event: &str,
        data: Value,
    ) -> u64 {
        let mut body = json!({ "account_id": account, "event": event, "data": data });
        if let Some(user) = user {
            body["user_id"] = json!(user);
        }
        let (status, body) = self
            .publish_raw(Some(&format!("Bearer {API_KEY}")), body.to_string())
            .await;
        assert_eq!(status, 200, "publish failed: {body}");
        body["seq"].as_u64().expect("seq in publish answer")
    }

    /// Connects with `?token=` and returns the client after its welcome frame.
    pub async fn connect(&self, token: &str) -> (Client, Value) {
        let mut client = self
            .try_connect(format!("{}?token={token}", self.ws_url()))
            .await
            .unwrap_or_else(|(status, body)| panic!("connect refused: {status} {body}"));
        let welcome = client.next_json().await;
        assert_eq!(welcome["type"], "welcome", "first frame: {welcome}");
        (client, welcome)
    }

    /// Reconnects with `?since=` and returns the client after its welcome frame.
    pub async fn resume(&self, token: &str, since: u64) -> (Client, Value) {
        let mut client = self
            .try_connect(format!("{}?token={token}&since={since}", self.ws_url()))
            .await
            .unwrap_or_else(|(status, body)| panic!("resume refused: {status} {body}"));
        let welcome = client.next_json().await;
        assert_eq!(welcome["type"], "welcome", "first frame: {welcome}");
        (client, welcome)
    }

    /// Attempts a WebSocket handshake; a refusal comes back as (status, JSON body).
    pub async fn try_connect(
        &self,
        request: impl IntoClientRequest + Unpin,
    ) -> Result<Client, (u16, Value)> {
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(Client {
                ws,
                presence: false,
            }),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err((status, body))
            }
            Err(e) => panic!("handshake failed below HTTP: {e}"),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An HS256 token signed with [`JWT_SECRET`], valid for an hour.
pub fn token(account: &str, user: &str) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        json!({ "sub": user, "account_id": account, "exp": now() + 3600 }),
    )
}

pub fn sign(algorithm: Algorithm, key: &EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), &claims, key).expect("sign token")
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A real WebSocket client. Presence events (`user-online`, `user-offline`) come and go as
/// other tests' clients connect; they are skipped unless [`Client::watch_presence`] was called.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    presence: bool,
}

/// What arrived on a connection, WebSocket pings and pongs left out.
#[derive(Debug)]
pub enum Received {
    Json(Value),
    Closed(Option<CloseFrame>),
    TimedOut,
}

fn is_presence(frame: &Value) -> bool {
    frame["type"] == "event"
        && frame.get("seq").is_none()
        && matches!(
            frame["event"].as_str(),
            Some("user-online" | "user-offline" | "presence-changed")
        )
}

impl Client {
    /// From now on, presence events are returned like any other frame.
    pub fn watch_presence(&mut self) {
        self.presence = true;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("send text frame");
    }

    /// Sends text frames in one write, so that the server reads them together (pipelined).
    pub async fn send_texts(&mut self, texts: &[&str]) {
        for text in texts {
            self.ws
                .feed(Message::text(*text))
                .await
                .expect("queue text frame");
        }
        self.ws.flush().await.expect("send text frames");
    }

    pub async fn send(&mut self, message: Message) {
        self.ws.send(message).await.expect("send frame");
    }

    /// The next text frame or close within `wait` (answering pings as it reads).
    pub async fn receive(&mut self, wait: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Received::TimedOut,
                Ok(None) => return Received::Closed(None),
                Ok(Some(Err(e))) => {
                    eprintln!("websocket error: {e}");
                    return Received::Closed(None);
                }
                Ok(Some(Ok(Message::Text(text)))) => {
                    let value: Value = serde_json::from_str(&text).expect("server frames are JSON");
                    if self.presence || !is_presence(&value) {
                        return Received::Json(value);
                    }
                }
                Ok(Some(Ok(Message::Close(frame)))) => return Received::Closed(frame),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next JSON frame; fails the test on close or after [`WAIT`].
    pub async fn next_json(&mut self) -> Value {
        match self.receive(WAIT).await {
            Received::Json(value) => value,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next `event` frame, as (seq, event name, data).
    pub async fn next_event(&mut self) -> (u64, String, Value) {
        let frame = self.next_json().await;
        assert_eq!(frame["type"], "event", "expected an event: {frame}");
        (
            frame["seq"].as_u64().unwrap(),
            frame["event"].as_str().unwrap().to_owned(),
            frame["data"].clone(),
        )
    }

    /// Asserts that the next frame is the sentinel event `seq` ([`Api::sentinel`]): nothing came
    /// before it. Whatever a test means did not reach this client was caused before the sentinel
    /// was published, and a room hands a session its frames in order, so it would have come
    /// first: "nothing else arrived" without waiting out a fixed silence.
    pub async fn expect_sentinel(&mut self, seq: u64) {
        let frame = self.next_json().await;
        let sentinel = json!({"type": "event", "seq": seq, "event": "sentinel", "data": null});
        assert_eq!(frame, sentinel, "expected nothing before the sentinel");
    }

    /// Asserts that no frame arrives for `wait`: only for what a timer would send (presence once
    /// its grace is over), where a sentinel published now would come first.
    pub async fn expect_silence(&mut self, wait: Duration) {
        match self.receive(wait).await {
            Received::TimedOut => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Waits for the server to close the connection; returns the close code.
    pub async fn expect_close(&mut self) -> u16 {
        match self.receive(WAIT).await {
            Received::Closed(Some(frame)) => u16::from(frame.code),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A WebSocket client written by hand over TCP that never answers pings — what a dead tab or a
/// frozen laptop looks like to the server. (tungstenite always answers pings when it reads.)
pub struct SilentClient {
    stream: TcpStream,
    buffer: Vec<u8>,
}

/// A frame as the silent client sees it: opcode and payload.
pub type RawFrame = (u8, Vec<u8>);

impl SilentClient {
    pub async fn connect(addr: SocketAddr, token: &str) -> Self {
        Self::connect_sending(addr, token, &[]).await
    }

    /// Connects with `early` (client frames, masked) sent in the same write as the handshake,
    /// before the server has answered it.
    pub async fn connect_sending(addr: SocketAddr, token: &str, early: &[u8]) -> Self {
        use tokio::io::AsyncWriteExt;
        let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
        let mut request = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes();
        request.extend_from_slice(early);
        stream.write_all(&request).await.unwrap();
        let mut client = Self {
            stream,
            buffer: Vec::new(),
        };
        let head_end = loop {
            if let Some(i) = client.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            client.fill().await;
        };
        let head = String::from_utf8_lossy(&client.buffer[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        client.buffer.drain(..head_end);
        client
    }

    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("server sent nothing")
            .unwrap_or(0);
        self.buffer.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next frame (server frames are unmasked), or `None` once the connection is closed.
    pub async fn next_frame(&mut self) -> Option<RawFrame> {
        loop {
            if self.buffer.len() >= 2 {
                let opcode = self.buffer[0] & 0x0f;
                let (len, header) = match self.buffer[1] & 0x7f {
                    126 if self.buffer.len() >= 4 => (
                        u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize,
                        4,
                    ),
                    127 if self.buffer.len() >= 10 => {
                        let bytes: [u8; 8] = self.buffer[2..10].try_into().unwrap();
                        (u64::from_be_bytes(bytes) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buffer.len() >= header + len {
                    let payload = self.buffer[header..header + len].to_vec();
                    self.buffer.drain(..header + len);
                    return Some((opcode, payload));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }
}

/// HTTP helpers for the admin, user and webhook endpoints.
impl Api {
    /// A request with the server API key.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.request(method, path, Some(API_KEY.to_owned()), body)
            .await
    }

    /// A request as a user (JWT).
    pub async fn as_user(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.request(method, path, Some(token.to_owned()), body)
            .await
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<String>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = reqwest::Client::new().request(method, self.http_url(path));
        if let Some(bearer) = bearer {
            request = request.header("authorization", format!("Bearer {bearer}"));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the pruner has let go of the events after `since` the user holding `token`
    /// could read: the long-poll from there answers 410.
    pub async fn until_pruned(&self, token: &str, since: u64) {
        let path = format!("/api/v1/events?since={since}&timeout=0");
        eventually("the pruner ran", WAIT, || async {
            match self.as_user(token, reqwest::Method::GET, &path, None).await {
                (410, _) => Ok(()),
                other => Err(other),
            }
        })
        .await
    }

    /// The ids of a conversation's messages as the user sees them listed (newest first), read
    /// page by page, `limit` a page.
    pub async fn message_ids(&self, token: &str, conversation: &str, limit: u32) -> Vec<String> {
        let mut ids = Vec::new();
        let mut cursor = String::new();
        loop {
            let path =
                format!("/api/v1/conversations/{conversation}/messages?limit={limit}{cursor}");
            let (status, page) = self.as_user(token, reqwest::Method::GET, &path, None).await;
            assert_eq!(status, 200, "{page}");
            for message in page["messages"].as_array().unwrap() {
                ids.push(message["id"].as_str().unwrap().to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return ids,
            }
        }
    }

    /// Posts a raw webhook body with the given headers.
    pub async fn webhook(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(self.http_url(path))
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.expect("webhook request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates an integration through the admin API; returns its JSON (with any secrets).
    pub async fn integration(&self, body: Value) -> Value {
        let (status, created) = self
            .admin(reqwest::Method::POST, "/api/v1/integrations", Some(body))
            .await;
        assert_eq!(status, 201, "create integration: {created}");
        created
    }
}

/// Outbound replies, as a test drives them: a contact writes in through a generic integration, a
/// user answers, and the answer's delivery is watched through the admin API.
impl Api {
    /// A message from `contact` to the generic `integration` (its JSON as created, with its
    /// secret), signed as the source signs it; `fields` join `contact_id` in the message's
    /// `data` (its `text`, a `sent_at`).
    pub async fn message_from(&self, integration: &Value, contact: &str, fields: Value) {
        let (secret, path) = (
            integration["secret"].as_str().unwrap(),
            integration["webhook_path"].as_str().unwrap(),
        );
        let mut data = fields;
        data["contact_id"] = json!(contact);
        let body = json!({"type": "message", "data": data}).to_string();
        let (id, ts) = (unique("wh"), now() as i64);
        let headers = [
            ("webhook-id", id.clone()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sign::standard(secret, &id, ts, &body)),
        ];
        let (status, answer) = self.webhook(path, &headers, &body).await;
        assert_eq!(status, 200, "{answer}");
    }

    /// The id of `account`'s conversation with the latest activity.
    pub async fn newest_conversation(&self, account: &str) -> String {
        let (_, list) = self
            .as_user(
                &token(account, "agent"),
                reqwest::Method::GET,
                "/api/v1/conversations?limit=1",
                None,
            )
            .await;
        list["conversations"][0]["id"].as_str().unwrap().to_owned()
    }

    /// The conversation `contact` starts by writing to the generic `integration`; returns the
    /// conversation's id.
    pub async fn conversation_from(&self, integration: &Value, contact: &str) -> String {
        self.message_from(integration, contact, json!({"text": "hello"}))
            .await;
        let account = integration["account_id"].as_str().unwrap();
        self.newest_conversation(account).await
    }

    /// Replies as `user` of `account`; returns the message.
    pub async fn reply(&self, account: &str, user: &str, conversation: &str, text: &str) -> Value {
        let (status, message) = self
            .as_user(
                &token(account, user),
                reqwest::Method::POST,
                &format!("/api/v1/conversations/{conversation}/messages"),
                Some(json!({ "text": text })),
            )
            .await;
        assert_eq!(status, 201, "{message}");
        message
    }

    /// The integration's deliveries, newest first.
    pub async fn deliveries(&self, integration_id: &str) -> Vec<Value> {
        let path = format!("/api/v1/integrations/{integration_id}/deliveries");
        let (status, body) = self.admin(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{body}");
        body["deliveries"].as_array().unwrap().clone()
    }

    /// Waits (up to `wait`) until the delivery of `message_id` is `status`; returns it.
    pub async fn delivery_when(
        &self,
        integration_id: &str,
        message_id: &str,
        status: &str,
        wait: Duration,
    ) -> Value {
        let what = format!("the delivery is {status}");
        eventually(&what, wait, || async {
            let found = self
                .deliveries(integration_id)
                .await
                .into_iter()
                .find(|d| d["message_id"] == message_id);
            match found {
                Some(delivery) if delivery["status"] == status => Ok(delivery),
                other => Err(other),
            }
        })
        .await
    }
}

/// Signatures as the providers compute them, written here independently of the server's code.
pub mod sign {
    use base64::Engine;
    use hmac::{Mac, SimpleHmac};
    use sha2::{Digest, Sha256};

    fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut mac = SimpleHmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// `X-Hub-Signature-256`.
    pub fn facebook(app_secret: &str, body: &str) -> String {
        format!(
            "sha256={}",
            hex::encode(hmac(app_secret.as_bytes(), body.as_bytes()))
        )
    }

    /// `X-ZEvent-Signature`.
    pub fn zalo(app_id: &str, body: &str, timestamp: &str, secret: &str) -> String {
        let digest = Sha256::digest(format!("{app_id}{body}{timestamp}{secret}"));
        format!("mac={}", hex::encode(digest))
    }

    /// `webhook-signature` for a `whsec_…` secret.
    pub fn standard(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
        let mac = hmac(&key, format!("{id}.{timestamp}.{body}").as_bytes());
        format!("v1,{}", b64.encode(mac))
    }
}

/// A loopback HTTP server standing in for the application's backend: records what it receives
/// and answers with the statuses it is given (the last one repeats).
pub struct Receiver {
    pub url: String,
    pub received:
        std::sync::Arc<std::sync::Mutex<Vec<(actix_web::http::header::HeaderMap, String)>>>,
    /// Each request's method and path, in the order they came.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    pub fn start(statuses: Vec<u16>) -> Self {
        Self::answering(statuses, "receiver says so")
    }

    /// Answers with `body`; a redirect status sends the client to another path of its own.
    pub fn answering(statuses: Vec<u16>, body: &str) -> Self {
        use std::sync::{Arc, Mutex};
        let received = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (log, paths, body) = (received.clone(), requests.clone(), body.to_owned());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = actix_web::HttpServer::new(move || {
                    let (log, paths) = (log.clone(), paths.clone());
                    let (statuses, body) = (statuses.clone(), body.clone());
                    actix_web::App::new().default_service(actix_web::web::to(
                        move |req: actix_web::HttpRequest, text: String| {
                            paths
                                .lock()
                                .unwrap()
                                .push(format!("{} {}", req.method(), req.path()));
                            let mut log = log.lock().unwrap();
                            log.push((req.headers().clone(), text));
                            let status = statuses[(log.len() - 1).min(statuses.len() - 1)];
                            let status = actix_web::http::StatusCode::from_u16(status).unwrap();
                            let mut answer = actix_web::HttpResponse::build(status);
                            if status.is_redirection() {
                                answer.insert_header(("location", "/internal/admin"));
                            }
                            let answer = answer.body(body.clone());
                            async move { answer }
                        },
                    ))
                })
                .workers(1)
                .bind("127.0.0.1:0")
                .unwrap();
                let addr = server.addrs()[0];
                let server = server.run();
                tx.send((addr, server.handle())).unwrap();
                let _ = server.await;
            });
        });
        let (addr, handle) = rx.recv().unwrap();
        Self {
            url: format!("http://{addr}/hooks/switchboard"),
            received,
            requests,
            handle,
            thread: Some(thread),
        }
    }

    /// Waits until `n` requests have arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<(actix_web::http::header::HeaderMap, String)> {
        eventually(&format!("the receiver got {n}"), WAIT, || async {
            let got = self.received.lock().unwrap().clone();
            match got.len() >= n {
                true => Ok(got),
                false => Err(got.len()),
            }
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
