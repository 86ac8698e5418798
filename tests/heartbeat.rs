//! Heartbeats: a client that stops answering pings is closed; one that answers stays.

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
