//! The abuse benchmark's attacker: one client address that, until a deadline, does at full speed
//! what costs a server most to take from someone without a credential — refused
//! Socket.IO CONNECTs on a polling link (many `40` packets, bad tokens), forged webhooks (a
//! generic one with many signature entries and a large body, an unsigned 1 MiB Facebook one),
//! slow request bodies, unauthenticated Engine.IO links and WebSockets held open, and HTTP/1.1
//! requests pipelined without reading an answer.
//!
//! Each generator is a loop bounded by the deadline and by a count, and keeps to a fixed number
//! of connections; it tallies what it tried and what the server refused. Uses only sockets and
//! the server's public paths; loopback only (the caller checks the address).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

/// Lowers the calling (attacker's) thread to nice 9: it shares a core with the sessions
/// that measure latency, where a real attacker has a machine of its own, so the latency measured
/// is the server's rather than the tool's own threads contending; not to idle, which a busy
/// machine (a test suite beside it) would starve of any turn at all.
fn yield_to_the_clients() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadSchedulePolicy,
        };
        use thread_priority::ThreadPriority;
        // The library's scale for normal policies: 0 is nice 19, 48 is nice 0.
        const NICE_TEN: u8 = 24;
        let lower = ThreadPriority::Crossplatform(NICE_TEN.try_into().expect("in 0–99"));
        let normal = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);
        if let Err(e) = set_thread_priority_and_policy(thread_native_id(), lower, normal) {
            log::warn!("abuse benchmark: the attacker keeps its priority ({e})");
        }
    }
}

/// No generator repeats its step more often than this, however fast the server refuses.
const MAX_STEPS: u64 = 1_000_000;
/// Slow bodies trickling at once.
const SLOW_BODIES: usize = 300;
/// Unauthenticated Socket.IO WebSockets held at once.
const HELD_WEBSOCKETS: usize = 200;
/// Connections pipelining at once.
const PIPELINING: usize = 10;
/// Pipelined requests written per connection.
const PIPELINED_REQUESTS: usize = 20_000;
/// How long a pipelining connection stays once its requests are written or no longer taken.
const STAY: Duration = Duration::from_secs(5);
/// A forged webhook's body: the largest the server takes by default.
const WEBHOOK_BODY_BYTES: usize = 1 << 20;
/// Signature entries in a forged generic webhook (the server reads at most 8).
const SIGNATURE_ENTRIES: usize = 500;
/// `40` packets in one refused POST.
const CONNECT_PACKETS: usize = 20_000;

/// What one generator did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    pub kind: &'static str,
    /// Requests sent (or connections opened, for those that hold connections).
    pub attempts: u64,
    /// Of those, the ones the server refused: answered with an error status, or (connections
    /// held open) closed by the server before the end.
    pub refused: u64,
    pub bytes_sent: u64,
}

impl Tally {
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            ..Self::default()
        }
    }
}

/// How a held connection ended.
struct Ended {
    sent: u64,
    /// By the server (an answer, a close), not by the attacker or the deadline.
    refused: bool,
}

/// The attacks, each run by one generator (`--attack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Refused Socket.IO CONNECTs on polling links.
    Connects,
    /// Forged generic and Facebook webhooks of 1 MiB.
    Webhooks,
    /// Request bodies a byte every 2 s.
    SlowBodies,
    /// Engine.IO polling links never connected.
    Links,
    /// Socket.IO WebSockets never connected.
    Websockets,
    /// HTTP/1.1 requests pipelined, answers unread.
    Pipelined,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Connects,
        Kind::Webhooks,
        Kind::SlowBodies,
        Kind::Links,
        Kind::Websockets,
        Kind::Pipelined,
    ];
}

/// Where the attack goes, and from where.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub server: SocketAddr,
    pub source: Ipv4Addr,
}

/// Runs the generators of `kinds` until `until`, on a runtime of this thread's own (so the
/// attacker does not share the legitimate clients' thread); returns their tallies.
pub fn run(
    target: Target,
    until: std::time::Instant,
    kinds: &[Kind],
) -> Result<Vec<Tally>, String> {
    yield_to_the_clients();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let until = Instant::from_std(until);
    runtime.block_on(async move {
        let http = reqwest::Client::builder()
            .local_address(IpAddr::V4(target.source))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let on = |kind: Kind| kinds.contains(&kind);
        let tallies = tokio::join!(
            when(on(Kind::Connects), refused_connects(&http, target, until)),
            when(on(Kind::Webhooks), forged_webhooks(&http, target, until)),
            when(on(Kind::SlowBodies), slow_bodies(target, until)),
            when(on(Kind::Links), unauthenticated_links(&http, target, until)),
            when(
                on(Kind::Websockets),
                unauthenticated_websockets(target, until)
            ),
            when(on(Kind::Pipelined), pipelined(target, until)),
        );
        let (a, b, c, d, e, f) = tallies;
        Ok([a, b, c, d, e, f].into_iter().flatten().collect())
    })
}

