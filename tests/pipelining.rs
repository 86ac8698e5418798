//! HTTP/1.1 pipelining against the server binary: a client that writes request after request and
//! never reads an answer may hold only a bounded amount of the server's memory, and one that
//! reads gets every answer, in order. The server runs as its own process, so that its resident
//! memory is its own (`/proc/<pid>/status`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::common::process::{rss_of, Process, Switchboard};
use crate::common::API_KEY;

/// The smallest request the server answers with a body: 34 bytes, answered with 200.
const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: s\r\n\r\n";

fn start(dir: &std::path::Path) -> (Process, SocketAddr) {
    // Quiet: a line per request would be most of what the server does here.
    let (process, api) = Switchboard::new()
        .in_dir(dir)
        .keys()
        .env("RUST_LOG", "info,actix_web::middleware::logger=warn")
        .serve();
    (process, api.addr)
}

/// A connection whose kernel buffers stay small (64 KiB), so that what it has written is
/// close to what the server has read: left to grow, the send buffer alone takes 4 MB.
async fn small_buffered(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(64 * 1024).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Writes `count` pipelined requests in 64 KiB pieces, reading nothing; stops early once the
/// server has stopped taking them for `stall`. Returns the bytes written.
async fn pipeline_unread(stream: &mut TcpStream, count: usize, stall: Duration) -> usize {
    let all: Vec<u8> = REQUEST.repeat(count);
    let mut written = 0;
    for piece in all.chunks(64 * 1024) {
        match tokio::time::timeout(stall, stream.write_all(piece)).await {
            Ok(Ok(())) => written += piece.len(),
            _ => break,
        }
    }
    written
}

/// Ten connections pipeline 50,000 requests each (1.7 MB) and read nothing. Before, the server
/// read them all and queued every answer: 351 MiB held (debug build). Now it takes the next
/// request only when the last answer has gone out, so what it holds is what the kernel's socket
/// buffers hold, and the client's writes stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_whose_answers_are_not_read_hold_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = start(dir.path());
    let pid = server.child.id();
    // Warm up: the first requests allocate what every later one reuses.
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(REQUEST).await.unwrap();
        let mut answer = [0u8; 512];
        let _ = stream.read(&mut answer).await.unwrap();
    }
    let before = rss_of(pid);

    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..10 {
        clients.spawn(async move {
            let mut stream = small_buffered(addr).await;
            let written = pipeline_unread(&mut stream, 50_000, Duration::from_secs(2)).await;
            (stream, written)
        });
    }
    let mut streams = Vec::new();
    let mut written = 0;
    while let Some(client) = clients.join_next().await {
        let (stream, w) = client.unwrap();
        written += w;
        streams.push(stream);
    }
    // Whatever the server is still doing with them, it has had time to do.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = rss_of(pid).saturating_sub(before);
    eprintln!(
        "server RSS grew by {} KiB; {written} bytes of requests written",
        grown >> 10
    );
    assert!(
        grown < 24 << 20,
        "the server grew by {} MiB for 10 connections that pipelined {} MB unread",
        grown >> 20,
        written >> 20
    );
    // Each connection's answers fill the server's send buffer (~4 MB, ~20,000 answers): the
    // server stops reading there, well before the 50,000th request.
    assert!(
        written < 10 * 50_000 * REQUEST.len() * 3 / 4,
        "the server read {written} bytes of requests whose answers were not read"
    );
    drop(streams);
    // And it serves others as before.
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// A client that pipelines and reads gets every answer, in order, on one connection.
#[tokio::test]
async fn pipelined_requests_are_all_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = start(dir.path());
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let count = 300;
    let mut requests = Vec::new();
    for i in 0..count {
        // Alternately a request without a body and one with.
        if i % 2 == 0 {
            requests.extend_from_slice(REQUEST);
        } else {
            let body = format!(r#"{{"account_id":"acme","event":"e","data":{i}}}"#);
            requests.extend_from_slice(
                format!(
                    "POST /api/v1/publish HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\n\
                     Authorization: Bearer {API_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    }
    requests.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n");
    let (mut reader, mut writer) = stream.split();
    let write = async {
        writer.write_all(&requests).await.unwrap();
    };
    let read = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut answers = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, reader.read(&mut chunk)).await {
                Err(_) => panic!("still open after 30 s"),
                Ok(Ok(0)) | Ok(Err(_)) => break answers,
                Ok(Ok(n)) => answers.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let ((), answers) = tokio::join!(write, read);
    let answers = String::from_utf8_lossy(&answers);
    let statuses: Vec<&str> = answers
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|a| a.get(..3).unwrap_or(""))
        .collect();
    assert_eq!(statuses.len(), count + 1, "{answers}");
    for (i, status) in statuses.iter().enumerate() {
        assert_eq!(*status, "200", "answer {i}");
    }
    // In order: each publish's answer carries the next sequence number of the account.
    let seqs: Vec<u64> = answers
        .split(r#""seq":"#)
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    assert_eq!(seqs, (1..=count as u64 / 2).collect::<Vec<_>>());
}
