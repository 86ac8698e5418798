//! Channels inside an account, through real clients: a channel's events reach only the sessions
//! that follow it, in its own account only; who may follow comes only from the token's
//! `channels` claim (narrowed by a fresh token); and nothing of what a session follows is lost
//! across a reconnect, on `/ws`, the long-poll and Socket.IO.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::engine_io::EngineSocket;
use crate::common::{now, sign, unique, Api, Client, TestServer, API_KEY, JWT_SECRET};
use crate::on_each_backend;

/// A token for `user` of `account` whose `channels` claim is `channels`.
fn token_with(account: &str, user: &str, channels: &[&str]) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    sign(
        jsonwebtoken::Algorithm::HS256,
        &key,
        json!({ "sub": user, "account_id": account, "exp": now() + 3600, "iat": now(),
                "channels": channels }),
    )
}

/// Publishes `event` to `channel` of `account`; answers its sequence number.
async fn publish_to(api: &Api, account: &str, channel: &str, event: &str, data: Value) -> u64 {
    let body = json!({ "account_id": account, "channel": channel, "event": event, "data": data });
    let (status, answer) = api
        .publish_raw(Some(&format!("Bearer {API_KEY}")), body.to_string())
        .await;
    assert_eq!(status, 200, "{answer}");
    answer["seq"].as_u64().unwrap()
}

/// Connects following `channels` (`a,b`); answers the client and its welcome.
async fn connect_following(api: &Api, token: &str, channels: &str) -> (Client, Value) {
    let url = format!("{}?token={token}&channels={channels}", api.ws_url());
    let mut client = api
        .try_connect(url)
        .await
        .unwrap_or_else(|refused| panic!("connect refused: {refused:?}"));
    let welcome = client.next_json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (client, welcome)
}

/// The next frame is the channel event `seq` of `channel`.
async fn expect_channel_event(client: &mut Client, seq: u64, channel: &str) -> Value {
    let frame = client.next_json().await;
    assert_eq!(
        (&frame["type"], &frame["seq"], &frame["channel"]),
        (&json!("event"), &json!(seq), &json!(channel)),
        "{frame}"
    );
    frame
}

