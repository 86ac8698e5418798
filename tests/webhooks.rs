//! Webhook ingestion end to end: real signed requests to a real server; the owning account's
//! sessions see the messages, no other account's do, and every bad request is refused with
//! nothing stored. And the replies going out: only to addresses allowed, never through a
//! redirect, and no more once their integration is disabled.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{
    now, sign, token, unique, Client, Db, TestServer, FACEBOOK_VERIFY_TOKEN, WAIT,
};
use crate::on_each_backend;

const APP_SECRET: &str = "facebook-app-secret";

/// Reads `new-message` and `update-conversation` for one inbound message.
async fn expect_message(client: &mut Client, text: &str) -> (Value, Value) {
    let (_, event, message) = client.next_event().await;
    assert_eq!(event, "new-message");
    assert_eq!(message["text"], text, "{message}");
    let (_, event, conversation) = client.next_event().await;
    assert_eq!(event, "update-conversation");
    assert_eq!(conversation["id"], message["conversation_id"]);
    (message, conversation)
}

fn facebook_text(page: &str, psid: &str, mid: &str, text: &str) -> String {
    json!({
        "object": "page",
        "entry": [{
            "id": page,
            "time": now() * 1000,
            "messaging": [{
                "sender": {"id": psid},
                "recipient": {"id": page},
                "timestamp": now() * 1000,
                "message": {"mid": mid, "text": text}
            }]
        }]
    })
    .to_string()
}

async fn post_facebook(server: &TestServer, secret: &str, body: &str) -> (u16, Value) {
    let headers = [("x-hub-signature-256", sign::facebook(secret, body))];
    server.webhook("/webhooks/facebook", &headers, body).await
}

on_each_backend! {
    async fn facebook_messages_reach_the_owning_account_only(db) {
        let server = TestServer::on(&db);
        let (acme, globex, page) = (unique("acme"), unique("globex"), unique("page"));
        server.integration(json!({
            "provider": "facebook", "external_id": page, "account_id": acme, "secret": APP_SECRET
        })).await;
        let (mut agent, _) = server.connect(&token(&acme, "agent")).await;
        let (mut outsider, _) = server.connect(&token(&globex, "agent")).await;

        let body = facebook_text(&page, "psid-1", &unique("mid"), "Do you ship to Hanoi?");
        let (status, answer) = post_facebook(&server, APP_SECRET, &body).await;
        assert_eq!((status, answer), (200, json!({"stored": 1, "duplicates": 0})));
        let (message, conversation) = expect_message(&mut agent, "Do you ship to Hanoi?").await;
        assert_eq!(message["direction"], "inbound");
        assert_eq!(message["sender_id"], "psid-1");
        assert_eq!(conversation["contact_id"], "psid-1");
        assert_eq!(conversation["unread_count"], 1);
        assert_eq!(conversation["last_message_preview"], "Do you ship to Hanoi?");
        let sentinel = server.sentinel(&globex, Some("agent")).await;
        outsider.expect_sentinel(sentinel).await;

        // An attachment, same contact: same conversation, JSON kept as JSON.
        let attachments = json!([{"type": "image", "payload": {"url": "https://cdn.example/p.jpg"}}]);
        let body = json!({"object": "page", "entry": [{"id": page, "messaging": [{
            "sender": {"id": "psid-1"}, "recipient": {"id": page}, "timestamp": now() * 1000,
            "message": {"mid": unique("mid"), "attachments": attachments}
        }]}]}).to_string();
        assert_eq!(post_facebook(&server, APP_SECRET, &body).await.0, 200);
        let (_, _, message) = agent.next_event().await;
        assert_eq!(message["attachments"], attachments);
        assert_eq!(message["conversation_id"], conversation["id"]);
        let (_, _, conversation) = agent.next_event().await;
        assert_eq!(conversation["unread_count"], 2);

        // The account's users read it over REST; the other account cannot see it.
        let path = format!("/api/v1/conversations/{}/messages", conversation["id"].as_str().unwrap());
        let (status, page_of) = server.as_user(&token(&acme, "agent"), Method::GET, &path, None).await;
        assert_eq!(status, 200);
        assert_eq!(page_of["messages"].as_array().unwrap().len(), 2);
        let (status, body) = server.as_user(&token(&globex, "agent"), Method::GET, &path, None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not-found")));
        let sentinel = server.sentinel(&globex, Some("agent")).await;
        outsider.expect_sentinel(sentinel).await;
    }
}

#[tokio::test]
async fn facebook_refuses_bad_signatures_and_ingests_retries_once() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    server
        .integration(json!({"provider": "facebook", "external_id": "page-1", "account_id": "acme", "secret": APP_SECRET}))
        .await;
    let (mut agent, _) = server.connect(&token("acme", "agent")).await;
    let body = facebook_text("page-1", "psid-1", "mid.1", "hello");

    let (status, error) = server.webhook("/webhooks/facebook", &[], &body).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (401, Some("missing-signature"))
    );
    let (status, error) = post_facebook(&server, "wrong-secret", &body).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (401, Some("invalid-signature"))
    );
    // A signature over other bytes (the body altered in transit).
    let headers = [("x-hub-signature-256", sign::facebook(APP_SECRET, &body))];
    let tampered = body.replace("hello", "hellO");
    assert_eq!(
        server
            .webhook("/webhooks/facebook", &headers, &tampered)
            .await
            .0,
        401
    );
    let sentinel = server.sentinel("acme", Some("agent")).await;
    agent.expect_sentinel(sentinel).await;
    let (_, stats) = server
        .admin(Method::GET, "/api/v1/webhooks/stats", None)
        .await;
    assert_eq!(stats["facebook"]["signature_failures"], 3);

    // Malformed, but correctly signed: 400, nothing stored.
    let (status, error) = post_facebook(&server, APP_SECRET, "{\"object\":\"page\"").await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (400, Some("invalid-body"))
    );
    // A timestamp before 1970 (the fuzz test once found one that overflowed): 400, nothing stored.
    let body_before_1970 = json!({"object": "page", "entry": [{"id": "page-1", "messaging": [{
        "sender": {"id": "psid-1"}, "recipient": {"id": "page-1"}, "timestamp": i64::MIN,
        "message": {"mid": "mid.0", "text": "from before 1970"}
    }]}]})
    .to_string();
    let (status, error) = post_facebook(&server, APP_SECRET, &body_before_1970).await;
    assert_eq!(
        (
            status,
            error["error"]["code"].as_str(),
            error["error"]["message"]
                .as_str()
                .map(|m| m.contains("timestamp"))
        ),
        (400, Some("invalid-field"), Some(true))
    );
    // A page nobody registered.
    let other = facebook_text("page-unknown", "psid-1", "mid.x", "hi");
    let (status, error) = post_facebook(&server, APP_SECRET, &other).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("unknown-integration"))
    );
    let sentinel = server.sentinel("acme", Some("agent")).await;
    agent.expect_sentinel(sentinel).await;

    // Facebook retries: the same mid is stored and emitted once.
    assert_eq!(
        post_facebook(&server, APP_SECRET, &body).await.1["stored"],
        1
    );
    expect_message(&mut agent, "hello").await;
    let (status, again) = post_facebook(&server, APP_SECRET, &body).await;
    assert_eq!(
        (status, again),
        (200, json!({"stored": 0, "duplicates": 1}))
    );
    let sentinel = server.sentinel("acme", Some("agent")).await;
    agent.expect_sentinel(sentinel).await;
}

