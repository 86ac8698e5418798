//! A hand-tuned tokio-tungstenite broadcast server, as a yardstick for `switchboard bench`.
//!
//! It does the least a broadcast server can: no token verification, no storage, no rooms, no
//! acknowledgements, no backpressure. A WebSocket connection at `/ws` gets a `welcome` frame and
//! then every event; `POST /api/v1/publish` numbers the event, frames it once
//! (`{"type":"event","seq":…,"event":…,"data":…}`), hands it to a `tokio::sync::broadcast`
//! channel and answers at once. Each connection writes every event waiting for it and flushes
//! once (`--per-event-flush` flushes after each event instead, as a plain `ws.send` loop does).
//! One thread, like a Switchboard server pinned to one core; `--threads N` runs tokio's
//! multi-thread runtime with N workers instead, the yardstick for a server on N cores.
//!
//! ```sh
//! cargo build --release --manifest-path benches/reference/Cargo.toml
//! taskset -c 0 benches/reference/target/release/broadcast-reference 127.0.0.1:8080 &
//! taskset -c 1 ./target/release/switchboard bench --connections 10000 --events 200 \
//!     --in-flight 4 --payload-bytes 200 --server-pid $!
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Events a connection may fall behind by before it is dropped (a whole benchmark run fits).
const CHANNEL_CAPACITY: usize = 1 << 16;

#[derive(Deserialize)]
struct Publish<'a> {
    event: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut addr: SocketAddr = "127.0.0.1:8080".parse().expect("a valid address");
    let mut per_event_flush = false;
    let mut threads = 1;
    const USAGE: &str = "usage: broadcast-reference [ADDR] [--per-event-flush] [--threads N]";
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--per-event-flush" => per_event_flush = true,
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .expect(USAGE)
            }
            other => addr = other.parse().expect(USAGE),
        }
    }
    let runtime = match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_io()
            .build(),
    }
    .expect("a runtime");
    runtime.block_on(serve(addr, per_event_flush));
}

async fn serve(addr: SocketAddr, per_event_flush: bool) {
    let listener = TcpListener::bind(addr).await.expect("the address is free");
    let (events, _) = broadcast::channel::<Utf8Bytes>(CHANNEL_CAPACITY);
    let seq = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (events, seq) = (events.clone(), seq.clone());
        tokio::spawn(async move {
            let mut head = [0u8; 7];
            let n = stream.peek(&mut head).await.unwrap_or(0);
            if head[..n] == *b"GET /ws" {
                websocket(stream, events.subscribe(), per_event_flush).await;
            } else {
                http(stream, &events, &seq).await;
            }
        });
    }
}

/// A small read buffer, as for many connections (tungstenite's default is 128 KiB, zero-filled
/// on every read); writes gather until the flush (the buffer grows only as far as it is used).
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(64 * 1024)
}

async fn websocket(
    stream: TcpStream,
    mut events: broadcast::Receiver<Utf8Bytes>,
    per_event_flush: bool,
) {
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config())).await
    else {
        return;
    };
    if ws
        .send(Message::text(r#"{"type":"welcome","seq":0}"#))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            incoming = ws.next() => {
                if !matches!(incoming, Some(Ok(_))) {
                    return;
                }
            }
            event = events.recv() => {
                let Ok(event) = event else { return };
                if ws.feed(Message::Text(event)).await.is_err() {
                    return;
                }
                if !per_event_flush {
                    while let Ok(event) = events.try_recv() {
                        if ws.feed(Message::Text(event)).await.is_err() {
                            return;
                        }
                    }
                }
                if ws.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// HTTP/1.1 with keep-alive, just enough for the publish API (and `GET /readyz`).
async fn http(mut stream: TcpStream, events: &broadcast::Sender<Utf8Bytes>, seq: &AtomicU64) {
    let mut buffer = Vec::with_capacity(4096);
    loop {
        let (head, body, publish) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = request.parse(&buffer) {
                let body = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .unwrap_or(0);
                break (head, body, request.path == Some("/api/v1/publish"));
            }
            if !read_more(&mut stream, &mut buffer).await {
                return;
            }
        };
        while buffer.len() < head + body {
            if !read_more(&mut stream, &mut buffer).await {
                return;
            }
        }
        let request: Vec<u8> = buffer.drain(..head + body).collect();
        let answer = match publish.then(|| serde_json::from_slice::<Publish>(&request[head..])) {
            None => "{}".to_owned(),
            Some(Ok(publish)) => {
                let seq = seq.fetch_add(1, Ordering::Relaxed) + 1;
                let event = serde_json::to_string(publish.event).expect("a string serializes");
                let frame = format!(
                    r#"{{"type":"event","seq":{seq},"event":{event},"data":{}}}"#,
                    publish.data.get()
                );
                let _ = events.send(frame.into());
                format!(r#"{{"seq":{seq}}}"#)
            }
            Some(Err(_)) => return,
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            true
        }
    }
}
