//! What a client without a credential can hold at the HTTP edge, and for how long: request bodies
//! under a deadline and a minimum rate, connections per address, and connections that have not
//! sent a whole request yet (README, "Limits"). Real sockets on loopback; client sockets bound to
//! 127.0.0.2 stand for another address (Linux routes all of 127/8 to loopback).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::common::{self, token, Db, TestServer};

const HOME: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

async fn connect_from(source: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(server).await.expect("tcp connect")
}

/// What the server sent on a connection until it closed it; `None` if it was still open after
/// `wait`. A reset counts as a close.
async fn until_closed(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&answer).into()),
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends `head` (and whatever `next_byte` gives, one piece every `every`) until the server
/// answers; returns the answer once the server has closed the connection, or `None` if it did
/// not within `wait`.
async fn trickle(
    stream: &mut TcpStream,
    head: &str,
    next_byte: &[u8],
    every: Duration,
    wait: Duration,
) -> Option<String> {
    stream.write_all(head.as_bytes()).await.unwrap();
    let deadline = Instant::now() + wait;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)) => match read {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&answer).into()),
                Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            },
            // Until the server answers: a slow client, not one that ignores the answer.
            _ = tick.tick(), if answer.is_empty() => {
                let _ = stream.write_all(next_byte).await;
            }
        }
    }
}

/// A webhook whose 1 MB body comes a byte at a time: the handler reads the body (the signature
/// header is there), so only a limit on the body itself can end it.
fn slow_webhook_head(addr: SocketAddr) -> String {
    format!(
        "POST /webhooks/facebook HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         X-Hub-Signature-256: sha256=00\r\nContent-Length: 1000000\r\n\r\n{{"
    )
}

fn assert_request_timeout(answer: &str) {
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request-timeout""#), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_answered_408_and_closed_at_the_deadline() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.edge.body_timeout = Duration::from_secs(1);
    let server = TestServer::start(config);
    let addr = server.addr;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..20 {
        clients.spawn(async move {
            let mut stream = connect_from(HOME, addr).await;
            let every = Duration::from_millis(300);
            let wait = Duration::from_secs(15);
            trickle(&mut stream, &slow_webhook_head(addr), b" ", every, wait).await
        });
    }
    while let Some(answer) = clients.join_next().await {
        let answer = answer
            .unwrap()
            .expect("the slow body was still open after 15 s");
        assert_request_timeout(&answer);
    }
    // The server itself carries on.
    let health = reqwest::get(server.http_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_body_below_the_minimum_rate_is_cut_long_before_the_deadline() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.edge.body_timeout = Duration::from_secs(120);
    config.edge.body_min_rate = 1000;
    let server = TestServer::start(config);
    let mut stream = connect_from(HOME, server.addr).await;
    // Three bytes a second, against 1000 after a grace of 5 s.
    let head = slow_webhook_head(server.addr);
    let every = Duration::from_millis(300);
    let answer = trickle(&mut stream, &head, b" ", every, Duration::from_secs(20)).await;
    assert_request_timeout(&answer.expect("the slow body was still open after 20 s"));
}

/// A refused request whose chunked body keeps coming: the server answers without reading the
/// body, then must close the connection rather than read (and discard) the body for as long as
/// the client cares to send it.
#[tokio::test]
async fn a_refused_request_whose_body_keeps_coming_is_closed_not_drained() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let mut stream = connect_from(HOME, server.addr).await;
    let head = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n1\r\n{{\r\n",
        server.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let closed = loop {
        tokio::select! {
            read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)) => match read {
                Err(_) => break false,
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            },
            // The body goes on, a chunk at a time, answered or not.
            _ = tick.tick() => {
                let _ = stream.write_all(b"1\r\n \r\n").await;
            }
        }
    };
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        closed,
        "the connection was still open 10 s after the answer: {answer}"
    );
}

/// Sends a request for `/healthz` on `stream`; the answer, or `None` if the connection was
/// closed without one.
async fn health_on(stream: &mut TcpStream) -> Option<String> {
    let request = "GET /healthz HTTP/1.1\r\nHost: switchboard\r\nConnection: close\r\n\r\n";
    // A connection refused at once may already be closed when the request is written.
    let _ = stream.write_all(request.as_bytes()).await;
    let answer = until_closed(stream, common::WAIT)
        .await
        .expect("the connection was neither answered nor closed");
    (!answer.is_empty()).then_some(answer)
}

async fn health_from(source: Ipv4Addr, server: SocketAddr) -> Option<String> {
    health_on(&mut connect_from(source, server).await).await
}

#[tokio::test]
async fn connections_past_the_cap_of_an_address_are_closed_and_other_addresses_served() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.edge.max_connections_per_address = 3;
    let server = TestServer::start(config);
    let account = common::unique("cap");
    // WebSockets count: three sessions fill the address's allowance.
    let mut sessions = Vec::new();
    for user in ["alice", "bob", "carol"] {
        sessions.push(server.connect(&token(&account, user)).await.0);
    }
    assert_eq!(health_from(HOME, server.addr).await, None);
    let elsewhere = health_from(ELSEWHERE, server.addr).await;
    assert!(
        elsewhere
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "{elsewhere:?}"
    );

    // A session that ends gives its place back.
    drop(sessions.pop());
    let answered = common::eventually("the place given back", common::WAIT, || async {
        health_from(HOME, server.addr).await.ok_or("no answer")
    })
    .await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered:?}");
    // The sessions within the allowance were never disturbed.
    let seq = server
        .publish(&account, None, "still-here", serde_json::json!(null))
        .await;
    for session in &mut sessions {
        assert_eq!(session.next_event().await.0, seq);
    }
}

#[tokio::test]
async fn connections_without_a_whole_request_yet_are_bounded_in_number() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.edge.max_pending_connections = 3;
    let server = TestServer::start(config);
    // Sessions are past their first request: any number of them may be open.
    let account = common::unique("pending");
    let mut sessions = Vec::new();
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        sessions.push(server.connect(&token(&account, user)).await.0);
    }
    // Three connections that have sent half a request fill the allowance.
    let mut pending = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from(ELSEWHERE, server.addr).await;
        stream.write_all(b"GET /heal").await.unwrap();
        pending.push(stream);
    }
    // Accepted in order, so the fourth is refused: closed without an answer.
    assert_eq!(health_from(HOME, server.addr).await, None);

    // One finishes its request and is answered; its place is free again.
    let mut first = pending.remove(0);
    first
        .write_all(b"thz HTTP/1.1\r\nHost: switchboard\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut first, common::WAIT).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = health_from(HOME, server.addr).await;
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "{answer:?}"
    );
    drop(pending);
}

/// actix-http times a connection's first request head only: after an answer, half of the next
/// request head — then a byte now and then — must not hold a kept-alive connection.
#[tokio::test]
async fn a_kept_alive_connection_must_send_its_next_request_whole_in_time() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let mut stream = connect_from(HOME, server.addr).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: switchboard\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.ends_with(br#"{"status":"ok"}"#) {
        let n = tokio::time::timeout(common::WAIT, stream.read(&mut chunk))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before the answer");
        answer.extend_from_slice(&chunk[..n]);
    }
    // The next request's head, a byte a second: the connection is kept alive 5 s for a request
    // to begin, and then given 5 s more for it to arrive whole.
    let every = Duration::from_secs(1);
    let closed = trickle(
        &mut stream,
        "GET /heal",
        b"t",
        every,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(closed.as_deref(), Some(""), "still open after 20 s");
}