#[tokio::test]
async fn facebook_subscription_handshake() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let http = reqwest::Client::new();
    let url = |token: &str| {
        server.http_url(&format!(
            "/webhooks/facebook?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444"
        ))
    };
    let ok = http.get(url(FACEBOOK_VERIFY_TOKEN)).send().await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    let wrong = http.get(url("guess")).send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 403);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], "verify-token-mismatch");
    let missing = http
        .get(server.http_url("/webhooks/facebook"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 400);
}

#[tokio::test]
async fn facebook_echoes_and_receipts() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let receiver = crate::common::Receiver::start(vec![200]);
    server
        .integration(
            json!({"provider": "facebook", "external_id": "page-1", "account_id": "acme",
                            "secret": APP_SECRET, "outbound_url": receiver.url}),
        )
        .await;
    let (mut agent, _) = server.connect(&token("acme", "agent")).await;
    post_facebook(
        &server,
        APP_SECRET,
        &facebook_text("page-1", "psid-1", "mid.in", "hi"),
    )
    .await;
    let (_, conversation) = expect_message(&mut agent, "hi").await;
    let conversation_id = conversation["id"].as_str().unwrap().to_owned();

    // A reply through Switchboard, then Facebook's echo of it carrying our metadata.
    let path = format!("/api/v1/conversations/{conversation_id}/messages");
    let (status, reply) = server
        .as_user(
            &token("acme", "agent"),
            Method::POST,
            &path,
            Some(json!({"text": "We do!"})),
        )
        .await;
    assert_eq!(status, 201, "{reply}");
    expect_message(&mut agent, "We do!").await;
    let hooks = receiver.wait_for(1).await;
    let outbound: Value = serde_json::from_str(&hooks[0].1).unwrap();
    let metadata = outbound["data"]["metadata"].as_str().unwrap().to_owned();
    let (_, _, forwarded) = agent.next_event().await;
    assert_eq!(forwarded["status"], "forwarded");

    let echo = |mid: &str, text: &str, metadata: Option<&str>| {
        json!({"object": "page", "entry": [{"id": "page-1", "messaging": [{
            // Facebook's clock: a little after the reply was stored.
            "sender": {"id": "page-1"}, "recipient": {"id": "psid-1"}, "timestamp": now() * 1000 + 2000,
            "message": {"mid": mid, "text": text, "is_echo": true, "metadata": metadata}
        }]}]})
        .to_string()
    };
    assert_eq!(
        post_facebook(
            &server,
            APP_SECRET,
            &echo("mid.echo", "We do!", Some(&metadata))
        )
        .await
        .0,
        200
    );
    let (_, event, status) = agent.next_event().await;
    assert_eq!(
        (event.as_str(), &status["status"], &status["message_id"]),
        ("message-status", &json!("sent"), &reply["id"])
    );
    assert_eq!(status["provider_message_id"], "mid.echo");

    // An echo of a reply made in Facebook's own inbox is a new outbound message.
    post_facebook(
        &server,
        APP_SECRET,
        &echo("mid.native", "Sent from Messenger", None),
    )
    .await;
    let (message, _) = expect_message(&mut agent, "Sent from Messenger").await;
    assert_eq!(message["direction"], "outbound");

    let (_, page_of) = server
        .as_user(&token("acme", "agent"), Method::GET, &path, None)
        .await;
    let texts: Vec<&str> = page_of["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["Sent from Messenger", "We do!", "hi"],
        "newest first, the echo not shown twice"
    );

    // Read receipt: outbound messages up to the watermark are read.
    let read = json!({"object": "page", "entry": [{"id": "page-1", "messaging": [{
        "sender": {"id": "psid-1"}, "recipient": {"id": "page-1"}, "timestamp": now() * 1000,
        "read": {"watermark": now() * 1000 + 1000}
    }]}]})
    .to_string();
    assert_eq!(post_facebook(&server, APP_SECRET, &read).await.0, 200);
    let (_, event, receipt) = agent.next_event().await;
    assert_eq!(
        (
            event.as_str(),
            &receipt["status"],
            &receipt["conversation_id"]
        ),
        ("message-status", &json!("read"), &json!(conversation_id))
    );
    let (_, page_of) = server
        .as_user(&token("acme", "agent"), Method::GET, &path, None)
        .await;
    assert_eq!(page_of["messages"][1]["status"], "read");
}

