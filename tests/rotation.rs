//! Tokens that rotate on every transport, under churn: a compressed soak. Tokens live 5 s (the
//! server warns 2 s before expiry); events are published every 400 ms for two minutes; one client per
//! transport — WebSocket (`auth` frame), Server-Sent Events (`POST /api/v1/sessions/{id}/auth`),
//! Socket.IO over a WebSocket (`auth` emit) and long-poll (each request carries a token fresh
//! enough) — drops its connection at random moments and comes back after a random pause,
//! sometimes longer than its token lives (it then gets a fresh token before it resumes). Every
//! client must receive every event exactly once, in order, and no session may end for an
//! expired or refused token.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::common::engine_io::EngineSocket;
use crate::common::{self, now, unique, Api, Client, Db, Received, TestServer, JWT_SECRET};
use crate::sse::{EventStream, Item};

const TOKEN_LIFE: u64 = 5;
const EVENTS: u64 = 300;
const EVERY: Duration = Duration::from_millis(400);

fn token_for(account: &str, user: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    common::sign(
        jsonwebtoken::Algorithm::HS256,
        &key,
        json!({ "sub": user, "account_id": account, "exp": now() + TOKEN_LIFE }),
    )
}

/// A small deterministic generator (xorshift), seeded per client: the run prints its seed.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// How long the next connection lasts: 1–4 s.
    fn connected(&mut self) -> Duration {
        Duration::from_millis(1000 + self.below(3000))
    }

    /// How long the client stays away: mostly briefly, one time in five past its token's life.
    fn away(&mut self) -> Duration {
        match self.below(5) {
            0 => Duration::from_millis(TOKEN_LIFE * 1000 + 500),
            _ => Duration::from_millis(self.below(500)),
        }
    }
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    seqs: Vec<u64>,
    /// Sessions the server ended for their token (4002, 4003).
    ended_for_token: usize,
    refreshed: usize,
    reconnects: usize,
}

impl Seen {
    fn last(&self) -> Option<u64> {
        self.seqs.last().copied()
    }

    fn event(&mut self, frame: &Value) {
        if let Some(seq) = frame["seq"].as_u64().filter(|_| frame["type"] == "event") {
            self.seqs.push(seq);
        }
    }
}

/// The client's token, fresh enough to connect with (a new one once it is about to expire).
struct Token {
    account: String,
    user: String,
    current: String,
    expires: u64,
}

impl Token {
    fn new(account: &str, user: &str) -> Self {
        Self {
            account: account.into(),
            user: user.into(),
            current: token_for(account, user),
            expires: now() + TOKEN_LIFE,
        }
    }

    fn fresh(&mut self) -> String {
        if now() + 1 >= self.expires {
            *self = Self::new(&self.account, &self.user);
        }
        self.current.clone()
    }

    fn renew(&mut self) -> String {
        *self = Self::new(&self.account, &self.user);
        self.current.clone()
    }
}