async fn when(on: bool, generator: impl std::future::Future<Output = Tally>) -> Option<Tally> {
    match on {
        true => Some(generator.await),
        false => None,
    }
}

fn url(target: Target, path: &str) -> String {
    format!("http://{}{path}", target.server)
}

async fn connect_from(target: Target) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((target.source, 0)))?;
    socket.connect(target.server).await
}

/// Opens an Engine.IO polling link; its `sid`, or `None` if refused.
async fn open_link(http: &reqwest::Client, target: Target) -> Option<String> {
    let open = http
        .get(url(target, "/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .ok()?;
    if !open.status().is_success() {
        return None;
    }
    let body = open.text().await.ok()?;
    let sid = body.split(r#""sid":""#).nth(1)?.split('"').next()?;
    Some(sid.to_owned())
}

/// Polling links, each posting CONNECTs the server refuses: alternately thousands of bare `40`
/// packets in one POST and a handful with bad tokens.
async fn refused_connects(http: &reqwest::Client, target: Target, until: Instant) -> Tally {
    let mut tally = Tally::new("socket.io CONNECTs refused");
    let many = vec!["40"; CONNECT_PACKETS].join("\u{1e}");
    let bad_tokens = (0..8)
        .map(|i| format!(r#"40{{"token":"not-a-token-{i}"}}"#))
        .collect::<Vec<_>>()
        .join("\u{1e}");
    for step in 0..MAX_STEPS {
        if Instant::now() >= until {
            break;
        }
        tally.attempts += 1;
        let Some(sid) = open_link(http, target).await else {
            tally.refused += 1;
            continue;
        };
        let body = if step % 2 == 0 { &many } else { &bad_tokens };
        tally.attempts += 1;
        tally.bytes_sent += body.len() as u64;
        let posted = http
            .post(url(
                target,
                &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
            ))
            .header("content-type", "text/plain;charset=UTF-8")
            .body(body.clone())
            .send()
            .await;
        if !posted.is_ok_and(|r| r.status().is_success()) {
            tally.refused += 1;
        }
    }
    tally
}

/// Forged webhooks, one after another: a generic one with many signature entries and a 1 MiB
/// body, and an unsigned 1 MiB Facebook one.
async fn forged_webhooks(http: &reqwest::Client, target: Target, until: Instant) -> Tally {
    let mut tally = Tally::new("forged webhooks");
    let padding = "x".repeat(WEBHOOK_BODY_BYTES - 200);
    let generic = format!(r#"{{"type":"message","data":{{"contact_id":"c","text":"{padding}"}}}}"#);
    let facebook =
        format!(r#"{{"object":"page","entry":[{{"id":"attacker-page","padding":"{padding}"}}]}}"#);
    let signatures = (0..SIGNATURE_ENTRIES)
        .map(|i| format!("v1,{i:0>43}="))
        .collect::<Vec<_>>()
        .join(" ");
    for step in 0..MAX_STEPS {
        if Instant::now() >= until {
            break;
        }
        let request = if step % 2 == 0 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            http.post(url(target, "/webhooks/generic/int_attacker"))
                .header("webhook-id", format!("msg_{step}"))
                .header("webhook-timestamp", now.to_string())
                .header("webhook-signature", &signatures)
                .body(generic.clone())
        } else {
            http.post(url(target, "/webhooks/facebook"))
                .body(facebook.clone())
        };
        tally.attempts += 1;
        tally.bytes_sent += WEBHOOK_BODY_BYTES as u64;
        let answer = request
            .header("content-type", "application/json")
            .send()
            .await;
        if !answer.is_ok_and(|r| r.status().is_success()) {
            tally.refused += 1;
        }
    }
    tally
}

/// Request heads announcing a 1 MB body, then a byte every 2 s until the server closes the
/// connection: [`SLOW_BODIES`] at once, a new one as soon as one ends.
async fn slow_bodies(target: Target, until: Instant) -> Tally {
    let head = format!(
        "POST /webhooks/facebook HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         X-Hub-Signature-256: sha256=00\r\nContent-Length: 1000000\r\n\r\n{{",
        target.server
    );
    hold_connections("slow request bodies", SLOW_BODIES, until, move || {
        let head = head.clone();
        async move {
            let mut stream = connect_from(target).await.ok()?;
            stream.write_all(head.as_bytes()).await.ok()?;
            let mut sent = head.len() as u64;
            let mut answer = [0u8; 1024];
            for _ in 0..MAX_STEPS {
                match timeout(Duration::from_secs(2), stream.read(&mut answer)).await {
                    // Answered (408) or closed.
                    Ok(_) => {
                        return Some(Ended {
                            sent,
                            refused: true,
                        })
                    }
                    Err(_) if Instant::now() >= until => break,
                    Err(_) => {
                        if stream.write_all(b" ").await.is_err() {
                            return Some(Ended {
                                sent,
                                refused: true,
                            });
                        }
                        sent += 1;
                    }
                }
            }
            Some(Ended {
                sent,
                refused: false,
            })
        }
    })
    .await
}

/// Polling links opened and never connected, as fast as the server answers.
async fn unauthenticated_links(http: &reqwest::Client, target: Target, until: Instant) -> Tally {
    let mut tally = Tally::new("unauthenticated polling links");
    for _ in 0..MAX_STEPS {
        if Instant::now() >= until {
            break;
        }
        tally.attempts += 1;
        if open_link(http, target).await.is_none() {
            tally.refused += 1;
        }
    }
    tally
}

/// Socket.IO WebSockets that never send a CONNECT, held until the server closes them.
async fn unauthenticated_websockets(target: Target, until: Instant) -> Tally {
    hold_connections(
        "unauthenticated websockets",
        HELD_WEBSOCKETS,
        until,
        move || async move {
            let stream = connect_from(target).await.ok()?;
            let url = format!(
                "ws://{}/socket.io/?EIO=4&transport=websocket",
                target.server
            );
            let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.ok()?;
            // Read (the open packet, pings, the close) until the server ends it.
            let read = async { while let Some(Ok(_)) = ws.next().await {} };
            let closed = tokio::time::timeout_at(until, read).await.is_ok();
            Some(Ended {
                sent: 0,
                refused: closed,
            })
        },
    )
    .await
}

/// Connections that each write [`PIPELINED_REQUESTS`] requests without reading an answer, stay
/// [`STAY`] once the server stops taking them (or all are written), and start again.
async fn pipelined(target: Target, until: Instant) -> Tally {
    const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: s\r\n\r\n";
    let requests: Arc<[u8]> = REQUEST.repeat(PIPELINED_REQUESTS).into();
    hold_connections("pipelined requests, unread", PIPELINING, until, move || {
        let requests = requests.clone();
        async move {
            // Small kernel buffers: else the attacker's own send buffer (up to 4 MB) takes the
            // requests, and the writes say nothing of what the server has read.
            let socket = TcpSocket::new_v4().ok()?;
            socket.set_send_buffer_size(64 * 1024).ok()?;
            socket.set_recv_buffer_size(64 * 1024).ok()?;
            socket.bind(SocketAddr::from((target.source, 0))).ok()?;
            let mut stream = socket.connect(target.server).await.ok()?;
            let mut sent = 0u64;
            for piece in requests.chunks(64 * 1024) {
                let write = timeout(Duration::from_secs(2), stream.write_all(piece));
                match tokio::time::timeout_at(until, write).await {
                    Ok(Ok(Ok(()))) => sent += piece.len() as u64,
                    Ok(Ok(Err(_))) => {
                        return Some(Ended {
                            sent,
                            refused: true,
                        })
                    }
                    // The server has stopped taking them.
                    Ok(Err(_)) => break,
                    Err(_) => {
                        return Some(Ended {
                            sent,
                            refused: false,
                        })
                    }
                }
            }
            // Stay a while, unread, before starting again.
            tokio::time::sleep_until(until.min(Instant::now() + STAY)).await;
            Some(Ended {
                sent,
                refused: false,
            })
        }
    })
    .await
}

/// Keeps `at_once` connections made by `open` going until `until`, opening a new one whenever one
/// ends. `open` gives how its connection ended, or `None` if it failed or was refused early.
async fn hold_connections<F, Fut>(
    kind: &'static str,
    at_once: usize,
    until: Instant,
    open: F,
) -> Tally
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<Ended>> + Send + 'static,
{
    let mut tally = Tally::new(kind);
    let places = Arc::new(Semaphore::new(at_once));
    let mut running = JoinSet::new();
    for _ in 0..MAX_STEPS {
        let Ok(Ok(place)) = tokio::time::timeout_at(until, places.clone().acquire_owned()).await
        else {
            break;
        };
        // Reap the finished ones as we go, so the set holds at most `at_once`.
        while let Some(done) = running.try_join_next() {
            count(&mut tally, done);
        }
        tally.attempts += 1;
        let connection = open();
        running.spawn(async move {
            let sent = connection.await;
            drop(place);
            sent
        });
    }
    running.abort_all();
    while let Some(done) = running.join_next().await {
        count(&mut tally, done);
    }
    tally
}

fn count(tally: &mut Tally, done: Result<Option<Ended>, tokio::task::JoinError>) {
    match done {
        Ok(Some(ended)) => {
            tally.refused += u64::from(ended.refused);
            tally.bytes_sent += ended.sent;
        }
        Ok(None) => tally.refused += 1,
        // Still open at the end: aborted.
        Err(_) => {}
    }
}