on_each_backend! {
    async fn a_channel_event_reaches_only_its_followers_and_only_in_its_account(db) {
        let server = TestServer::on(&db);
        let (a, b) = (unique("cha"), unique("chb"));
        let grant = ["order:*"];
        let (mut follower, welcome) =
            connect_following(&server, &token_with(&a, "alice", &grant), "order:1").await;
        assert_eq!(welcome["channels"], json!(["order:1"]));
        let (mut other, _) = connect_following(&server, &token_with(&a, "bob", &grant), "order:2").await;
        let (mut bystander, _) = server.connect(&token_with(&a, "carol", &grant)).await;
        let (mut elsewhere, _) =
            connect_following(&server, &token_with(&b, "alice", &grant), "order:1").await;

        let seq = publish_to(&server, &a, "order:1", "paid", json!({"order": 1})).await;
        let frame = expect_channel_event(&mut follower, seq, "order:1").await;
        assert_eq!((&frame["event"], &frame["data"]), (&json!("paid"), &json!({"order": 1})));

        // The others skip it, as users skip another user's events: the next they see is after.
        let sentinel = server.sentinel(&a, None).await;
        for client in [&mut other, &mut bystander, &mut follower] {
            client.expect_sentinel(sentinel).await;
        }
        let sentinel = server.sentinel(&b, None).await;
        elsewhere.expect_sentinel(sentinel).await;

        // A channel event for one user: that user's followers only.
        let (mut alice_too, _) =
            connect_following(&server, &token_with(&a, "bob", &grant), "order:1").await;
        let body = json!({"account_id": a, "user_id": "alice", "channel": "order:1", "event": "x"});
        let (status, answer) =
            server.publish_raw(Some(&format!("Bearer {API_KEY}")), body.to_string()).await;
        assert_eq!(status, 200);
        expect_channel_event(&mut follower, answer["seq"].as_u64().unwrap(), "order:1").await;
        let sentinel = server.sentinel(&a, None).await;
        alice_too.expect_sentinel(sentinel).await;
    }

    async fn resuming_replays_the_channels_given_at_connect_and_nothing_else(db) {
        let server = TestServer::on(&db);
        let account = unique("chr");
        let token = token_with(&account, "alice", &["order:*"]);
        let (mut client, _) = connect_following(&server, &token, "order:1").await;
        let first = publish_to(&server, &account, "order:1", "a", json!(1)).await;
        expect_channel_event(&mut client, first, "order:1").await;
        drop(client);

        // Published while the client was away: its channel, another, the account's, another
        // user's.
        let mine = publish_to(&server, &account, "order:1", "b", json!(2)).await;
        publish_to(&server, &account, "order:2", "c", json!(3)).await;
        let everyone = server.publish(&account, None, "d", json!(4)).await;
        server.publish(&account, Some("bob"), "e", json!(5)).await;
        let later = publish_to(&server, &account, "order:1", "f", json!(6)).await;

        let url = format!("{}?token={token}&since={first}&channels=order:1", server.ws_url());
        let mut client = server.try_connect(url).await.unwrap();
        let welcome = client.next_json().await;
        assert_eq!((&welcome["resumed"], &welcome["channels"]), (&json!(true), &json!(["order:1"])));
        expect_channel_event(&mut client, mine, "order:1").await;
        assert_eq!(client.next_event().await.0, everyone);
        expect_channel_event(&mut client, later, "order:1").await;
        // Then live, with nothing in between.
        let live = publish_to(&server, &account, "order:1", "g", json!(7)).await;
        expect_channel_event(&mut client, live, "order:1").await;

        // The long-poll reads the same events for the channels it names.
        let path = format!("/api/v1/events?since={first}&timeout=0&channels=order:1");
        let (status, body) = server.as_user(&token, Method::GET, &path, None).await;
        assert_eq!(status, 200, "{body}");
        let seqs: Vec<u64> = body["events"].as_array().unwrap().iter()
            .map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, vec![mine, everyone, later, live]);
        let path = format!("/api/v1/events?since={first}&timeout=0");
        let (_, body) = server.as_user(&token, Method::GET, &path, None).await;
        let seqs: Vec<u64> = body["events"].as_array().unwrap().iter()
            .map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, vec![everyone], "no channel named, no channel event");
    }

    async fn subscribing_with_since_replays_that_channel_before_its_live_events(db) {
        let server = TestServer::on(&db);
        let account = unique("chs");
        let token = token_with(&account, "alice", &["doc:*"]);
        let (mut client, _) = server.connect(&token).await;
        let before = server.publish(&account, None, "x", json!(0)).await;
        assert_eq!(client.next_event().await.0, before);
        let one = publish_to(&server, &account, "doc:7", "edit", json!(1)).await;
        publish_to(&server, &account, "doc:8", "edit", json!(2)).await;
        let two = publish_to(&server, &account, "doc:7", "edit", json!(3)).await;

        // Without `since`: live from the answer's position only.
        client.send_text(r#"{"type":"subscribe","channel":"doc:8","ref":1}"#).await;
        let answer = client.next_json().await;
        assert_eq!((&answer["type"], &answer["channel"], &answer["ref"]),
                   (&json!("subscribed"), &json!("doc:8"), &json!(1)), "{answer}");
        assert_eq!(answer["seq"], json!(two));
        assert!(answer.get("since").is_none());

        // With `since`: that channel's events after it, then live ones.
        let since = before;
        client.send_text(&format!(
            r#"{{"type":"subscribe","channel":"doc:7","since":{since},"ref":2}}"#)).await;
        let answer = client.next_json().await;
        assert_eq!((&answer["type"], &answer["since"], &answer["ref"]),
                   (&json!("subscribed"), &json!(since), &json!(2)), "{answer}");
        expect_channel_event(&mut client, one, "doc:7").await;
        expect_channel_event(&mut client, two, "doc:7").await;
        let live = publish_to(&server, &account, "doc:7", "edit", json!(4)).await;
        expect_channel_event(&mut client, live, "doc:7").await;

        // Unsubscribed: no more of it.
        client.send_text(r#"{"type":"unsubscribe","channel":"doc:7","ref":3}"#).await;
        let answer = client.next_json().await;
        assert_eq!((&answer["type"], &answer["channel"]), (&json!("unsubscribed"), &json!("doc:7")));
        publish_to(&server, &account, "doc:7", "edit", json!(5)).await;
        let sentinel = server.sentinel(&account, None).await;
        client.expect_sentinel(sentinel).await;
    }
}

#[actix_web::test]
async fn who_may_follow_comes_only_from_the_token_and_narrows_with_a_fresh_one() {
    let db = crate::common::Db::sqlite();
    let server = TestServer::on(&db);
    let account = unique("cha");
    let token = token_with(&account, "alice", &["order:*", "team:support"]);
    let refused = |list: &str| {
        let url = format!("{}?token={token}&channels={list}", server.ws_url());
        let server = &server;
        async move { server.try_connect(url).await.err().expect("refused") }
    };
    let (status, body) = refused("doc:1").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("channel-forbidden"))
    );
    let (status, body) = refused("team:support2").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("channel-forbidden"))
    );
    let (status, body) = refused("order%201").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid-channel"))
    );
    // An empty name inside a list is a bad name; a list given twice, a malformed query.
    for list in ["order:1,,order:2", "order:1,"] {
        let (status, body) = refused(list).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("invalid-channel")),
            "{list}"
        );
    }
    let (status, body) = refused("order:1&channels=order:2").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid-query"))
    );
    let many: Vec<String> = (0..65).map(|i| format!("order:{i}")).collect();
    let (status, body) = refused(&many.join(",")).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("too-many-channels"))
    );
    // A token without the claim follows no channel.
    let plain = crate::common::token(&account, "alice");
    let url = format!("{}?token={plain}&channels=order:1", server.ws_url());
    let (status, body) = server.try_connect(url).await.err().expect("refused");
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("channel-forbidden"))
    );

    let (mut client, _) = connect_following(&server, &token, "team:support").await;
    for (frame, code) in [
        (
            r#"{"type":"subscribe","channel":"doc:1","ref":1}"#,
            "channel-forbidden",
        ),
        (
            r#"{"type":"subscribe","channel":"a b","ref":1}"#,
            "invalid-channel",
        ),
        (
            r#"{"type":"subscribe","channel":"order:1","since":"x","ref":1}"#,
            "invalid-since",
        ),
    ] {
        client.send_text(frame).await;
        let answer = client.next_json().await;
        assert_eq!(
            (&answer["type"], &answer["code"], &answer["ref"]),
            (&json!("error"), &json!(code), &json!(1)),
            "{frame}: {answer}"
        );
    }
    client
        .send_text(r#"{"type":"subscribe","channel":"order:9"}"#)
        .await;
    assert_eq!(client.next_json().await["type"], "subscribed");
    for i in 10..72 {
        client
            .send_text(&format!(r#"{{"type":"subscribe","channel":"order:{i}"}}"#))
            .await;
        assert_eq!(client.next_json().await["type"], "subscribed");
    }
    client
        .send_text(r#"{"type":"subscribe","channel":"order:100","ref":5}"#)
        .await;
    assert_eq!(client.next_json().await["code"], "too-many-channels");
    client
        .send_text(r#"{"type":"unsubscribe","channel":"order:10"}"#)
        .await;
    assert_eq!(client.next_json().await["type"], "unsubscribed");

    // A fresh token that allows only `team:*`: the `order:` channels end, and say so.
    let narrower = token_with(&account, "alice", &["team:*"]);
    client
        .send_text(&json!({"type": "auth", "token": narrower, "ref": 9}).to_string())
        .await;
    assert_eq!(client.next_json().await["type"], "authenticated");
    let mut ended = Vec::new();
    for _ in 0..62 {
        let notice = client.next_json().await;
        assert_eq!(
            (&notice["type"], &notice["reason"]),
            (&json!("unsubscribed"), &json!("channel-forbidden")),
            "{notice}"
        );
        ended.push(notice["channel"].as_str().unwrap().to_owned());
    }
    assert!(ended.contains(&"order:9".to_owned()) && !ended.contains(&"order:10".to_owned()));
    publish_to(&server, &account, "order:9", "x", Value::Null).await;
    let kept = publish_to(&server, &account, "team:support", "y", Value::Null).await;
    expect_channel_event(&mut client, kept, "team:support").await;
}

#[actix_web::test]
async fn socket_io_clients_follow_channels_and_recover_them() {
    let db = crate::common::Db::sqlite();
    let server = TestServer::on(&db);
    let account = unique("chio");
    let token = token_with(&account, "alice", &["order:*"]);
    let auth = json!({ "token": token, "channels": ["order:1"] });
    let (mut socket, connected) = EngineSocket::connect(&server, &auth).await;
    let pid = connected["pid"].as_str().unwrap().to_owned();
    let seq = publish_to(&server, &account, "order:1", "paid", json!({"n": 1})).await;
    assert_eq!(
        socket.next_packet().await,
        format!(r#"42["paid",{{"n":1}},{{"channel":"order:1"}},"{seq}"]"#)
    );

    // Subscribing by an emit, answered on its acknowledgement.
    socket
        .send(r#"421["subscribe",{"channel":"order:2"}]"#)
        .await;
    let ack = socket.next_packet().await;
    assert!(
        ack.starts_with("431[") && ack.contains(r#""type":"subscribed""#),
        "{ack}"
    );
    drop(socket);

    let missed = publish_to(&server, &account, "order:1", "paid", json!({"n": 2})).await;
    publish_to(&server, &account, "order:3", "paid", json!({"n": 3})).await;
    let recovering = json!({ "token": token, "channels": ["order:1"], "pid": pid,
                              "offset": seq.to_string() });
    let (mut socket, connected) = EngineSocket::connect(&server, &recovering).await;
    assert_eq!(connected["pid"], json!(pid), "recovered");
    assert_eq!(
        socket.next_packet().await,
        format!(r#"42["paid",{{"n":2}},{{"channel":"order:1"}},"{missed}"]"#)
    );

    // Repeats count once; a list past its bound is refused whatever it repeats.
    let repeated = vec!["order:1"; 200];
    let auth = json!({ "token": token, "channels": repeated });
    let (_, connected) = EngineSocket::connect(&server, &auth).await;
    assert!(connected["sid"].is_string(), "{connected}");
    let (mut socket, _) = EngineSocket::open(&server).await;
    let endless = vec!["order:1"; 1025];
    socket
        .send(&format!(
            "40{}",
            json!({ "token": token, "channels": endless })
        ))
        .await;
    let refused = socket.next_packet().await;
    assert!(
        refused.starts_with("44") && refused.contains("too-many-channels"),
        "{refused}"
    );

    // A channel the token does not allow: refused at CONNECT.
    let (mut socket, _) = EngineSocket::open(&server).await;
    socket
        .send(&format!(
            "40{}",
            json!({ "token": token, "channels": ["doc:1"] })
        ))
        .await;
    let refused = socket.next_packet().await;
    assert!(
        refused.starts_with("44") && refused.contains("channel-forbidden"),
        "{refused}"
    );
}

#[actix_web::test]
async fn a_user_whose_token_allows_it_sends_ephemeral_messages_to_a_channels_other_followers() {
    let db = crate::common::Db::sqlite();
    let server = TestServer::on(&db);
    let account = unique("chm");
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let publisher = sign(
        jsonwebtoken::Algorithm::HS256,
        &key,
        json!({ "sub": "alice", "account_id": account, "exp": now() + 3600,
                "channels": ["doc:*"], "publish": ["doc:*"] }),
    );
    let (mut alice, _) = connect_following(&server, &publisher, "doc:7").await;
    let reader = token_with(&account, "bob", &["doc:*"]);
    let (mut bob, _) = connect_following(&server, &reader, "doc:7").await;
    let (mut carol, _) =
        connect_following(&server, &token_with(&account, "carol", &["doc:*"]), "doc:8").await;

    alice
        .send_text(r#"{"type":"publish","channel":"doc:7","event":"cursor","data":{"line":3}}"#)
        .await;
    let message = bob.next_json().await;
    assert_eq!(
        message,
        json!({"type": "event", "channel": "doc:7", "event": "cursor", "data": {"line": 3},
               "user_id": "alice"})
    );
    // Not stored, not for the sender, not for another channel's followers.
    let sentinel = server.sentinel(&account, None).await;
    for client in [&mut alice, &mut carol, &mut bob] {
        client.expect_sentinel(sentinel).await;
    }

    // A token without `publish` for the channel, a bad channel, a bad event name: refused.
    // Each with its `ref` echoed.
    let cases = [
        (
            false,
            r#"{"type":"publish","channel":"doc:7","event":"x","ref":1}"#,
            "channel-forbidden",
        ),
        (
            true,
            r#"{"type":"publish","channel":"doc 7","event":"x","ref":1}"#,
            "invalid-channel",
        ),
        (
            true,
            r#"{"type":"publish","channel":"doc:7","event":"a b","ref":1}"#,
            "invalid-frame",
        ),
    ];
    for (as_alice, frame, code) in cases {
        let client = if as_alice { &mut alice } else { &mut bob };
        client.send_text(frame).await;
        let answer = client.next_json().await;
        assert_eq!(
            (&answer["type"], &answer["code"], &answer["ref"]),
            (&json!("error"), &json!(code), &json!(1)),
            "{frame}"
        );
    }
    // Taken with a `ref`: not answered, delivered.
    alice
        .send_text(r#"{"type":"publish","channel":"doc:7","event":"cursor","data":1,"ref":2}"#)
        .await;
    assert_eq!(bob.next_json().await["data"], json!(1));
    let sentinel = server.sentinel(&account, None).await;
    alice.expect_sentinel(sentinel).await;
    bob.expect_sentinel(sentinel).await;

    // On Socket.IO: the sender in the metadata; the ack says taken, or the refusal.
    let auth = json!({ "token": publisher, "channels": ["doc:7"] });
    let (mut socket, _) = EngineSocket::connect(&server, &auth).await;
    socket
        .send(r#"421["publish",{"channel":"doc:7","event":"x y"}]"#)
        .await;
    let ack = socket.next_packet().await;
    assert!(
        ack.starts_with("431[") && ack.contains(r#""code":"invalid-frame""#),
        "{ack}"
    );
    socket
        .send(r#"422["publish",{"channel":"doc:7","event":"cursor","data":{"line":4}}]"#)
        .await;
    assert_eq!(socket.next_packet().await, r#"432[{"type":"ack"}]"#);
    let message = bob.next_json().await;
    assert_eq!(message["data"], json!({"line": 4}), "{message}");
    let (mut watcher, _) =
        EngineSocket::connect(&server, &json!({ "token": reader, "channels": ["doc:7"] })).await;
    alice
        .send_text(r#"{"type":"publish","channel":"doc:7","event":"cursor","data":5}"#)
        .await;
    assert_eq!(
        watcher.next_packet().await,
        r#"42["cursor",5,{"channel":"doc:7","user_id":"alice"}]"#
    );
}

#[actix_web::test]
async fn a_refused_or_withdrawn_subscribe_leaves_the_channel_unfollowed() {
    let db = crate::common::Db::sqlite();
    let server = TestServer::on(&db);
    let account = unique("chr");
    let token = token_with(&account, "alice", &["doc:*"]);
    let (mut client, _) = server.connect(&token).await;
    let last = server.publish(&account, None, "x", json!(0)).await;
    assert_eq!(client.next_event().await.0, last);

    // `since` ahead of the account: only the refusal, and the channel is not followed.
    let ahead = last + 1000;
    client
        .send_text(&format!(
            r#"{{"type":"subscribe","channel":"doc:1","since":{ahead},"ref":3}}"#
        ))
        .await;
    let answer = client.next_json().await;
    assert_eq!(
        (&answer["type"], &answer["code"], &answer["ref"]),
        (&json!("error"), &json!("since-in-future"), &json!(3)),
        "{answer}"
    );

    // Unsubscribed before the answer came: the subscribe is never announced.
    client
        .send_texts(&[
            r#"{"type":"subscribe","channel":"doc:2","ref":4}"#,
            r#"{"type":"unsubscribe","channel":"doc:2","ref":5}"#,
        ])
        .await;
    let answer = client.next_json().await;
    assert_eq!(
        (&answer["type"], &answer["ref"]),
        (&json!("unsubscribed"), &json!(5)),
        "{answer}"
    );
    publish_to(&server, &account, "doc:1", "edit", json!(1)).await;
    publish_to(&server, &account, "doc:2", "edit", json!(2)).await;
    let sentinel = server.sentinel(&account, None).await;
    client.expect_sentinel(sentinel).await;
}