fn zalo_text(oa: &str, user: &str, msg_id: &str, text: &str, timestamp: &str) -> String {
    json!({
        "app_id": "zalo-app-1",
        "user_id_by_app": "552177279717587730",
        "event_name": "user_send_text",
        "timestamp": timestamp,
        "sender": {"id": user},
        "recipient": {"id": oa},
        "message": {"text": text, "msg_id": msg_id}
    })
    .to_string()
}

#[tokio::test]
async fn zalo_messages_and_follows_with_verified_signatures() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let oa_secret = "zalo-oa-secret-key";
    server
        .integration(
            json!({"provider": "zalo", "external_id": "oa-1", "account_id": "acme",
                            "secret": oa_secret, "app_id": "zalo-app-1"}),
        )
        .await;
    let (mut agent, _) = server.connect(&token("acme", "agent")).await;
    let (mut outsider, _) = server.connect(&token("globex", "agent")).await;
    let ts = (now() * 1000).to_string();
    let post = |body: String, signature: String| {
        let server = &server;
        async move {
            server
                .webhook(
                    "/webhooks/zalo",
                    &[("x-zevent-signature", signature)],
                    &body,
                )
                .await
        }
    };

    let body = zalo_text("oa-1", "zuser-1", "zmsg-1", "Xin chào", &ts);
    let good = sign::zalo("zalo-app-1", &body, &ts, oa_secret);
    assert_eq!(
        post(body.clone(), good.clone()).await,
        (200, json!({"stored": 1, "duplicates": 0}))
    );
    let (message, _) = expect_message(&mut agent, "Xin chào").await;
    assert_eq!(message["sender_id"], "zuser-1");
    // Zalo retries: ingested once.
    assert_eq!(post(body.clone(), good).await.1["duplicates"], 1);
    // Wrong key; missing header.
    let bad = sign::zalo("zalo-app-1", &body, &ts, "not-the-key");
    assert_eq!(
        post(body.clone(), bad).await.1["error"]["code"],
        "invalid-signature"
    );
    let (status, _) = server.webhook("/webhooks/zalo", &[], &body).await;
    assert_eq!(status, 401);
    // An OA nobody registered.
    let stranger = zalo_text("oa-unknown", "zuser-1", "zmsg-9", "hi", &ts);
    let signature = sign::zalo("zalo-app-1", &stranger, &ts, oa_secret);
    assert_eq!(post(stranger, signature).await.0, 404);

    let image = json!({
        "app_id": "zalo-app-1", "event_name": "user_send_image", "timestamp": ts,
        "sender": {"id": "zuser-1"}, "recipient": {"id": "oa-1"},
        "message": {"msg_id": "zmsg-2", "attachments": [{"type": "image", "payload": {"url": "https://z.example/i.jpg"}}]}
    })
    .to_string();
    let signature = sign::zalo("zalo-app-1", &image, &ts, oa_secret);
    assert_eq!(post(image, signature).await.0, 200);
    let (_, _, message) = agent.next_event().await;
    assert_eq!(message["attachments"][0]["type"], "image");
    agent.next_event().await;

    let follow = json!({
        "app_id": "zalo-app-1", "event_name": "follow", "timestamp": ts, "oa_id": "oa-1",
        "follower": {"id": "zuser-2"}, "source": "oa_profile"
    })
    .to_string();
    let signature = sign::zalo("zalo-app-1", &follow, &ts, oa_secret);
    assert_eq!(post(follow, signature).await.0, 200);
    let (_, event, data) = agent.next_event().await;
    assert_eq!(
        (event.as_str(), &data["contact_id"], &data["following"]),
        ("contact-follow", &json!("zuser-2"), &json!(true))
    );
    let sentinel = server.sentinel("globex", Some("agent")).await;
    outsider.expect_sentinel(sentinel).await;
}

