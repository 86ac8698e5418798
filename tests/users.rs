//! User-facing realtime: direct and group messages with acks, read receipts and unread counts,
//! notifications, presence and typing — over real sockets and HTTP, in and across accounts.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{token, unique, Api, Client, Db, TestServer};
use crate::on_each_backend;

/// Presence is announced by timers — changes gathered for 100 ms, offline once the grace is over —
/// so a wrong announcement would come after a sentinel sent at once: "nothing announced" is a
/// silence longer than they are. (Everything else here is asserted with a sentinel.)
const QUIET: Duration = Duration::from_millis(300);

async fn open(server: &TestServer, account: &str, user: &str, others: &[&str]) -> (u16, String) {
    let (status, conversation) = server
        .as_user(
            &token(account, user),
            Method::POST,
            "/api/v1/conversations",
            Some(json!({"participants": others})),
        )
        .await;
    (
        status,
        conversation["id"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Reads the next `new-message` and `update-conversation`; returns (new-message seq, message,
/// conversation view).
async fn message_events(client: &mut Client) -> (u64, Value, Value) {
    let (seq, event, message) = client.next_event().await;
    assert_eq!(event, "new-message", "{message}");
    let (_, event, conversation) = client.next_event().await;
    assert_eq!(event, "update-conversation");
    (seq, message, conversation)
}

fn send_frame(conversation: &str, text: &str, client_msg_id: &str, reference: u64) -> String {
    json!({"type": "send", "conversation_id": conversation, "text": text,
           "client_msg_id": client_msg_id, "ref": reference})
    .to_string()
}

/// An ack (or error) and `n` events, in whatever order they come.
async fn ack_and_events(client: &mut Client, n: usize) -> (Value, Vec<Value>) {
    let (mut reply, mut events) = (None, Vec::new());
    while reply.is_none() || events.len() < n {
        let frame = client.next_json().await;
        if frame["type"] == "event" {
            events.push(frame);
        } else {
            reply = Some(frame);
        }
    }
    (reply.unwrap(), events)
}

/// The next frame that is not an event (acks and errors come between events).
async fn next_reply(client: &mut Client) -> (Value, Vec<Value>) {
    let mut events = Vec::new();
    loop {
        let frame = client.next_json().await;
        if frame["type"] == "event" {
            events.push(frame);
        } else {
            return (frame, events);
        }
    }
}

#[tokio::test]
async fn a_direct_message_reaches_every_tab_of_both_participants_and_no_one_else() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let (status, dm) = open(&server, "acme", "alice", &["bob"]).await;
    assert_eq!(status, 201);
    assert_eq!(
        open(&server, "acme", "bob", &["alice"]).await,
        (200, dm.clone()),
        "one DM per pair"
    );

    let (mut alice, _) = server.connect(&token("acme", "alice")).await;
    let (mut alice_tab, _) = server.connect(&token("acme", "alice")).await;
    let (mut bob, _) = server.connect(&token("acme", "bob")).await;
    let (mut bob_tab, _) = server.connect(&token("acme", "bob")).await;
    let (mut carol, _) = server.connect(&token("acme", "carol")).await;
    let (mut namesake, _) = server.connect(&token("globex", "alice")).await;

    alice.send_text(&send_frame(&dm, "lunch?", "c-1", 7)).await;
    // The ack and the sender's own events come in either order.
    let (ack, events) = ack_and_events(&mut alice, 2).await;
    assert_eq!(
        (
            ack["type"].as_str(),
            &ack["ref"],
            ack["conversation_id"].as_str()
        ),
        (Some("ack"), &json!(7), Some(dm.as_str()))
    );
    let message_id = ack["message_id"].as_str().unwrap().to_owned();
    let sender_events = (
        events[0]["seq"].as_u64().unwrap(),
        events[0]["data"].clone(),
        events[1]["data"].clone(),
    );
    assert_eq!(
        (events[0]["event"].as_str(), events[1]["event"].as_str()),
        (Some("new-message"), Some("update-conversation"))
    );
    assert_eq!(
        sender_events.0,
        ack["seq"].as_u64().unwrap(),
        "the ack's seq is the sender's new-message"
    );
    assert_eq!(sender_events.1["id"], message_id.as_str());
    assert_eq!(
        sender_events.2["unread_count"], 0,
        "own messages are not unread"
    );

    let (_, message, _) = message_events(&mut alice_tab).await;
    assert_eq!(message["id"], message_id.as_str());
    for tab in [&mut bob, &mut bob_tab] {
        let (_, message, conversation) = message_events(tab).await;
        assert_eq!(
            (message["text"].as_str(), message["sender_id"].as_str()),
            (Some("lunch?"), Some("alice"))
        );
        assert_eq!(conversation["unread_count"], 1);
        assert_eq!(conversation["participants"], json!(["alice", "bob"]));
    }
    let sentinel = server.sentinel("acme", Some("carol")).await;
    carol.expect_sentinel(sentinel).await;
    let sentinel = server.sentinel("globex", Some("alice")).await;
    namesake.expect_sentinel(sentinel).await;

    // A retry after a lost ack: the same ack, nothing stored or delivered again.
    alice.send_text(&send_frame(&dm, "lunch?", "c-1", 8)).await;
    let (again, _) = next_reply(&mut alice).await;
    assert_eq!(
        (
            &again["message_id"],
            &again["seq"],
            &again["duplicate"],
            &again["ref"]
        ),
        (&ack["message_id"], &ack["seq"], &json!(true), &json!(8))
    );
    let sentinel = server.sentinel("acme", Some("bob")).await;
    bob.expect_sentinel(sentinel).await;

    // Outsiders can neither read nor post.
    let path = format!("/api/v1/conversations/{dm}/messages");
    for (account, user) in [("acme", "carol"), ("globex", "alice")] {
        let (status, _) = server
            .as_user(&token(account, user), Method::GET, &path, None)
            .await;
        assert_eq!(status, 404);
        let body = Some(json!({"text": "hi"}));
        assert_eq!(
            server
                .as_user(&token(account, user), Method::POST, &path, body)
                .await
                .0,
            404
        );
    }
    carol.send_text(&send_frame(&dm, "let me in", "x", 9)).await;
    let (refused, _) = next_reply(&mut carol).await;
    assert_eq!(
        (refused["code"].as_str(), &refused["ref"]),
        (Some("not-a-participant"), &json!(9))
    );
    let sentinel = server.sentinel("acme", Some("bob")).await;
    bob.expect_sentinel(sentinel).await;
}

#[tokio::test]
async fn send_errors_say_why() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let (_, dm) = open(&server, "acme", "alice", &["bob"]).await;
    let (mut alice, _) = server.connect(&token("acme", "alice")).await;

    let cases = [
        (
            json!({"type": "send", "conversation_id": dm, "text": "  ", "ref": 1}),
            "empty-text",
        ),
        (
            json!({"type": "send", "conversation_id": dm, "text": "x".repeat(10_001), "ref": 2}),
            "text-too-long",
        ),
        (
            json!({"type": "send", "conversation_id": "conv_nope", "text": "hi", "ref": 3}),
            "not-a-participant",
        ),
        (
            json!({"type": "send", "text": "hi", "ref": 4}),
            "invalid-frame",
        ),
        (
            json!({"type": "read", "conversation_id": dm, "up_to": "msg_nope", "ref": 5}),
            "unknown-message",
        ),
    ];
    for (frame, code) in cases {
        alice.send_text(&frame.to_string()).await;
        let (reply, _) = next_reply(&mut alice).await;
        assert_eq!(reply["code"], code, "{frame:.80}");
    }

    // Flooding: past the burst, `rate-limited` with a retry hint; the connection stays.
    let mut limited = None;
    for i in 0..40 {
        alice
            .send_text(&send_frame(&dm, "spam", &format!("s-{i}"), 100 + i))
            .await;
    }
    for _ in 0..40 {
        let (reply, _) = next_reply(&mut alice).await;
        if reply["code"] == "rate-limited" {
            limited = Some(reply);
        }
    }
    let limited = limited.expect("some sends were rate limited");
    assert!(
        limited["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{limited}"
    );
    alice.send_text(r#"{"type":"ping","ref":"still"}"#).await;
    let (pong, _) = next_reply(&mut alice).await;
    assert_eq!(pong, json!({"type": "pong", "ref": "still"}));
}

#[tokio::test]
async fn read_receipts_and_unread_counts_agree_across_tabs_and_rest() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let (_, dm) = open(&server, "acme", "alice", &["bob"]).await;
    let (mut alice, _) = server.connect(&token("acme", "alice")).await;
    let (mut bob, _) = server.connect(&token("acme", "bob")).await;
    let (mut bob_tab, _) = server.connect(&token("acme", "bob")).await;
    let path = format!("/api/v1/conversations/{dm}/messages");

    // Alice sends two over REST, one over the socket.
    let mut ids = Vec::new();
    for text in ["one", "two"] {
        let (status, sent) = server
            .as_user(
                &token("acme", "alice"),
                Method::POST,
                &path,
                Some(json!({"text": text})),
            )
            .await;
        assert_eq!(status, 201);
        ids.push(sent["id"].as_str().unwrap().to_owned());
    }
    alice.send_text(&send_frame(&dm, "three", "c-3", 1)).await;
    let (ack, _) = ack_and_events(&mut alice, 0).await;
    ids.push(ack["message_id"].as_str().unwrap().to_owned());

    let mut live_ids = Vec::new();
    let mut unread = 0;
    for _ in 0..3 {
        let (_, message, conversation) = message_events(&mut bob).await;
        live_ids.push(message["id"].as_str().unwrap().to_owned());
        unread = conversation["unread_count"].as_i64().unwrap();
    }
    assert_eq!((live_ids.clone(), unread), (ids.clone(), 3));
    for _ in 0..3 {
        message_events(&mut bob_tab).await;
    }

    // Bob reads up to "two" on one tab.
    bob.send_text(
        &json!({"type": "read", "conversation_id": dm, "up_to": ids[1], "ref": "r"}).to_string(),
    )
    .await;
    // The ack and the reader's own update come in either order.
    let (ack, events) = ack_and_events(&mut bob, 1).await;
    assert_eq!(
        (ack["type"].as_str(), &ack["ref"]),
        (Some("ack"), &json!("r"))
    );
    let (_, _, other_tab) = bob_tab.next_event().await;
    for conversation in [&events[0]["data"], &other_tab] {
        assert_eq!(conversation["unread_count"], 1, "{conversation}");
    }
    assert_eq!(events[0]["event"], "update-conversation");
    let drain = loop {
        let (_, event, data) = alice.next_event().await;
        if event == "message-read" {
            break data;
        }
    };
    assert_eq!(
        drain,
        json!({"conversation_id": dm, "user_id": "bob", "up_to": ids[1]})
    );

    // REST agrees with what the sockets were told.
    let (_, listed) = server
        .as_user(
            &token("acme", "bob"),
            Method::GET,
            "/api/v1/conversations",
            None,
        )
        .await;
    let mine = listed["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == dm.as_str())
        .unwrap()
        .clone();
    assert_eq!(mine["unread_count"], 1);
    let (_, messages) = server
        .as_user(&token("acme", "bob"), Method::GET, &path, None)
        .await;
    let rest_ids: Vec<&str> = messages["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(rest_ids, live_ids);

    // A misspelt body is refused rather than read as "everything".
    let read_path = format!("/api/v1/conversations/{dm}/read");
    let misspelt = Some(json!({"upto": ids[0]}));
    assert_eq!(
        server
            .as_user(&token("acme", "bob"), Method::POST, &read_path, misspelt)
            .await
            .0,
        400
    );
    // Reading everything over REST clears the count on every tab.
    let (status, view) = server
        .as_user(
            &token("acme", "bob"),
            Method::POST,
            &format!("/api/v1/conversations/{dm}/read"),
            None,
        )
        .await;
    assert_eq!((status, &view["unread_count"]), (200, &json!(0)));
    for tab in [&mut bob, &mut bob_tab] {
        let (_, _, conversation) = tab.next_event().await;
        assert_eq!(conversation["unread_count"], 0);
    }
}

#[tokio::test]
async fn a_group_conversation_reaches_its_members_only() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let (mut bob, _) = server.connect(&token("acme", "bob")).await;
    let (mut carol, _) = server.connect(&token("acme", "carol")).await;
    let (mut dave, _) = server.connect(&token("acme", "dave")).await;
    let (status, group) = server
        .as_user(
            &token("acme", "alice"),
            Method::POST,
            "/api/v1/conversations",
            Some(json!({"participants": ["bob", "carol", "bob"], "title": "Launch"})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        (group["kind"].as_str(), &group["participants"]),
        (Some("group"), &json!(["alice", "bob", "carol"]))
    );
    let id = group["id"].as_str().unwrap();
    for member in [&mut bob, &mut carol] {
        let (_, event, view) = member.next_event().await;
        assert_eq!(
            (event.as_str(), view["id"].as_str()),
            ("update-conversation", Some(id))
        );
    }
    let (status, _) = server
        .as_user(
            &token("acme", "alice"),
            Method::POST,
            &format!("/api/v1/conversations/{id}/messages"),
            Some(json!({"text": "go"})),
        )
        .await;
    assert_eq!(status, 201);
    for member in [&mut bob, &mut carol] {
        assert_eq!(message_events(member).await.1["text"], "go");
    }
    let sentinel = server.sentinel("acme", Some("dave")).await;
    dave.expect_sentinel(sentinel).await;
    let (status, _) = server
        .as_user(
            &token("acme", "dave"),
            Method::GET,
            &format!("/api/v1/conversations/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn notifications_belong_to_their_user() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let (mut alice, _) = server.connect(&token("acme", "alice")).await;
    let (mut alice_tab, _) = server.connect(&token("acme", "alice")).await;
    let (mut bob, _) = server.connect(&token("acme", "bob")).await;
    let create = |n: u64| {
        json!({"account_id": "acme", "user_id": "alice", "type": "invoice.paid",
                                  "title": format!("Invoice #{n} paid"), "data": {"invoice": n}})
    };

    let mut ids = Vec::new();
    for n in 1..=3 {
        let (status, created) = server
            .admin(Method::POST, "/api/v1/notifications", Some(create(n)))
            .await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
        for tab in [&mut alice, &mut alice_tab] {
            let (_, event, data) = tab.next_event().await;
            assert_eq!(
                (event.as_str(), &data["unread_count"]),
                ("notification", &json!(n))
            );
            assert_eq!(data["notification"]["data"], json!({"invoice": n}));
        }
    }
    let sentinel = server.sentinel("acme", Some("bob")).await;
    bob.expect_sentinel(sentinel).await;
    let (status, _) = server
        .as_user(
            &token("acme", "alice"),
            Method::POST,
            "/api/v1/notifications",
            Some(create(9)),
        )
        .await;
    assert_eq!(status, 403, "users cannot create notifications");

    let alice_token = token("acme", "alice");
    let (_, page) = server
        .as_user(
            &alice_token,
            Method::GET,
            "/api/v1/notifications?limit=2",
            None,
        )
        .await;
    let titles: Vec<&str> = page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        ["Invoice #3 paid", "Invoice #2 paid"],
        "newest first"
    );
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = server
        .as_user(
            &alice_token,
            Method::GET,
            &format!("/api/v1/notifications?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(rest["notifications"][0]["id"], ids[0].as_str());

    // Someone else's notification is not found, whatever the verb.
    for (account, user) in [("acme", "bob"), ("globex", "alice")] {
        let other = token(account, user);
        assert_eq!(
            server
                .as_user(
                    &other,
                    Method::POST,
                    &format!("/api/v1/notifications/{}/read", ids[0]),
                    None
                )
                .await
                .0,
            404
        );
        assert_eq!(
            server
                .as_user(
                    &other,
                    Method::DELETE,
                    &format!("/api/v1/notifications/{}", ids[0]),
                    None
                )
                .await
                .0,
            404
        );
        let (_, theirs) = server
            .as_user(&other, Method::GET, "/api/v1/notifications", None)
            .await;
        assert_eq!(theirs["notifications"], json!([]));
    }
    // Nothing for alice: her tabs' next frame is the sentinel.
    let sentinel = server.sentinel("acme", Some("alice")).await;
    for tab in [&mut alice, &mut alice_tab] {
        tab.expect_sentinel(sentinel).await;
    }

    let (status, read) = server
        .as_user(
            &alice_token,
            Method::POST,
            &format!("/api/v1/notifications/{}/read", ids[0]),
            None,
        )
        .await;
    assert_eq!((status, &read["unread_count"]), (200, &json!(2)));
    for tab in [&mut alice, &mut alice_tab] {
        let (_, event, data) = tab.next_event().await;
        assert_eq!(
            (event.as_str(), &data["unread_count"], &data["read"]),
            ("notification-count", &json!(2), &json!(ids[0]))
        );
    }
    let (_, unread) = server
        .as_user(
            &alice_token,
            Method::GET,
            "/api/v1/notifications?unread=true",
            None,
        )
        .await;
    assert_eq!(unread["notifications"].as_array().unwrap().len(), 2);
    let (status, deleted) = server
        .as_user(
            &alice_token,
            Method::DELETE,
            &format!("/api/v1/notifications/{}", ids[2]),
            None,
        )
        .await;
    assert_eq!((status, &deleted["unread_count"]), (200, &json!(1)));
    let (_, _, data) = alice_tab.next_event().await;
    assert_eq!(data["deleted"], ids[2].as_str());
    let (_, all) = server
        .as_user(
            &alice_token,
            Method::POST,
            "/api/v1/notifications/read-all",
            None,
        )
        .await;
    assert_eq!(all["unread_count"], 0);
    let (_, count) = server
        .as_user(
            &alice_token,
            Method::GET,
            "/api/v1/notifications/unread-count",
            None,
        )
        .await;
    assert_eq!(count, json!({"unread_count": 0}));
}

async fn presence_event(client: &mut Client) -> (String, String) {
    let frame = client.next_json().await;
    assert!(frame.get("seq").is_none(), "presence is ephemeral: {frame}");
    (
        frame["event"].as_str().unwrap().to_owned(),
        frame["data"]["user_id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn presence_counts_users_not_tabs_and_survives_a_reload() {
    let db = Db::sqlite();
    let server = TestServer::on(&db); // grace: 300 ms
    let (mut bob, _) = server.connect(&token("acme", "bob")).await;
    bob.watch_presence();
    let (mut outsider, _) = server.connect(&token("globex", "eve")).await;
    outsider.watch_presence();

    let mut tabs = Vec::new();
    for _ in 0..3 {
        tabs.push(server.connect(&token("acme", "alice")).await.0);
    }
    assert_eq!(
        presence_event(&mut bob).await,
        ("user-online".to_owned(), "alice".to_owned())
    );
    bob.expect_silence(QUIET).await;

    bob.send_text(r#"{"type":"presence","ref":1}"#).await;
    assert_eq!(
        bob.next_json().await,
        json!({"type": "presence", "ref": 1, "users": ["alice", "bob"]})
    );
    let (_, listed) = server
        .as_user(&token("acme", "bob"), Method::GET, "/api/v1/presence", None)
        .await;
    assert_eq!(listed, json!({"users": ["alice", "bob"]}));
    let (_, theirs) = server
        .as_user(
            &token("globex", "eve"),
            Method::GET,
            "/api/v1/presence",
            None,
        )
        .await;
    assert_eq!(theirs, json!({"users": ["eve"]}));
    outsider.expect_silence(QUIET).await;

    // A reload: the last tab closes and a new one opens within the grace.
    drop(tabs.pop());
    drop(tabs.pop());
    drop(tabs.pop());
    tabs.push(server.connect(&token("acme", "alice")).await.0);
    bob.expect_silence(Duration::from_millis(600)).await;

    drop(tabs.pop());
    assert_eq!(
        presence_event(&mut bob).await,
        ("user-offline".to_owned(), "alice".to_owned())
    );
    let (_, listed) = server
        .as_user(&token("acme", "bob"), Method::GET, "/api/v1/presence", None)
        .await;
    assert_eq!(listed, json!({"users": ["bob"]}));
}

#[tokio::test]
async fn typing_is_ephemeral_limited_and_for_the_other_participants() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let (_, dm) = open(&server, "acme", "alice", &["bob"]).await;
    let (mut alice, _) = server.connect(&token("acme", "alice")).await;
    let (mut alice_tab, _) = server.connect(&token("acme", "alice")).await;
    let (mut bob, _) = server.connect(&token("acme", "bob")).await;
    let (mut carol, _) = server.connect(&token("acme", "carol")).await;
    let before = server.publish("acme", None, "marker", json!(null)).await;
    for client in [&mut alice, &mut alice_tab, &mut bob, &mut carol] {
        client.next_event().await;
    }

    let typing = json!({"type": "typing", "conversation_id": dm}).to_string();
    for _ in 0..5 {
        alice.send_text(&typing).await;
    }
    let frame = bob.next_json().await;
    assert_eq!(
        frame,
        json!({"type": "event", "event": "typing", "data": {"conversation_id": dm, "user_id": "alice"}})
    );

    // Not stored: the account's next event follows the marker directly. And nothing else came
    // (the other four were dropped; none to carol, nor to alice's other tab): the marker is the
    // next frame of each.
    let after = server.publish("acme", None, "marker", json!(null)).await;
    assert_eq!(after, before + 1);
    for client in [&mut bob, &mut carol, &mut alice_tab] {
        assert_eq!(client.next_json().await["seq"], after);
    }

    carol.send_text(&typing).await;
    assert_eq!(carol.next_json().await["code"], "not-a-participant");
    let sentinel = server.sentinel("acme", Some("bob")).await;
    bob.expect_sentinel(sentinel).await;
}

#[tokio::test]
async fn large_rooms_answer_presence_queries_but_do_not_broadcast_it() {
    let db = Db::sqlite();
    let mut config = crate::common::config(&db);
    config.presence.broadcast_max = 2;
    let server = TestServer::start(config);
    let (mut bob, _) = server.connect(&token("acme", "bob")).await;
    bob.watch_presence();
    let (_carol, _) = server.connect(&token("acme", "carol")).await;
    assert_eq!(
        presence_event(&mut bob).await,
        ("user-online".to_owned(), "carol".to_owned())
    );

    // A third session: over the limit, no announcement, but the query knows.
    let (_dave, _) = server.connect(&token("acme", "dave")).await;
    bob.expect_silence(QUIET).await;
    bob.send_text(r#"{"type":"presence"}"#).await;
    assert_eq!(
        bob.next_json().await["users"],
        json!(["bob", "carol", "dave"])
    );
}

#[tokio::test]
async fn many_arrivals_at_once_are_announced_together() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let account = crate::common::unique("crowd");
    let (mut bob, _) = server.connect(&token(&account, "bob")).await;
    bob.watch_presence();

    const USERS: usize = 20;
    let names: Vec<String> = (0..USERS).map(|i| format!("user-{i}")).collect();
    let tokens: Vec<String> = names.iter().map(|name| token(&account, name)).collect();
    let clients =
        futures_util::future::join_all(tokens.iter().map(|jwt| server.connect(jwt))).await;

    // Every arrival announced once, as `user-online` or within `presence-changed`.
    let (mut online, mut frames) = (Vec::new(), 0);
    while online.len() < USERS {
        let frame = bob.next_json().await;
        frames += 1;
        assert!(frame.get("seq").is_none(), "presence is ephemeral: {frame}");
        match frame["event"].as_str() {
            Some("user-online") => {
                online.push(frame["data"]["user_id"].as_str().unwrap().to_owned())
            }
            Some("presence-changed") => {
                assert_eq!(frame["data"]["offline"], json!([]), "{frame}");
                for user in frame["data"]["online"].as_array().unwrap() {
                    online.push(user.as_str().unwrap().to_owned());
                }
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
    online.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(online, expected);
    assert!(
        frames < USERS,
        "{frames} frames for {USERS} arrivals: not gathered"
    );
    bob.expect_silence(QUIET).await;
    drop(clients);
}

/// The ordering test: two users of a direct conversation, each sending over a socket on either
/// node and over REST, all at once: 300 messages.
const SENDS_EACH_WAY: usize = 50;

/// A stored message as its sender was told: (the ack's seq, message id, sender).
type Acked = (u64, String, String);

/// Frames a socket in the ordering test keeps unanswered: enough to keep the server busy, few
/// enough that no send waits long for a database connection.
const IN_FLIGHT: usize = 4;

/// Sends [`SENDS_EACH_WAY`] frames, [`IN_FLIGHT`] at a time, and collects their acks.
async fn send_over_socket(api: Api, account: String, user: String, dm: String) -> Vec<Acked> {
    let (mut client, _) = api.connect(&token(&account, &user)).await;
    let mut acked = Vec::new();
    for i in 0..SENDS_EACH_WAY + IN_FLIGHT {
        if i < SENDS_EACH_WAY {
            let key = format!("{}-{i}", api.addr.port());
            let frame = send_frame(&dm, &format!("{user} ws {key}"), &key, i as u64);
            client.send_text(&frame).await;
        }
        if i >= IN_FLIGHT {
            let (reply, _) = next_reply(&mut client).await;
            assert_eq!(reply["type"], "ack", "{reply}");
            let id = reply["message_id"].as_str().unwrap().to_owned();
            acked.push((reply["seq"].as_u64().unwrap(), id, user.clone()));
        }
    }
    acked
}

async fn send_over_rest(api: Api, account: String, user: String, dm: String) -> Vec<Acked> {
    let path = format!("/api/v1/conversations/{dm}/messages");
    let mut acked = Vec::new();
    for i in 0..SENDS_EACH_WAY {
        let body = json!({"text": format!("{user} rest {i}")});
        let (status, sent) = api
            .as_user(&token(&account, &user), Method::POST, &path, Some(body))
            .await;
        assert_eq!(status, 201, "{sent}");
        let id = sent["id"].as_str().unwrap().to_owned();
        acked.push((sent["seq"].as_u64().unwrap(), id, user.clone()));
    }
    acked
}

on_each_backend! {
    async fn messages_sent_at_once_are_listed_and_read_in_the_order_they_were_stored(db) {
        // Two nodes on one database: the order must not depend on which node stored a message.
        // Sends as fast as the clients go: the allowance is not what this tests.
        let mut config = crate::common::config(&db);
        config.sends_per_second = std::num::NonZeroU32::new(1000).unwrap();
        let nodes = [TestServer::start(config.clone()), TestServer::start(config)];
        let account = unique("order");
        let users = ["alice".to_owned(), "bob".to_owned()];
        let (status, dm) = open(&nodes[0], &account, &users[0], &["bob"]).await;
        assert_eq!(status, 201);

        // Both users at once, over a socket on each node and over REST.
        let mut senders = Vec::new();
        for (i, user) in users.iter().enumerate() {
            for node in &nodes {
                let (a, u, d) = (account.clone(), user.clone(), dm.clone());
                senders.push(tokio::spawn(send_over_socket(Api { addr: node.addr }, a, u, d)));
            }
            let (a, u, d) = (account.clone(), user.clone(), dm.clone());
            let rest = Api { addr: nodes[i].addr };
            senders.push(tokio::spawn(send_over_rest(rest, a, u, d)));
        }
        let mut stored: Vec<Acked> = Vec::new();
        for sender in senders {
            stored.extend(sender.await.unwrap());
        }
        assert_eq!(stored.len(), 300);
        stored.sort();
        let newest_first: Vec<String> = stored.iter().rev().map(|(_, id, _)| id.clone()).collect();

        let reader = &users[0];
        let reader_token = token(&account, reader);
        for node in &nodes {
            assert_eq!(
                node.message_ids(&reader_token, &dm, 50).await,
                newest_first,
                "the listing is the order of the acks' sequence numbers"
            );
        }
        // The conversation's latest message is the last one stored.
        let newest_path = format!("/api/v1/conversations/{dm}/messages?limit=1");
        let (_, newest) = nodes[1].as_user(&reader_token, Method::GET, &newest_path, None).await;
        let newest = &newest["messages"][0];
        assert_eq!(newest["id"], newest_first[0].as_str());
        let path = format!("/api/v1/conversations/{dm}");
        let (_, view) = nodes[1].as_user(&reader_token, Method::GET, &path, None).await;
        assert_eq!(view["last_message_preview"], newest["text"]);

        // Reading up to each message leaves unread exactly the others' messages after it.
        let read_path = format!("/api/v1/conversations/{dm}/read");
        for (i, (_, id, _)) in stored.iter().enumerate() {
            let after = stored[i + 1..].iter().filter(|(_, _, sender)| sender != reader);
            let body = Some(json!({"up_to": id}));
            let (status, view) = nodes[i % 2]
                .as_user(&reader_token, Method::POST, &read_path, body)
                .await;
            assert_eq!(status, 200, "{view}");
            assert_eq!(view["unread_count"], after.count(), "read up to message {i}");
        }
    }
}

/// Sends `n` messages over REST at once; returns each answer's status, `Retry-After` and body.
async fn rest_burst(
    api: &Api,
    jwt: &str,
    conversation: &str,
    n: usize,
) -> Vec<(u16, Option<String>, Value)> {
    let url = api.http_url(&format!("/api/v1/conversations/{conversation}/messages"));
    let sends = (0..n).map(|i| {
        reqwest::Client::new()
            .post(&url)
            .bearer_auth(jwt)
            .json(&json!({"text": format!("burst {i}")}))
            .send()
    });
    let mut answers = Vec::new();
    for response in futures_util::future::join_all(sends).await {
        let response = response.expect("send request");
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = response.status().as_u16();
        answers.push((status, retry_after, response.json().await.unwrap()));
    }
    answers
}

/// Sends `n` frames at once; returns how many were refused as `rate-limited`.
async fn socket_burst(client: &mut Client, conversation: &str, n: u64) -> usize {
    for i in 0..n {
        client
            .send_text(&send_frame(conversation, "burst", &format!("b-{i}"), i))
            .await;
    }
    let mut limited = 0;
    for _ in 0..n {
        let (reply, _) = next_reply(client).await;
        limited += usize::from(reply["code"] == "rate-limited");
    }
    limited
}

#[tokio::test]
async fn a_users_sends_draw_on_one_allowance_over_rest_and_sockets() {
    // The allowance is a burst of 20, refilled at 10 a second; each burst below is sent at once
    // and is over it by far more than what refills while it is answered.
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let (_, dm) = open(&server, "acme", "alice", &["bob"]).await;
    let alice = token("acme", "alice");
    let (mut alice_tab, _) = server.connect(&alice).await;

    let answers = rest_burst(&server, &alice, &dm, 40).await;
    let limited: Vec<_> = answers
        .iter()
        .filter(|(status, ..)| *status == 429)
        .collect();
    assert!(!limited.is_empty(), "REST sends are limited");
    for (_, retry_after, body) in &limited {
        assert_eq!(body["error"]["code"], "rate-limited", "{body}");
        let seconds: u64 = retry_after.as_deref().unwrap().parse().unwrap();
        assert!(seconds >= 1);
    }
    assert!(
        answers
            .iter()
            .all(|(status, ..)| [201, 429].contains(status)),
        "{answers:?}"
    );
    // The socket draws on what REST has spent.
    assert!(socket_burst(&mut alice_tab, &dm, 10).await > 0);

    // Others' allowances are their own: another user, and the same user id in another account.
    let (status, _) = server
        .as_user(
            &token("acme", "bob"),
            Method::POST,
            &format!("/api/v1/conversations/{dm}/messages"),
            Some(json!({"text": "still here"})),
        )
        .await;
    assert_eq!(status, 201);
    let (_, elsewhere) = open(&server, "globex", "alice", &["bob"]).await;
    let answers = rest_burst(&server, &token("globex", "alice"), &elsewhere, 1).await;
    assert_eq!(answers[0].0, 201);

    // And the other way round: a socket's burst leaves REST nothing to send with.
    let (_, dm_carol) = open(&server, "acme", "carol", &["dave"]).await;
    let carol = token("acme", "carol");
    let (mut carol_tab, _) = server.connect(&carol).await;
    assert!(socket_burst(&mut carol_tab, &dm_carol, 40).await > 0);
    let answers = rest_burst(&server, &carol, &dm_carol, 20).await;
    assert!(answers.iter().any(|(status, ..)| *status == 429));
}
