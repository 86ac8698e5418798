//! The tool's sessions: one client each, over a WebSocket (`/ws`) or an event stream (`/sse`),
//! connected through the welcome frame, then reading event frames until aborted or the deadline —
//! recording each event's sequence number and latency, and counting what it should never have
//! seen (another account's event, another channel's).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Handshakes under way at once, so that connects come in waves the server can take.
pub const CONNECTING_AT_ONCE: usize = 256;

/// How the sessions reach the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// `GET /ws`, a WebSocket.
    #[default]
    Ws,
    /// `GET /sse`, Server-Sent Events.
    Sse,
}

/// What a session's reader saw.
#[derive(Default)]
pub struct Received {
    pub seqs: Vec<u64>,
    pub latencies_ns: Vec<u64>,
    pub cross_account: u64,
    /// Events of a channel this session does not follow.
    pub wrong_channel: u64,
    /// Nanoseconds since the bench started, at the last receipt.
    pub last_receipt_ns: u64,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    seq: Option<u64>,
    data: Option<FrameData>,
}

/// What the tool puts in each event's data (see `room::bench_event`).
#[derive(Deserialize)]
struct FrameData {
    /// Nanoseconds since the bench started, when the event was published.
    t: u64,
    /// The account it was published for.
    a: usize,
    /// The channel it was published to, if any.
    c: Option<usize>,
}

/// How one session connects.
pub enum Dial {
    /// A WebSocket from `source`, a loopback address.
    Ws { source: IpAddr },
    /// An event stream, through `client` (bound to its source address).
    Sse { client: reqwest::Client },
}

/// One of the tool's sessions: whose events it expects, where it records what it reads, and
/// until when.
pub struct Reader {
    pub account: usize,
    /// The channel it follows (`bench:<n>`), if any.
    pub channel: Option<usize>,
    pub started: Instant,
    pub sink: Arc<Mutex<Received>>,
    pub delivered: Arc<AtomicU64>,
    pub deadline: Instant,
}

impl Reader {
    /// Connects (holding one of `connecting`'s permits meanwhile), says on `ready` whether it
    /// could, then reads its events. `query` is the connect URL's query (token, channels).
    pub async fn run(
        self,
        connecting: Arc<Semaphore>,
        addr: SocketAddr,
        dial: Dial,
        query: String,
        ready: tokio::sync::mpsc::Sender<Result<(), String>>,
    ) {
        let Ok(permit) = connecting.acquire_owned().await else {
            return;
        };
        let connected = match dial {
            Dial::Ws { source } => connect_ws(addr, source, &query).await.map(Stream::Ws),
            Dial::Sse { client } => connect_sse(&client, addr, &query).await.map(Stream::Sse),
        };
        drop(permit);
        let stream = match connected {
            Ok(stream) => stream,
            Err(e) => {
                let _ = ready.send(Err(format!("{addr}: {e}"))).await;
                return;
            }
        };
        let _ = ready.send(Ok(())).await;
        let deadline = self.deadline;
        // One timer for the whole read, not one per frame: the tool shares its core with ten
        // thousand readers and must not become what it measures.
        let _ = tokio::time::timeout_at(deadline.into(), self.read(stream)).await;
    }

    async fn read(self, mut stream: Stream) {
        while let Some(text) = stream.next_text().await {
            self.record(&text);
        }
    }

    fn record(&self, text: &str) {
        let Ok(frame) = serde_json::from_str::<Frame>(text) else {
            return;
        };
        let (Some(seq), Some(data), "event") = (frame.seq, frame.data, frame.kind) else {
            return;
        };
        let now = self.started.elapsed().as_nanos() as u64;
        let mut sink = self.sink.lock().expect("a reader panicked");
        sink.seqs.push(seq);
        sink.latencies_ns.push(now.saturating_sub(data.t));
        sink.last_receipt_ns = now;
        if data.a != self.account {
            sink.cross_account += 1;
        }
        if data.c.is_some() && data.c != self.channel {
            sink.wrong_channel += 1;
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits until `connections` sessions have said they are connected.
pub async fn connected(
    ready: &mut tokio::sync::mpsc::Receiver<Result<(), String>>,
    connections: usize,
    deadline: Instant,
) -> Result<(), String> {
    for _ in 0..connections {
        match tokio::time::timeout_at(deadline.into(), ready.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(format!("a session failed to connect: {e}")),
            _ => return Err("connecting took longer than --timeout".into()),
        }
    }
    Ok(())
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A connected session's frames, whatever the wire.
enum Stream {
    Ws(Ws),
    Sse(EventStream),
}

impl Stream {
    /// The next frame's JSON text; `None` once the connection is over.
    async fn next_text(&mut self) -> Option<String> {
        match self {
            Self::Ws(ws) => loop {
                match ws.next().await? {
                    Ok(Message::Text(text)) => return Some(text.as_str().to_owned()),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            },
            Self::Sse(events) => events.next_data().await,
        }
    }
}

/// A WebSocket connection from `source`, through the welcome frame.
async fn connect_ws(addr: SocketAddr, source: IpAddr, query: &str) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    // Binding picks a port by searching the ones in use, which slows as they fill up; a plain
    // connect picks one per destination, cheaply. So bind only for the extra source addresses.
    if source != IpAddr::V4(Ipv4Addr::LOCALHOST) {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
    }
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let url = format!("ws://{addr}/ws?{query}");
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
        .await
        .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(Message::Text(text))) if text.contains(r#""type":"welcome""#) => Ok(ws),
        other => Err(format!("expected a welcome frame, got {other:?}")),
    }
}

/// tungstenite's defaults suit one busy connection: a 128 KiB read buffer, which it zero-fills
/// up to its capacity on every read. Ten thousand of them made the tool spend its core on
/// page faults and memset during connects, and the connect time measured the tool. Events are a
/// few hundred bytes; 4 KiB reads and eager writes are plenty.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// An HTTP client for event streams from `source`: one per source address, shared by its
/// sessions (each stream holds a connection of its own).
pub fn sse_client(source: IpAddr) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(0);
    // As for WebSockets: bind only for the extra source addresses.
    let builder = if source == IpAddr::V4(Ipv4Addr::LOCALHOST) {
        builder
    } else {
        builder.local_address(source)
    };
    builder.build().map_err(|e| e.to_string())
}

/// An event stream, through the welcome frame.
async fn connect_sse(
    client: &reqwest::Client,
    addr: SocketAddr,
    query: &str,
) -> Result<EventStream, String> {
    let response = client
        .get(format!("http://{addr}/sse?{query}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("/sse answered {}", response.status()));
    }
    let mut events = EventStream {
        response,
        buffer: Vec::new(),
    };
    match events.next_data().await {
        Some(text) if text.contains(r#""type":"welcome""#) => Ok(events),
        other => Err(format!("expected a welcome frame, got {other:?}")),
    }
}

/// `text/event-stream`, read event by event: what matters here is each event's `data`.
struct EventStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl EventStream {
    /// The next event's data (its `data:` lines joined); comments and `retry:` are skipped.
    async fn next_data(&mut self) -> Option<String> {
        loop {
            while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if !data.is_empty() {
                    return Some(data.join("\n"));
                }
            }
            let chunk = self.response.chunk().await.ok()??;
            self.buffer.extend_from_slice(&chunk);
        }
    }
}