#[tokio::test]
async fn generic_webhooks_verify_rotate_and_refuse_replays() {
    let db = Db::sqlite();
    let mut config = crate::common::config(&db);
    config.webhooks.max_body_bytes = 2048;
    let server = TestServer::start(config);
    let created = server
        .integration(json!({"provider": "generic", "external_id": "shop", "account_id": "acme"}))
        .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let path = created["webhook_path"].as_str().unwrap().to_owned();
    let (mut agent, _) = server.connect(&token("acme", "agent")).await;
    let (mut outsider, _) = server.connect(&token("globex", "agent")).await;

    let body =
        json!({"type": "message", "data": {"contact_id": "cust-42", "text": "Where is my order?"}})
            .to_string();
    let headers = |id: &str, ts: i64, signature: String| {
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", signature),
        ]
    };
    let ts = now() as i64;
    let h = headers("wh_1", ts, sign::standard(&secret, "wh_1", ts, &body));
    assert_eq!(
        server.webhook(&path, &h, &body).await,
        (200, json!({"stored": 1, "duplicates": 0}))
    );
    expect_message(&mut agent, "Where is my order?").await;
    let sentinel = server.sentinel("globex", Some("agent")).await;
    outsider.expect_sentinel(sentinel).await;
    // A replay of the same webhook-id.
    assert_eq!(server.webhook(&path, &h, &body).await.1["duplicates"], 1);

    // Key rotation: the sender signs with the old and the new key; Switchboard has the new.
    let (status, rotated) = server
        .admin(
            Method::POST,
            &format!(
                "/api/v1/integrations/{}/rotate-secret",
                created["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    let body2 =
        json!({"type": "message", "data": {"contact_id": "cust-42", "text": "Hello?"}}).to_string();
    let both = format!(
        "{} {}",
        sign::standard(&secret, "wh_2", ts, &body2),
        sign::standard(&new_secret, "wh_2", ts, &body2)
    );
    assert_eq!(
        server
            .webhook(&path, &headers("wh_2", ts, both), &body2)
            .await
            .0,
        200
    );
    expect_message(&mut agent, "Hello?").await;
    let old_only = sign::standard(&secret, "wh_3", ts, &body2);
    let (status, error) = server
        .webhook(&path, &headers("wh_3", ts, old_only), &body2)
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (401, Some("invalid-signature"))
    );

    // Outside the replay window, correctly signed.
    let old = ts - 3600;
    let stale = headers(
        "wh_4",
        old,
        sign::standard(&new_secret, "wh_4", old, &body2),
    );
    let (status, error) = server.webhook(&path, &stale, &body2).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (401, Some("timestamp-out-of-window"))
    );
    // A timestamp whose distance from now does not fit in 64 bits (once an overflow).
    let absurd = headers("wh_4", i64::MIN, "v1,AAAA".into());
    let (status, error) = server.webhook(&path, &absurd, &body2).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (401, Some("timestamp-out-of-window"))
    );
    // Missing headers; unknown integration; malformed but signed; oversized.
    assert_eq!(
        server.webhook(&path, &[], &body2).await.1["error"]["code"],
        "missing-signature"
    );
    let good = headers("wh_5", ts, sign::standard(&new_secret, "wh_5", ts, &body2));
    assert_eq!(
        server
            .webhook("/webhooks/generic/int_nope", &good, &body2)
            .await
            .0,
        404
    );
    let junk = r#"{"type":"message","data":{"text":"no contact"}}"#;
    let signed_junk = headers("wh_6", ts, sign::standard(&new_secret, "wh_6", ts, junk));
    assert_eq!(server.webhook(&path, &signed_junk, junk).await.0, 400);
    let big = json!({"type": "message", "data": {"contact_id": "c", "text": "x".repeat(3000)}})
        .to_string();
    let signed_big = headers("wh_7", ts, sign::standard(&new_secret, "wh_7", ts, &big));
    let (status, error) = server.webhook(&path, &signed_big, &big).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (413, Some("payload-too-large"))
    );
    let sentinel = server.sentinel("acme", Some("agent")).await;
    agent.expect_sentinel(sentinel).await;

    // Disabled: its webhooks find no integration.
    server
        .admin(
            Method::POST,
            &format!(
                "/api/v1/integrations/{}/disable",
                created["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    let fresh = headers("wh_8", ts, sign::standard(&new_secret, "wh_8", ts, &body2));
    assert_eq!(server.webhook(&path, &fresh, &body2).await.0, 404);
}

// Outbound replies and the addresses they may reach. These run on SQLite only: on a shared
// PostgreSQL database every test's server is a node of one cluster for outbound deliveries (any
// of them may send any test's reply, with its own settings); `outbound_cluster` tests that.

/// A generic integration of a fresh account sending its replies to `url`.
async fn replying_to(server: &TestServer, url: &str) -> Value {
    server
        .integration(json!({"provider": "generic", "external_id": unique("shop"),
                            "account_id": unique("acme"), "outbound_url": url}))
        .await
}

#[tokio::test]
async fn outbound_urls_into_the_servers_own_networks_are_refused() {
    let db = Db::sqlite();
    let mut config = crate::common::config(&db);
    config.outbound.allow_private = false;
    let server = TestServer::start(config);
    let create = |url: &str| {
        let body = json!({"provider": "generic", "external_id": unique("shop"),
                          "account_id": "acme", "outbound_url": url});
        server.admin(Method::POST, "/api/v1/integrations", Some(body))
    };
    for url in [
        "http://127.0.0.1:8080/hooks",
        "http://localhost/hooks",
        "http://LocalHost./hooks",
        "http://[::1]/hooks",
        "http://0x7f000001/hooks",
        "http://2130706433/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://10.0.0.7/hooks",
        "http://192.168.1.20/hooks",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/hooks",
        "http://0.0.0.0/hooks",
        "file:///etc/passwd",
    ] {
        let (status, error) = create(url).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (400, Some("invalid-field")),
            "{url}: {error}"
        );
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("outbound_url"),
            "{error}"
        );
    }
    for url in [
        "https://app.example.com/hooks/switchboard",
        "http://93.184.216.34:8080/hooks",
    ] {
        assert_eq!(create(url).await.0, 201, "{url}");
    }

    // On premises (as the tests' receivers are): loopback and private networks, but never the
    // metadata service.
    let server = TestServer::on(&db);
    let (status, _) = server
        .admin(
            Method::POST,
            "/api/v1/integrations",
            Some(json!({"provider": "generic", "external_id": unique("shop"),
                        "account_id": "acme", "outbound_url": "http://127.0.0.1:9/hooks"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, error) = server
        .admin(
            Method::POST,
            "/api/v1/integrations",
            Some(json!({"provider": "generic", "external_id": unique("shop"),
                        "account_id": "acme", "outbound_url": "http://169.254.169.254/"})),
        )
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (400, Some("invalid-field"))
    );
}

#[tokio::test]
async fn outbound_requests_connect_only_to_allowed_addresses() {
    let db = Db::sqlite();
    let receiver = crate::common::Receiver::start(vec![200]);
    let port = receiver
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    // Created while private networks were allowed; then the server is restarted without.
    let (by_name, by_literal) = {
        let server = TestServer::on(&db);
        let by_name = replying_to(&server, &format!("http://localhost:{port}/hooks")).await;
        let by_literal = replying_to(&server, &format!("http://127.0.0.1:{port}/hooks")).await;
        (by_name, by_literal)
    };
    let mut config = crate::common::config(&db);
    config.outbound.allow_private = false;
    let server = TestServer::start(config);

    for (integration, why) in [
        // The name is resolved, and what it resolves to is refused: nothing is connected to.
        (
            &by_name,
            "localhost resolves only to addresses that may not be reached",
        ),
        (&by_literal, "127.0.0.1 is a loopback or private address"),
    ] {
        let account = integration["account_id"].as_str().unwrap();
        let conversation = server.conversation_from(integration, "c1").await;
        let message = server.reply(account, "agent", &conversation, "hi").await;
        let id = integration["id"].as_str().unwrap();
        let delivery = server
            .delivery_when(id, message["id"].as_str().unwrap(), "failed", WAIT)
            .await;
        let error = delivery["last_error"].as_str().unwrap();
        assert!(error.contains(why), "{delivery}");
    }
    assert!(receiver.received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn outbound_redirects_are_not_followed_and_answers_are_kept_short() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let answer = format!(
        "moved\r\n[ERROR] forged log line\u{1b}[2J\u{202e}{}",
        "x".repeat(100_000)
    );
    let receiver = crate::common::Receiver::answering(vec![302], &answer);
    let integration = replying_to(&server, &receiver.url).await;
    let account = integration["account_id"].as_str().unwrap();
    let conversation = server.conversation_from(&integration, "c1").await;
    let message = server.reply(account, "agent", &conversation, "hi").await;

    let delivery = server
        .delivery_when(
            integration["id"].as_str().unwrap(),
            message["id"].as_str().unwrap(),
            "failed",
            WAIT,
        )
        .await;
    assert_eq!(delivery["attempts"], 3, "{delivery}");
    assert_eq!(
        *receiver.requests.lock().unwrap(),
        vec!["POST /hooks/switchboard"; 3],
        "the redirect to /internal/admin was never followed"
    );
    let error = delivery["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("HTTP 302 Found: moved  [ERROR] forged log line [2J xxx"),
        "{error}"
    );
    assert!(error.chars().count() <= 230, "{error}");
    assert!(
        !error.chars().any(|c| c.is_control() || c == '\u{202e}'),
        "{error}"
    );
}

#[tokio::test]
async fn a_disabled_integration_sends_nothing_more() {
    let db = Db::sqlite();
    let mut config = crate::common::config(&db);
    // A failed attempt is retried only after an hour: long past the test.
    config.outbound.retry_base = Duration::from_secs(3600);
    config.outbound.scan_interval = Duration::from_millis(100);
    let server = TestServer::start(config);
    let receiver = crate::common::Receiver::start(vec![500, 200]);
    let integration = replying_to(&server, &receiver.url).await;
    let (id, account) = (
        integration["id"].as_str().unwrap(),
        integration["account_id"].as_str().unwrap(),
    );
    let conversation = server.conversation_from(&integration, "c1").await;
    let (mut agent, _) = server.connect(&token(account, "agent")).await;
    let first = server.reply(account, "agent", &conversation, "one").await;
    receiver.wait_for(1).await;
    let pending = server
        .delivery_when(id, first["id"].as_str().unwrap(), "pending", WAIT)
        .await;
    assert_eq!(pending["attempts"], 1, "{pending}");

    let (status, _) = server
        .admin(
            Method::POST,
            &format!("/api/v1/integrations/{id}/disable"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    // The retry due in an hour ends now; a reply after the disabling is never sent either.
    let second = server.reply(account, "agent", &conversation, "two").await;
    for message in [&first, &second] {
        let failed = server
            .delivery_when(id, message["id"].as_str().unwrap(), "failed", WAIT)
            .await;
        assert_eq!(failed["last_error"], "integration disabled", "{failed}");
    }
    let mut failed = Vec::new();
    while failed.len() < 2 {
        let (_, event, data) = agent.next_event().await;
        if event == "message-status" {
            assert_eq!(data["status"], "failed", "{data}");
            failed.push(data["message_id"].clone());
        }
    }
    failed.sort_by_key(|id| id.to_string());
    let mut expected = vec![first["id"].clone(), second["id"].clone()];
    expected.sort_by_key(|id| id.to_string());
    assert_eq!(failed, expected);
    assert_eq!(
        receiver.received.lock().unwrap().len(),
        1,
        "nothing sent after the disabling"
    );
}

/// What a generic webhook's `webhook-signature` may list: 8 signatures, 1024 bytes.
const MAX_SIGNATURES: usize = 8;

#[tokio::test]
async fn a_generic_webhook_listing_too_many_signatures_is_refused_before_its_body_is_read() {
    let db = Db::sqlite();
    let mut config = crate::common::config(&db);
    config.webhooks.max_body_bytes = 2048;
    let server = TestServer::start(config);
    let created = server
        .integration(json!({"provider": "generic", "external_id": "shop", "account_id": "acme"}))
        .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let path = created["webhook_path"].as_str().unwrap().to_owned();
    let (mut agent, _) = server.connect(&token("acme", "agent")).await;
    let ts = now() as i64;
    let post = |id: &'static str, signatures: String, body: String| {
        let (server, path) = (&server, &path);
        async move {
            let headers = [
                ("webhook-id", id.to_owned()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", signatures),
            ];
            let (status, answer) = server.webhook(path, &headers, &body).await;
            let code = answer["error"]["code"].as_str().map(str::to_owned);
            let message = answer["error"]["message"].as_str().unwrap_or("").to_owned();
            (status, code, message)
        }
    };
    let body = |text: &str| {
        json!({"type": "message", "data": {"contact_id": "cust-1", "text": text}}).to_string()
    };

    // Eight signatures, the good one last: accepted.
    let good = sign::standard(&secret, "wh_8", ts, &body("eight"));
    let mut eight = vec!["v1,AAAA"; MAX_SIGNATURES - 1];
    eight.push(&good);
    assert_eq!(post("wh_8", eight.join(" "), body("eight")).await.0, 200);
    expect_message(&mut agent, "eight").await;

    // Nine, the good one among them: refused, with the limit in the message.
    let good = sign::standard(&secret, "wh_9", ts, &body("nine"));
    let mut nine = vec!["v1,AAAA"; MAX_SIGNATURES];
    nine.push(&good);
    let (status, code, message) = post("wh_9", nine.join(" "), body("nine")).await;
    assert_eq!((status, code.as_deref()), (401, Some("invalid-signature")));
    assert!(message.contains("more than 8 signatures"), "{message}");

    // The reproduction's header (15,000 entries) with a body over the limit: refused for the
    // header, so before the body was read (which would answer 413) or any HMAC computed.
    let flood = vec!["v1,AAAA"; 15_000].join(" ");
    let (status, code, message) = post("wh_x", flood, "x".repeat(4096)).await;
    assert_eq!((status, code.as_deref()), (401, Some("invalid-signature")));
    assert!(message.contains("more than 8 signatures"), "{message}");
    // A header over 1024 bytes, however few entries.
    let long = format!("{} v1,{}", good, "A".repeat(1024));
    let (status, code, _) = post("wh_y", long, body("long")).await;
    assert_eq!((status, code.as_deref()), (401, Some("invalid-signature")));

    let (_, stats) = server
        .admin(Method::GET, "/api/v1/webhooks/stats", None)
        .await;
    assert_eq!(stats["generic"]["signature_failures"], 3);
    let sentinel = server.sentinel("acme", Some("agent")).await;
    agent.expect_sentinel(sentinel).await;
}

/// The server binary on a fresh SQLite file, with one HTTP worker and 1 MiB webhook bodies.
fn one_worker_server(
    dir: &std::path::Path,
) -> (crate::common::process::Process, crate::common::Api) {
    crate::common::process::Switchboard::new()
        .in_dir(dir)
        .keys()
        .env("SWITCHBOARD_WORKERS", "1")
        .env("SWITCHBOARD_MAX_WEBHOOK_BYTES", (1024 * 1024).to_string())
        .serve()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_webhooks_of_a_megabyte_with_15000_signatures_leave_the_worker_answering() {
    let dir = tempfile::tempdir().unwrap();
    let (_process, server) = one_worker_server(dir.path());
    let created = server
        .integration(json!({"provider": "generic", "external_id": "shop", "account_id": "acme"}))
        .await;
    let path = created["webhook_path"].as_str().unwrap().to_owned();
    // The reported reproduction: a 1 MiB body, 15,000 signatures (each once an HMAC of it).
    let text = "x".repeat(1024 * 1024 - 100);
    let body = json!({"type": "message", "data": {"contact_id": "c", "text": text}}).to_string();
    let flood = vec!["v1,AAAA"; 15_000].join(" ");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let in_flight: Vec<_> = (0..4)
        .map(|i| {
            let request = http
                .post(server.http_url(&path))
                .header("webhook-id", format!("wh_{i}"))
                .header("webhook-timestamp", now().to_string())
                .header("webhook-signature", flood.clone())
                .body(body.clone());
            tokio::spawn(async move {
                let response = request.send().await.expect("webhook answered");
                let status = response.status().as_u16();
                let answer: Value = response.json().await.unwrap_or(Value::Null);
                (status, answer["error"]["code"].as_str().map(str::to_owned))
            })
        })
        .collect();
    // While they are in flight, the one worker answers `/healthz` (each within a generous 2 s;
    // before the fix it was busy for seconds per request).
    let health = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for _ in 0..50 {
        if in_flight.iter().all(|task| task.is_finished()) {
            break;
        }
        let answer = health.get(server.http_url("/healthz")).send().await;
        assert_eq!(
            answer.map(|r| r.status().as_u16()).ok(),
            Some(200),
            "/healthz not answered while the webhooks were in flight"
        );
    }
    for task in in_flight {
        assert_eq!(
            task.await.unwrap(),
            (401, Some("invalid-signature".to_owned()))
        );
    }
    let (_, stats) = server
        .admin(Method::GET, "/api/v1/webhooks/stats", None)
        .await;
    assert_eq!(stats["generic"]["signature_failures"], 4);
}

#[tokio::test]
async fn a_facebook_webhook_is_verified_with_the_secret_of_the_pages_it_names_only() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    for (page, account, secret) in [
        ("page-a", "acme", "secret-of-app-a"),
        ("page-b", "globex", "secret-of-app-b"),
        ("page-c", "initech", "secret-of-app-c"),
        ("page-d", "umbrella", "secret-of-app-c"),
    ] {
        server
            .integration(json!({"provider": "facebook", "external_id": page,
                                "account_id": account, "secret": secret}))
            .await;
    }
    let (mut acme, _) = server.connect(&token("acme", "agent")).await;
    let (mut globex, _) = server.connect(&token("globex", "agent")).await;
    let code = |answer: &(u16, Value)| {
        (
            answer.0,
            answer.1["error"]["code"].as_str().map(str::to_owned),
        )
    };
    let refused = |code: &str| (401, Some(code.to_owned()));

    // Page A's webhook signed with page B's app secret (another registered app): refused.
    let for_a = facebook_text("page-a", "psid-1", "mid.a1", "hello A");
    let answer = post_facebook(&server, "secret-of-app-b", &for_a).await;
    assert_eq!(code(&answer), refused("invalid-signature"));

    // Pages of two apps in one webhook: one app signs it, so it cannot be for both.
    let mixed = json!({"object": "page", "entry": [
        {"id": "page-a", "messaging": [{"sender": {"id": "psid-1"}, "recipient": {"id": "page-a"},
            "timestamp": now() * 1000, "message": {"mid": "mid.a2", "text": "to A"}}]},
        {"id": "page-b", "messaging": [{"sender": {"id": "psid-2"}, "recipient": {"id": "page-b"},
            "timestamp": now() * 1000, "message": {"mid": "mid.b2", "text": "to B"}}]}
    ]})
    .to_string();
    let answer = post_facebook(&server, "secret-of-app-a", &mixed).await;
    assert_eq!(code(&answer), refused("invalid-signature"));
    assert!(answer.1["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("different app secrets")));
    let sentinel = server.sentinel("acme", Some("agent")).await;
    acme.expect_sentinel(sentinel).await;
    let sentinel = server.sentinel("globex", Some("agent")).await;
    globex.expect_sentinel(sentinel).await;

    // A page nobody registered: 404, whatever the signature.
    let stranger = facebook_text("page-z", "psid-1", "mid.z", "hi");
    let answer = post_facebook(&server, "not-a-secret", &stranger).await;
    assert_eq!(code(&answer), (404, Some("unknown-integration".to_owned())));
    // More pages than one webhook may name.
    let many: Vec<Value> = (0..101).map(|i| json!({"id": format!("p{i}")})).collect();
    let many = json!({"object": "page", "entry": many}).to_string();
    let answer = post_facebook(&server, "secret-of-app-a", &many).await;
    assert_eq!(code(&answer), (400, Some("invalid-field".to_owned())));

    let (_, stats) = server
        .admin(Method::GET, "/api/v1/webhooks/stats", None)
        .await;
    assert_eq!(stats["facebook"]["signature_failures"], 2);

    // Correctly signed, it goes through; pages of one app share its secret and are both served.
    let answer = post_facebook(&server, "secret-of-app-a", &for_a).await;
    assert_eq!(answer, (200, json!({"stored": 1, "duplicates": 0})));
    expect_message(&mut acme, "hello A").await;
    let both = json!({"object": "page", "entry": [
        {"id": "page-c", "messaging": [{"sender": {"id": "psid-3"}, "recipient": {"id": "page-c"},
            "timestamp": now() * 1000, "message": {"mid": "mid.c", "text": "to C"}}]},
        {"id": "page-d", "messaging": [{"sender": {"id": "psid-4"}, "recipient": {"id": "page-d"},
            "timestamp": now() * 1000, "message": {"mid": "mid.d", "text": "to D"}}]},
        {"id": "page-z", "messaging": []}
    ]})
    .to_string();
    let answer = post_facebook(&server, "secret-of-app-c", &both).await;
    assert_eq!(answer, (200, json!({"stored": 2, "duplicates": 0})));
    let sentinel = server.sentinel("acme", Some("agent")).await;
    acme.expect_sentinel(sentinel).await;
    let sentinel = server.sentinel("globex", Some("agent")).await;
    globex.expect_sentinel(sentinel).await;
}
