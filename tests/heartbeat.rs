//! Heartbeats: a client that stops answering pings is closed; one that answers stays; one that
//! stops reading altogether is closed all the same, and let go, though its socket is full.

use std::time::Duration;

use serde_json::json;
use switchboard::config::Heartbeat;

use crate::common::{self, token, Db, Received, SilentClient, TestServer};

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

fn quick_heartbeat_server(db: &Db) -> TestServer {
    let mut config = common::config(db);
    config.heartbeat = Heartbeat {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(400),
    };
    TestServer::start(config)
}

#[tokio::test]
async fn a_silent_client_is_closed_with_the_heartbeat_code() {
    let db = Db::sqlite();
    let server = quick_heartbeat_server(&db);
    let mut client = SilentClient::connect(server.addr, &token("acme", "alice")).await;
    let (opcode, welcome) = client.next_frame().await.expect("welcome");
    let welcome: serde_json::Value = serde_json::from_slice(&welcome).unwrap();
    assert_eq!((opcode, &welcome["type"]), (TEXT, &json!("welcome")));
    assert_eq!(welcome["heartbeat_interval_ms"], 100);
    assert_eq!(welcome["client_timeout_ms"], 400);

    let mut pings = 0;
    let close = loop {
        match client
            .next_frame()
            .await
            .expect("closed without a close frame")
        {
            (PING, _) => pings += 1,
            (CLOSE, payload) => break payload,
            // Presence: alice's own user-online.
            (TEXT, _) => {}
            (opcode, _) => panic!("unexpected frame {opcode}"),
        }
    };
    assert!(pings >= 2, "the server pinged before giving up ({pings})");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 4000);
    assert_eq!(&close[2..], b"heartbeat timeout");
    assert!(
        client.next_frame().await.is_none(),
        "the connection is closed"
    );
}

