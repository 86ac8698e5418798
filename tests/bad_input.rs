//! Bad input gets a clear error, and nothing else is disturbed: bad frames on a connection, bad
//! requests to the publish API, and JSON nested too deep wherever it is taken in.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard::json::MAX_DEPTH;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, now, sign, token, Api, Db, TestServer, API_KEY};

fn fragment(opcode: OpCode, payload: &str, last: bool) -> Message {
    Message::Frame(Frame::message(payload.as_bytes().to_vec(), opcode, last))
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_carries_on() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let (mut client, _) = server.connect(&token("acme", "alice")).await;
    let (mut bystander, _) = server.connect(&token("acme", "bob")).await;

    let cases = [
        ("{not json", "malformed-json"),
        ("[1,2]", "missing-type"),
        (r#"{"type":"join","room":"globex"}"#, "unknown-type"),
        // A channel is subscribed by name in the token's account: there is no `room` to name.
        (r#"{"type":"subscribe","room":"globex"}"#, "invalid-frame"),
        (r#"{"type":"ping","unexpected":true}"#, "invalid-frame"),
    ];
    for (text, code) in cases {
        client.send_text(text).await;
        let frame = client.next_json().await;
        assert_eq!(
            (frame["type"].as_str(), frame["code"].as_str()),
            (Some("error"), Some(code)),
            "{text}"
        );
        assert!(frame["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    client.send(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(client.next_json().await["code"], "binary-not-supported");

    // A fragmented text message is put back together.
    client
        .send(fragment(OpCode::Data(Data::Text), r#"{"type":"pi"#, false))
        .await;
    client
        .send(fragment(
            OpCode::Data(Data::Continue),
            r#"ng","ref":"frag"}"#,
            true,
        ))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "pong", "ref": "frag"})
    );

    let seq = server
        .publish("acme", None, "after-errors", json!({}))
        .await;
    assert_eq!(client.next_event().await.0, seq);
    assert_eq!(bystander.next_event().await.0, seq);
}

#[tokio::test]
async fn an_oversized_message_closes_only_its_own_connection() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.max_frame_bytes = 1024;
    let server = TestServer::start(config);
    let (mut big, _) = server.connect(&token("acme", "alice")).await;
    let (mut fragmented, _) = server.connect(&token("acme", "alice")).await;
    let (mut bystander, _) = server.connect(&token("acme", "bob")).await;

    let padding = "x".repeat(2000);
    big.send_text(&format!(r#"{{"type":"ping","ref":"{padding}"}}"#))
        .await;
    assert_eq!(big.expect_close().await, 1009);

    // Small fragments that add up past the limit are refused the same way.
    fragmented
        .send(fragment(OpCode::Data(Data::Text), &padding[..800], false))
        .await;
    fragmented
        .send(fragment(
            OpCode::Data(Data::Continue),
            &padding[..800],
            true,
        ))
        .await;
    assert_eq!(fragmented.expect_close().await, 1009);

    let seq = server.publish("acme", None, "carry-on", json!({})).await;
    assert_eq!(bystander.next_event().await.0, seq);
}

#[tokio::test]
async fn bad_publish_requests_get_json_errors_and_store_nothing() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.max_publish_bytes = 4096;
    let server = TestServer::start(config);
    let (mut client, _) = server.connect(&token("acme", "alice")).await;
    let key = format!("Bearer {API_KEY}");
    let user_token = format!("Bearer {}", token("acme", "alice"));
    let good = json!({"account_id": "acme", "event": "e", "data": {}}).to_string();

    let cases: Vec<(Option<&str>, String, u16, &str)> = vec![
        (None, good.clone(), 401, "missing-api-key"),
        (
            Some("Bearer not-the-key"),
            good.clone(),
            401,
            "invalid-api-key",
        ),
        (Some("Basic abc"), good.clone(), 401, "missing-api-key"),
        (Some(&user_token), good.clone(), 403, "user-token-forbidden"),
        (Some(&key), "{nope".into(), 400, "invalid-body"),
        (
            Some(&key),
            json!({"event": "e"}).to_string(),
            400,
            "invalid-body",
        ),
        (
            Some(&key),
            json!({"account_id": "acme"}).to_string(),
            400,
            "invalid-body",
        ),
        (
            Some(&key),
            json!({"account_id": "acme", "event": "e", "acount": 1}).to_string(),
            400,
            "invalid-body",
        ),
        (
            Some(&key),
            json!({"account_id": 5, "event": "e"}).to_string(),
            400,
            "invalid-body",
        ),
        (
            Some(&key),
            json!({"account_id": "", "event": "e"}).to_string(),
            400,
            "invalid-field",
        ),
        (
            Some(&key),
            json!({"account_id": "acme", "user_id": "", "event": "e"}).to_string(),
            400,
            "invalid-field",
        ),
        (
            Some(&key),
            json!({"account_id": "acme", "event": "has space"}).to_string(),
            400,
            "invalid-field",
        ),
        (
            Some(&key),
            json!({"account_id": "acme", "event": "e", "data": "x".repeat(5000)}).to_string(),
            413,
            "payload-too-large",
        ),
    ];
    for (auth, body, status, code) in cases {
        let (got_status, got) = server.publish_raw(auth, body.clone()).await;
        assert_eq!(
            (got_status, got["error"]["code"].as_str()),
            (status, Some(code)),
            "body: {body:.80}"
        );
        assert!(got["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }

    let http = reqwest::Client::new();
    let response = http
        .get(server.http_url("/api/v1/publish"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "method-not-allowed"
    );
    let response = http
        .get(server.http_url("/api/v2/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "not-found"
    );

    // Nothing above was stored or delivered: the next good publish is the account's first, and
    // the next frame.
    assert_eq!(server.publish("acme", None, "e", json!({})).await, 1);
    assert_eq!(client.next_event().await.0, 1);
}

#[tokio::test]
async fn a_flooding_client_is_slowed_then_disconnected_and_others_are_untouched() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.frames_per_second = std::num::NonZeroU32::new(5).unwrap(); // a burst of 10
    let server = TestServer::start(config);
    let (mut bystander, _) = server.connect(&token("acme", "bob")).await;
    let (mut flooder, _) = server.connect(&token("acme", "alice")).await;

    for i in 0..20 {
        flooder
            .send_text(&json!({"type": "ping", "ref": i}).to_string())
            .await;
    }
    // The burst is answered; then one `rate-limited` with a hint, and the rest dropped unanswered:
    // once it has come, nothing else comes before a sentinel published then.
    let (mut pongs, mut limited, mut sentinel) = (0, Vec::new(), None);
    loop {
        let frame = flooder.next_json().await;
        match frame["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("event") if sentinel.is_some_and(|seq| frame["seq"] == seq) => break,
            _ => limited.push(frame),
        }
        if !limited.is_empty() && sentinel.is_none() {
            sentinel = Some(server.sentinel("acme", Some("alice")).await);
        }
    }
    assert!((10..20).contains(&pongs), "{pongs} pongs");
    assert_eq!(limited.len(), 1, "{limited:?}");
    assert_eq!(limited[0]["code"], "rate-limited");
    assert!(limited[0]["retry_after_ms"].as_u64().unwrap() > 0);

    // Keeping at it: disconnected with 1008.
    for i in 0..150 {
        flooder
            .send_text(&json!({"type": "ping", "ref": i}).to_string())
            .await;
    }
    let code = loop {
        match flooder.receive(common::WAIT).await {
            common::Received::Closed(Some(frame)) => break u16::from(frame.code),
            common::Received::Json(_) => continue,
            other => panic!("expected a close, got {other:?}"),
        }
    };
    assert_eq!(code, 1008);
    // The other session of the account still receives.
    let seq = server
        .publish("acme", None, "after-flood", json!(null))
        .await;
    assert_eq!(bystander.next_event().await.0, seq);
}

#[tokio::test]
async fn a_user_past_the_session_limit_is_refused_with_4004() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.max_sessions_per_user = 3;
    let server = TestServer::start(config);
    let account = common::unique("tabs");
    let mut tabs = Vec::new();
    for _ in 0..3 {
        tabs.push(server.connect(&token(&account, "alice")).await.0);
    }
    // The fourth tab: no welcome, a close that says why.
    let url = format!("{}?token={}", server.ws_url(), token(&account, "alice"));
    let mut fourth = server.try_connect(url.as_str()).await.expect("upgraded");
    match fourth.receive(common::WAIT).await {
        common::Received::Closed(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4004);
            assert_eq!(frame.reason.as_str(), "too many sessions for this user");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    // Other users are not limited by alice's tabs; closing one of hers makes room for another.
    server.connect(&token(&account, "bob")).await;
    drop(tabs.pop());
    let _again = common::eventually("no room after a tab closed", common::WAIT, || async {
        let mut client = server.try_connect(url.as_str()).await.expect("upgraded");
        match client.receive(common::WAIT).await {
            common::Received::Json(frame) if frame["type"] == "welcome" => Ok(client),
            // The closed tab's leave may not have reached the room yet.
            closed @ common::Received::Closed(_) => Err(closed),
            other => panic!("{other:?}"),
        }
    })
    .await;
    // The sessions that were there carry on.
    let seq = server
        .publish(&account, None, "still-here", json!(null))
        .await;
    for tab in &mut tabs {
        assert_eq!(tab.next_event().await.0, seq);
    }
}

/// A refused handshake is answered whole, as an HTTP error, and its connection then closes.
#[tokio::test]
async fn a_refused_handshake_is_answered_then_its_connection_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /ws?token=not-a-jwt HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the connection stays open after the refusal")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"]["code"], "malformed-token");
}

/// What the server answers to `request` (sent whole, then the writing half closed when
/// `hang_up`), as (status, JSON body).
async fn raw_answer(addr: std::net::SocketAddr, request: &[u8], hang_up: bool) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    if hang_up {
        stream.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(common::WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("an answer, then the connection closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Bodies broken below JSON — not the compression they claim, cut off halfway — and malformed
/// query strings are answered with messages written for a person, never a library's `Debug`
/// output (`Some(Custom { kind: InvalidInput, … })`).
#[tokio::test]
async fn broken_bodies_and_queries_get_messages_written_for_people() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let addr = server.addr;
    let publish = |headers: &str, body: &str| {
        format!(
            "POST /api/v1/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\n\
             Content-Type: application/json\r\nConnection: close\r\n{headers}\r\n{body}"
        )
    };
    let get = |path: &str, token: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n"
        )
    };
    let body = r#"{"account_id":"acme","event":"e"}"#;
    let user = token("acme", "alice");
    let cases = [
        (
            "claims gzip",
            publish(
                &format!(
                    "Content-Encoding: gzip\r\nContent-Length: {}\r\n",
                    body.len()
                ),
                body,
            ),
            false,
            400,
            "invalid-body",
        ),
        (
            "claims brotli",
            publish(
                &format!("Content-Encoding: br\r\nContent-Length: {}\r\n", body.len()),
                body,
            ),
            false,
            400,
            "invalid-body",
        ),
        (
            "cut off halfway",
            publish("Content-Length: 100\r\n", &body[..10]),
            true,
            400,
            "invalid-body",
        ),
        (
            "a webhook cut off halfway",
            format!(
                "POST /webhooks/facebook HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                 X-Hub-Signature-256: sha256=00\r\nContent-Length: 100\r\n\r\n{{\"obj"
            ),
            true,
            400,
            "invalid-body",
        ),
        (
            "a limit that is not a number",
            get("/api/v1/conversations?limit=ten", &user),
            false,
            400,
            "invalid-query",
        ),
        (
            "an unknown query parameter",
            get("/api/v1/notifications?unread=maybe", &user),
            false,
            400,
            "invalid-query",
        ),
    ];
    for (what, request, hang_up, status, code) in cases {
        let (got_status, body) = raw_answer(addr, request.as_bytes(), hang_up).await;
        let body: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: {body:?}"));
        assert_eq!(
            (got_status, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{what}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        for debug_shape in ["Some(", "None", "Custom", "kind:", " { ", "Error {"] {
            assert!(
                !message.contains(debug_shape),
                "{what}: {debug_shape:?} in {message:?}"
            );
        }
    }
}

/// Arrays `levels` deep.
fn nested(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

/// Posts `body` as it is, with a bearer token; returns the status and the JSON answer (`Null` if
/// there was none to parse).
async fn post_raw(api: &Api, bearer: &str, path: &str, body: String) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(api.http_url(path))
        .bearer_auth(bearer)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("an HTTP answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn assert_too_deep(status: u16, answer: &Value) {
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid-body")),
        "{answer}"
    );
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("deeper than {MAX_DEPTH}")),
        "{message}"
    );
}

#[tokio::test]
async fn json_nested_past_the_limit_is_refused_wherever_it_is_taken_in() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let alice = token("acme", "alice");
    let body = json!({"participants": ["bob"]}).to_string();
    let (_, dm) = post_raw(&server, &alice, "/api/v1/conversations", body).await;
    let dm = dm["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/conversations/{dm}/messages");

    // A REST body may nest MAX_DEPTH levels (the attachments start one level in), and no more.
    let send = |levels| format!(r#"{{"text":"deep","attachments":{}}}"#, nested(levels));
    let (status, sent) = post_raw(&server, &alice, &path, send(MAX_DEPTH - 1)).await;
    assert_eq!(status, 201, "{sent}");
    let attachments: Value = serde_json::from_str(&nested(MAX_DEPTH - 1)).unwrap();
    assert_eq!(sent["attachments"], attachments);
    for levels in [MAX_DEPTH, 200, 5000] {
        let (status, refused) = post_raw(&server, &alice, &path, send(levels)).await;
        assert_too_deep(status, &refused);
    }
    let (_, listed) = server
        .as_user(&alice, reqwest::Method::GET, &path, None)
        .await;
    assert_eq!(
        listed["messages"].as_array().unwrap().len(),
        1,
        "only the first was stored"
    );

    // A WebSocket frame: the same limit, as `invalid-frame`; the connection carries on.
    let (mut client, _) = server.connect(&alice).await;
    for levels in [MAX_DEPTH, 200] {
        let frame = format!(
            r#"{{"type":"send","conversation_id":"{dm}","text":"deep","attachments":{},"ref":{levels}}}"#,
            nested(levels)
        );
        client.send_text(&frame).await;
        let reply = loop {
            let frame = client.next_json().await;
            if frame["type"] != "event" {
                break frame;
            }
        };
        assert_eq!(
            (reply["code"].as_str(), &reply["ref"]),
            (Some("invalid-frame"), &Value::Null),
            "{reply}"
        );
    }
    client.send_text(r#"{"type":"ping","ref":"after"}"#).await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "pong", "ref": "after"})
    );

    // Publish `data`.
    let publish = format!(
        r#"{{"account_id":"acme","event":"e","data":{}}}"#,
        nested(100)
    );
    let (status, refused) = post_raw(&server, API_KEY, "/api/v1/publish", publish).await;
    assert_too_deep(status, &refused);

    // A webhook's payload (every provider parses through the same function).
    let created = server
        .integration(json!({"provider": "generic", "external_id": "deep", "account_id": "acme"}))
        .await;
    let secret = created["secret"].as_str().unwrap();
    let body = format!(
        r#"{{"type":"message","data":{{"contact_id":"c1","attachments":{}}}}}"#,
        nested(100)
    );
    let ts = now() as i64;
    let headers = [
        ("webhook-id", "wh-deep".to_owned()),
        ("webhook-timestamp", ts.to_string()),
        (
            "webhook-signature",
            sign::standard(secret, "wh-deep", ts, &body),
        ),
    ];
    let webhook_path = created["webhook_path"].as_str().unwrap();
    let (status, refused) = server.webhook(webhook_path, &headers, &body).await;
    assert_too_deep(status, &refused);
}