/// One client: what it saw, its token, and where it connects.
struct Soak {
    seen: Seen,
    token: Token,
    /// A Socket.IO client's `pid`, sent back to recover.
    pid: Option<Value>,
    api: Api,
    /// Told once the first session has said welcome: a fresh session gets what is published
    /// from then on, so the events start after every client has one.
    ready: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Tells the test that the client's first session has said welcome (once).
fn welcomed(ready: &mut Option<tokio::sync::oneshot::Sender<()>>) {
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
}

/// Runs `connection` (one connection's life, until the `Instant`) again and again, with pauses,
/// until the client has every event up to the last one published.
async fn churn<F, Fut>(
    mut dice: Dice,
    mut done: watch::Receiver<Option<u64>>,
    mut soak: Soak,
    connection: F,
) -> Seen
where
    F: Fn(Soak, Instant) -> Fut,
    Fut: std::future::Future<Output = Soak>,
{
    loop {
        let until = Instant::now() + dice.connected();
        soak = connection(soak, until).await;
        let last = *done.borrow_and_update();
        if last.is_some() && soak.seen.last() >= last {
            return soak.seen;
        }
        soak.seen.reconnects += 1;
        tokio::time::sleep(dice.away()).await;
    }
}

async fn websocket(mut soak: Soak, until: Instant) -> Soak {
    let (api, token, seen) = (&soak.api, &mut soak.token, &mut soak.seen);
    let mut url = format!("{}?token={}", api.ws_url(), token.fresh());
    if let Some(last) = seen.last() {
        url.push_str(&format!("&since={last}"));
    }
    let mut client: Client = api.try_connect(url).await.expect("a WebSocket");
    loop {
        let wait = until.saturating_duration_since(Instant::now());
        match client.receive(wait).await {
            Received::TimedOut => break, // dropped abruptly
            Received::Closed(frame) => {
                let code = frame.map(|f| u16::from(f.code));
                if matches!(code, Some(4002 | 4003)) {
                    seen.ended_for_token += 1;
                }
                break;
            }
            Received::Json(frame) if frame["type"] == "token-expiring" => {
                let auth = json!({"type": "auth", "token": token.renew()});
                client.send_text(&auth.to_string()).await;
            }
            Received::Json(frame) if frame["type"] == "authenticated" => seen.refreshed += 1,
            Received::Json(frame) if frame["type"] == "welcome" => welcomed(&mut soak.ready),
            Received::Json(frame) => seen.event(&frame),
        }
    }
    soak
}

async fn event_stream(mut soak: Soak, until: Instant) -> Soak {
    let (api, token, seen) = (&soak.api, &mut soak.token, &mut soak.seen);
    let target = format!("/sse?token={}", token.fresh());
    let last = seen.last().map(|s| s.to_string());
    let headers: Vec<(&str, &str)> = last.iter().map(|l| ("Last-Event-ID", l.as_str())).collect();
    let mut stream = EventStream::open(api.addr, &target, &headers)
        .await
        .expect("an event stream");
    let mut session = String::new();
    loop {
        let item = match tokio::time::timeout_at(until, stream.next_item()).await {
            Err(_) | Ok(None) => break, // dropped abruptly, or ended
            Ok(Some(item)) => item,
        };
        let Item::Event { data: frame, .. } = item else {
            continue;
        };
        match frame["type"].as_str() {
            Some("welcome") => {
                session = frame["session_id"].as_str().unwrap().to_owned();
                welcomed(&mut soak.ready);
            }
            Some("token-expiring") => {
                let path = format!("/api/v1/sessions/{session}/auth");
                let (status, _) = api
                    .as_user(&token.renew(), reqwest::Method::POST, &path, None)
                    .await;
                assert_eq!(status, 200);
            }
            Some("authenticated") => seen.refreshed += 1,
            Some("close") => {
                if matches!(frame["code"].as_u64(), Some(4002 | 4003)) {
                    seen.ended_for_token += 1;
                }
            }
            _ => seen.event(&frame),
        }
    }
    soak
}

async fn socket_io(mut soak: Soak, until: Instant) -> Soak {
    let (api, token, seen) = (&soak.api, &mut soak.token, &mut soak.seen);
    let mut auth = json!({ "token": token.fresh() });
    if let (Some(pid), Some(last)) = (soak.pid.as_ref(), seen.last()) {
        auth["pid"] = pid.clone();
        auth["offset"] = json!(last.to_string());
    }
    let (mut socket, connected) = EngineSocket::connect(api, &auth).await;
    soak.pid = Some(connected["pid"].clone());
    welcomed(&mut soak.ready);
    loop {
        let wait = until.saturating_duration_since(Instant::now());
        let Ok(packet) = tokio::time::timeout(wait, socket.next_packet()).await else {
            break; // dropped abruptly
        };
        let Some(body) = packet.strip_prefix("42") else {
            if packet.starts_with("43") {
                seen.refreshed += 1; // the answer to our `auth`
            }
            continue;
        };
        let args: Vec<Value> = serde_json::from_str(body).unwrap();
        match args[0].as_str() {
            Some("token-expiring") => {
                let auth = json!(["auth", { "token": token.renew() }]);
                socket.send(&format!("421{auth}")).await;
            }
            Some("closing") => {
                if matches!(args[1]["code"].as_u64(), Some(4002 | 4003)) {
                    seen.ended_for_token += 1;
                }
                break;
            }
            Some("tick") => seen.seqs.push(args[2].as_str().unwrap().parse().unwrap()),
            _ => {}
        }
    }
    soak
}

async fn long_poll(mut soak: Soak, until: Instant) -> Soak {
    // It asks from the account's start (0) the first time.
    welcomed(&mut soak.ready);
    let (api, token, seen) = (&soak.api, &mut soak.token, &mut soak.seen);
    let mut since = seen.last().unwrap_or(0);
    while Instant::now() < until {
        let path = format!("/api/v1/events?since={since}&timeout=1");
        let (status, page) = api
            .as_user(&token.fresh(), reqwest::Method::GET, &path, None)
            .await;
        if status == 401 {
            seen.ended_for_token += 1;
            continue;
        }
        assert_eq!(status, 200, "{page}");
        for frame in page["events"].as_array().unwrap() {
            seen.event(frame);
        }
        since = page["since"].as_u64().unwrap();
    }
    soak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_five_seconds_rotate_on_every_transport_through_random_drops_losing_nothing() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.token_refresh_lead = Duration::from_secs(2);
    config.heartbeat.interval = Duration::from_millis(250);
    let server = TestServer::start(config);
    let account = unique("rotation");
    let seed = now() | 1;
    eprintln!("rotation soak: seed {seed}");
    let (done, finished) = watch::channel(None);
    let mut welcomes = Vec::new();
    let mut soak = |user: &str| {
        let (ready, welcomed) = tokio::sync::oneshot::channel();
        welcomes.push(welcomed);
        Soak {
            seen: Seen::default(),
            token: Token::new(&account, user),
            pid: None,
            api: Api { addr: server.addr },
            ready: Some(ready),
        }
    };
    let dice = |k: u64| Dice(seed.wrapping_mul(k * 2 + 1) | 1);
    let clients = [
        (
            "websocket",
            tokio::spawn(churn(dice(1), finished.clone(), soak("ws"), websocket)),
        ),
        (
            "sse",
            tokio::spawn(churn(dice(2), finished.clone(), soak("sse"), event_stream)),
        ),
        (
            "socket.io",
            tokio::spawn(churn(dice(3), finished.clone(), soak("sio"), socket_io)),
        ),
        (
            "long-poll",
            tokio::spawn(churn(dice(4), finished.clone(), soak("poll"), long_poll)),
        ),
    ];
    for welcomed in welcomes {
        welcomed.await.expect("every client connects");
    }
    let mut published = Vec::new();
    let mut tick = tokio::time::interval(EVERY);
    for i in 0..EVENTS {
        tick.tick().await;
        published.push(server.publish(&account, None, "tick", json!(i)).await);
    }
    done.send(published.last().copied()).unwrap();
    for (transport, client) in clients {
        let seen = tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .unwrap_or_else(|_| panic!("{transport}: not every event came"))
            .unwrap();
        eprintln!(
            "{transport}: {} events, {} reconnects, {} live refreshes",
            seen.seqs.len(),
            seen.reconnects,
            seen.refreshed
        );
        let missing: Vec<&u64> = published
            .iter()
            .filter(|s| !seen.seqs.contains(s))
            .collect();
        assert_eq!(
            seen.seqs, published,
            "{transport}: lost {missing:?}, or repeated, or out of order"
        );
        assert_eq!(
            seen.ended_for_token, 0,
            "{transport}: sessions ended for their token"
        );
        if transport != "long-poll" {
            assert!(seen.refreshed > 0, "{transport}: no live refresh happened");
        }
    }
}