/// Frames a client sends right behind its handshake arrive with the request, before the server
/// has answered it; they are the session's all the same.
#[tokio::test]
async fn a_ping_sent_with_the_handshake_is_answered() {
    let db = Db::sqlite();
    let server = TestServer::start(common::config(&db));
    // A masked ping frame carrying "hi" (mask 1,2,3,4).
    let ping = [0x89, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    let mut client =
        SilentClient::connect_sending(server.addr, &token("acme", "alice"), &ping).await;
    let pong = loop {
        match client.next_frame().await.expect("closed before the pong") {
            (PONG, payload) => break payload,
            (TEXT, _) => {}
            (opcode, _) => panic!("unexpected frame {opcode}"),
        }
    };
    assert_eq!(pong, b"hi");
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let db = Db::sqlite();
    let server = quick_heartbeat_server(&db);
    let (mut client, _) = server.connect(&token("acme", "alice")).await;

    // Reading answers the pings; several timeouts pass.
    match client.receive(Duration::from_millis(1500)).await {
        Received::TimedOut => {}
        other => panic!("expected to stay connected, got {other:?}"),
    }
    client.send_text(r#"{"type":"ping","ref":"r1"}"#).await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "pong", "ref": "r1"})
    );
    let seq = server.publish("acme", None, "still-here", json!({})).await;
    assert_eq!(client.next_event().await.0, seq);
}

/// A client that stops reading altogether, with a socket that buffers little: once it is full,
/// the server has nowhere to put what it writes. Its session must still end — closed by its
/// heartbeat or as a slow consumer, leaving its room — and the server must let the connection go
/// within a bounded time, without waiting for the client to take what is left.
mod stalled {
    use std::time::Duration;

    use serde_json::{json, Value};
    use switchboard::config::Heartbeat;
    use tokio::io::Interest;
    use tokio::net::{TcpSocket, TcpStream};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    use crate::common::{self, token, Client, Db, TestServer, WAIT};

    /// Pings every `interval`; `timeout` without an answer, or `max_queued_bytes` waiting for
    /// the client, closes it.
    fn server(
        db: &Db,
        interval: Duration,
        timeout: Duration,
        max_queued_bytes: usize,
    ) -> TestServer {
        let mut config = common::config(db);
        config.heartbeat = Heartbeat { interval, timeout };
        config.presence.grace = Duration::from_millis(50);
        config.max_queued_bytes = max_queued_bytes;
        config.max_publish_bytes = 1 << 20;
        TestServer::start(config)
    }

    async fn small_window(server: &TestServer, path: String) -> WebSocketStream<TcpStream> {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4 * 1024).unwrap();
        let stream = socket.connect(server.addr).await.expect("tcp connect");
        let url = format!("ws://{}{path}", server.addr);
        tokio_tungstenite::client_async(url, stream)
            .await
            .expect("a WebSocket")
            .0
    }

    async fn next_text(ws: &mut WebSocketStream<TcpStream>) -> String {
        use futures_util::StreamExt;
        loop {
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => return text.to_string(),
                Ok(Some(Ok(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// A `/ws` client that reads its welcome, and nothing after it.
    async fn native(server: &TestServer, token: &str) -> WebSocketStream<TcpStream> {
        let mut ws = small_window(server, format!("/ws?token={token}")).await;
        let welcome: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        assert_eq!(welcome["type"], "welcome");
        ws
    }

    /// A Socket.IO client on a WebSocket that reads its CONNECT answer, and nothing after it.
    async fn socket_io(server: &TestServer, token: &str) -> WebSocketStream<TcpStream> {
        use futures_util::SinkExt;
        let mut ws = small_window(server, "/socket.io/?EIO=4&transport=websocket".into()).await;
        assert!(next_text(&mut ws).await.starts_with('0'), "the open packet");
        let connect = format!("40{}", json!({ "token": token }));
        ws.send(Message::text(connect)).await.unwrap();
        assert!(next_text(&mut ws).await.starts_with("40{"), "connected");
        ws
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

    /// Publishes events of `pad` to the account, at most `most` of them, until `watcher` — who
    /// receives every one, in order — has seen all of `users` go offline; or, past `most`, waits
    /// for that.
    async fn publish_until_offline(
        server: &TestServer,
        watcher: &mut Client,
        users: &[&str],
        pad: &str,
        most: usize,
    ) {
        let mut online = users.to_vec();
        let saw = |online: &mut Vec<&str>, frame: &Value| {
            online.retain(|user| !went_offline(frame, user));
        };
        for i in 0..most {
            let seq = server
                .publish("acme", None, "bulk", json!({"i": i, "pad": pad}))
                .await;
            loop {
                let frame = watcher.next_json().await;
                saw(&mut online, &frame);
                if frame["seq"] == seq {
                    break;
                }
            }
            if online.is_empty() {
                eprintln!("{users:?} went offline after {} events", i + 1);
                return;
            }
        }
        eprintln!("published {most} events; waiting for {users:?} to go offline");
        while !online.is_empty() {
            saw(&mut online, &watcher.next_json().await);
        }
    }

    /// The server reset a connection whose client has read nothing for a while: its socket
    /// says so, unread.
    async fn expect_reset(ws: &WebSocketStream<TcpStream>) {
        let stream = ws.get_ref();
        tokio::time::timeout(WAIT, stream.ready(Interest::ERROR))
            .await
            .expect("the server let the connection go")
            .unwrap();
        let error = stream
            .take_error()
            .unwrap()
            .expect("an error on the socket");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    }

    /// The close code of a connection read to its end.
    async fn close_code(ws: &mut WebSocketStream<TcpStream>) -> Option<u16> {
        use futures_util::StreamExt;
        loop {
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code.into()),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => return None,
                Err(_) => panic!("the connection is still open"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_the_bound_its_session_is_closed_and_its_connection_let_go() {
        let db = Db::sqlite();
        // A heartbeat interval long enough for a client to come back and read within it.
        let interval = Duration::from_secs(1);
        let server = server(&db, interval, Duration::from_secs(60), 128 << 10);
        let (mut bob, _) = server.connect(&token("acme", "bob")).await;
        bob.watch_presence();
        let alice = native(&server, &token("acme", "alice")).await;
        let mut carol = native(&server, &token("acme", "carol")).await;
        let pad = "x".repeat(16 << 10);
        publish_until_offline(&server, &mut bob, &["alice", "carol"], &pad, 2000).await;
        // Carol reads again at once: what was queued for her, then the close.
        assert_eq!(close_code(&mut carol).await, Some(4001));
        // Alice does not, and the server lets her go.
        expect_reset(&alice).await;
        // Bob, of the same account, went on receiving throughout, and still does.
        let seq = server.publish("acme", None, "after", json!({})).await;
        assert_eq!(bob.next_event().await.0, seq);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_heartbeat_timeout_its_session_is_closed_and_its_connection_let_go() {
        let db = Db::sqlite();
        // A bound far above what is published: only the heartbeat can close it.
        let interval = Duration::from_millis(100);
        let server = server(&db, interval, Duration::from_secs(2), 64 << 20);
        let (mut bob, _) = server.connect(&token("acme", "bob")).await;
        bob.watch_presence();
        let alice = native(&server, &token("acme", "alice")).await;
        // More than the sockets can hold between them.
        let pad = "x".repeat(512 << 10);
        publish_until_offline(&server, &mut bob, &["alice"], &pad, 16).await;
        expect_reset(&alice).await;
        let seq = server.publish("acme", None, "after", json!({})).await;
        assert_eq!(bob.next_event().await.0, seq);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_socket_io_its_session_is_closed_and_its_connection_let_go() {
        let db = Db::sqlite();
        let interval = Duration::from_millis(100);
        let server = server(&db, interval, Duration::from_secs(60), 128 << 10);
        let (mut bob, _) = server.connect(&token("acme", "bob")).await;
        bob.watch_presence();
        let alice = socket_io(&server, &token("acme", "alice")).await;
        let pad = "x".repeat(16 << 10);
        publish_until_offline(&server, &mut bob, &["alice"], &pad, 2000).await;
        expect_reset(&alice).await;
        let seq = server.publish("acme", None, "after", json!({})).await;
        assert_eq!(bob.next_event().await.0, seq);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_socket_io_a_client_that_pings_and_reads_nothing_is_closed_at_the_bound() {
        use futures_util::SinkExt;
        let db = Db::sqlite();
        let interval = Duration::from_millis(100);
        let server = server(&db, interval, Duration::from_secs(60), 64 << 10);
        let (mut bob, _) = server.connect(&token("acme", "bob")).await;
        bob.watch_presence();
        let mut alice = socket_io(&server, &token("acme", "alice")).await;
        // Each ping is answered with a pong of its payload: more than the sockets hold between
        // them, for a client that reads none of it. On a busy machine the server may let the
        // connection go before the client has sent them all (a write then meets the reset), or
        // while its writes wait; what is asserted is the session's end and the reset.
        let pings = async {
            for _ in 0..50_000 {
                alice.feed(Message::Ping(vec![0; 125].into())).await?;
            }
            alice.flush().await
        };
        let sent = tokio::time::timeout(WAIT, pings).await;
        while !went_offline(&bob.next_json().await, "alice") {}
        match sent {
            Ok(Err(tokio_tungstenite::tungstenite::Error::Io(error))) => assert!(
                matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "{error}"
            ),
            Ok(Err(error)) => panic!("{error}"),
            Ok(Ok(())) | Err(_) => expect_reset(&alice).await,
        }
    }
}
