//! The control API through real clients: revoking a user closes their sessions (4005) and
//! refuses their earlier tokens from then on — after a restart too; revoking one session closes
//! that one; inspecting an account shows its live sessions, online users (of the account, of a
//! channel) and stored events — and never anything of another account.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::engine_io::EngineSocket;
use crate::common::{now, sign, unique, Api, Db, TestServer, API_KEY, JWT_SECRET};
use crate::on_each_backend;

/// A token for `user` of `account` issued at `iat` (none when `None`), following `order:*`.
fn token_at(account: &str, user: &str, iat: Option<u64>) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let mut claims = json!({ "sub": user, "account_id": account, "exp": now() + 3600,
                             "channels": ["order:*", "team/*"] });
    if let Some(iat) = iat {
        claims["iat"] = json!(iat);
    }
    sign(jsonwebtoken::Algorithm::HS256, &key, claims)
}

async fn revoke(api: &Api, account: &str, user: &str) -> Value {
    let path = format!("/api/v1/accounts/{account}/users/{user}/revoke");
    let (status, body) = api.admin(Method::POST, &path, None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The code a refused `/ws` handshake answers with.
async fn refused_with(api: &Api, token: &str) -> (u16, Value) {
    let url = format!("{}?token={token}", api.ws_url());
    let (status, body) = api.try_connect(url).await.err().expect("refused");
    (status, body["error"]["code"].clone())
}

on_each_backend! {
    async fn revoking_a_user_closes_their_sessions_and_refuses_their_earlier_tokens(db) {
        let (account, other) = (unique("rev"), unique("rev-other"));
        let issued = now() - 5;
        let old = token_at(&account, "alice", Some(issued));
        {
            let server = TestServer::on(&db);
            let (mut tab1, _) = server.connect(&old).await;
            let (mut tab2, _) = server.connect(&old).await;
            let mut socket_io = EngineSocket::connect(&server, &json!({ "token": old })).await.0;
            let (mut bob, _) = server.connect(&token_at(&account, "bob", Some(issued))).await;
            let (mut namesake, _) = server.connect(&token_at(&other, "alice", Some(issued))).await;

            let answer = revoke(&server, &account, "alice").await;
            assert_eq!(answer["sessions_closed"], json!(3), "{answer}");
            let revoked_at = answer["revoked_at"].as_u64().unwrap();
            assert_eq!(tab1.expect_close().await, 4005);
            assert_eq!(tab2.expect_close().await, 4005);
            let closing = socket_io.next_packet().await;
            assert!(closing.contains(r#""code":4005"#) && closing.contains("revoked"), "{closing}");
            // Nobody else is touched: not another user, not the same user of another account.
            let sentinel = server.sentinel(&account, None).await;
            bob.expect_sentinel(sentinel).await;
            let sentinel = server.sentinel(&other, None).await;
            namesake.expect_sentinel(sentinel).await;

            // The old token, and one without `iat`, are refused everywhere; a newer one is not.
            assert_eq!(refused_with(&server, &old).await, (401, json!("token-revoked")));
            let no_iat = token_at(&account, "alice", None);
            assert_eq!(refused_with(&server, &no_iat).await, (401, json!("token-revoked")));
            let (status, body) = server.as_user(&old, Method::GET, "/api/v1/presence", None).await;
            assert_eq!((status, &body["error"]["code"]), (401, &json!("token-revoked")));
            let (mut socket, _) = EngineSocket::open(&server).await;
            socket.send(&format!("40{}", json!({ "token": old }))).await;
            let refused = socket.next_packet().await;
            assert!(refused.starts_with("44") && refused.contains("token-revoked"), "{refused}");
            let fresh = token_at(&account, "alice", Some(revoked_at + 1));
            server.connect(&fresh).await;
        }
        // After a restart, on the same database: still refused.
        let server = TestServer::on(&db);
        assert_eq!(refused_with(&server, &old).await, (401, json!("token-revoked")));
        let (status, _) = server.admin(Method::POST,
            &format!("/api/v1/accounts/{account}/users/nobody/revoke"), None).await;
        assert_eq!(status, 200, "revoking a user with no session is fine");
    }

    async fn inspecting_an_account_shows_its_sessions_users_channels_and_events(db) {
        let server = TestServer::on(&db);
        let (account, other) = (unique("insp"), unique("insp-other"));
        let token = token_at(&account, "alice", Some(now()));
        let url = format!("{}?token={token}&channels=order:1", server.ws_url());
        let mut following = server.try_connect(url).await.unwrap();
        let welcome = following.next_json().await;
        let bob = token_at(&account, "bob", Some(now()));
        let url = format!("{}?token={bob}&channels=team/support", server.ws_url());
        let mut plain = server.try_connect(url).await.unwrap();
        plain.next_json().await;
        server.connect(&token_at(&other, "carol", Some(now()))).await;

        let base = format!("/api/v1/accounts/{account}");
        let (status, body) = server.admin(Method::GET, &format!("{base}/sessions"), None).await;
        assert_eq!(status, 200, "{body}");
        let sessions = body["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 2, "{body}");
        let alice = sessions.iter().find(|s| s["user_id"] == "alice").unwrap();
        assert_eq!(alice["session_id"], welcome["session_id"]);
        assert_eq!((&alice["transport"], &alice["channels"]), (&json!("websocket"), &json!(["order:1"])));
        assert!(alice["connected_at"].as_i64().unwrap() > 0 && alice["queued_bytes"].is_u64());
        assert!(alice["node"].is_string());
        let path = format!("{base}/sessions?user_id=bob");
        let (_, body) = server.admin(Method::GET, &path, None).await;
        assert_eq!(body["sessions"].as_array().unwrap().len(), 1);
        assert_eq!(body["sessions"][0]["user_id"], "bob");

        let (_, body) = server.admin(Method::GET, &format!("{base}/online"), None).await;
        assert_eq!(body["users"], json!(["alice", "bob"]));
        let path = format!("{base}/channels/order:1/online");
        let (_, body) = server.admin(Method::GET, &path, None).await;
        assert_eq!(body["users"], json!(["alice"]));
        let path = format!("{base}/channels/team/support/online");
        let (status, body) = server.admin(Method::GET, &path, None).await;
        assert_eq!((status, &body["channel"], &body["users"]),
                   (200, &json!("team/support"), &json!(["bob"])), "{body}");
        let path = format!("/api/v1/accounts/{other}/channels/order:1/online");
        let (_, body) = server.admin(Method::GET, &path, None).await;
        assert_eq!(body["users"], json!([]), "another account's channel of the same name");

        // Stored events, paged.
        let publish = json!({"account_id": account, "channel": "order:1", "event": "paid", "data": {"n": 1}});
        let (status, first) = server.publish_raw(Some(&format!("Bearer {API_KEY}")), publish.to_string()).await;
        assert_eq!(status, 200);
        let second = server.publish(&account, Some("bob"), "ping", json!(2)).await;
        let third = server.publish(&account, None, "all", json!(3)).await;
        assert_eq!(following.next_event().await.0, first["seq"].as_u64().unwrap());
        assert_eq!(following.next_event().await.0, third);
        assert_eq!(plain.next_event().await.0, second);
        assert_eq!(plain.next_event().await.0, third);
        let path = format!("{base}/events?limit=2");
        let (_, page) = server.admin(Method::GET, &path, None).await;
        let events = page["events"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!((&events[0]["seq"], &events[0]["channel"], &events[0]["data"]),
                   (&first["seq"], &json!("order:1"), &json!({"n": 1})));
        assert_eq!((&events[1]["seq"], &events[1]["user_id"]), (&json!(second), &json!("bob")));
        let path = format!("{base}/events?limit=2&since={}", page["next_since"]);
        let (_, page) = server.admin(Method::GET, &path, None).await;
        assert_eq!(page["events"][0]["seq"], json!(third));
        assert_eq!(page["next_since"], Value::Null);
        // A last page that is full is still the last.
        let (_, page) = server.admin(Method::GET, &format!("{base}/events?limit=3"), None).await;
        assert_eq!((page["events"].as_array().unwrap().len(), &page["next_since"]),
                   (3, &Value::Null), "{page}");
        let path = format!("/api/v1/accounts/{other}/events");
        let (_, page) = server.admin(Method::GET, &path, None).await;
        assert_eq!(page["events"], json!([]));

        // One session revoked by id: that one closes, the other tab of the account stays.
        let path = format!("{base}/sessions/{}/revoke", welcome["session_id"].as_str().unwrap());
        let (status, body) = server.admin(Method::POST, &path, None).await;
        assert_eq!((status, &body["closed_here"]), (200, &json!(true)), "{body}");
        assert_eq!(following.expect_close().await, 4005);
        let sentinel = server.sentinel(&account, None).await;
        plain.expect_sentinel(sentinel).await;
        let (status, body) = server.admin(Method::POST, &path, None).await;
        assert_eq!((status, &body["error"]["code"]), (404, &json!("not-found")));
    }
}

#[actix_web::test]
async fn the_control_api_takes_only_the_server_key_and_checks_what_it_is_given() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let account = unique("ctl");
    let user_token = token_at(&account, "alice", Some(now()));
    let paths = [
        (
            Method::POST,
            format!("/api/v1/accounts/{account}/users/alice/revoke"),
        ),
        (Method::GET, format!("/api/v1/accounts/{account}/sessions")),
        (Method::GET, format!("/api/v1/accounts/{account}/online")),
        (Method::GET, format!("/api/v1/accounts/{account}/events")),
    ];
    for (method, path) in &paths {
        let (status, body) = server
            .as_user(&user_token, method.clone(), path, None)
            .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (403, &json!("user-token-forbidden")),
            "{path}"
        );
        let (status, _) = server.as_user("nope", method.clone(), path, None).await;
        assert_eq!(status, 401, "{path}");
    }
    let events = format!("/api/v1/accounts/{account}/events");
    let bad = [
        (format!("{events}?limit=501"), "invalid-field"),
        (format!("{events}?limit=ten"), "invalid-field"),
        (format!("{events}?since=x"), "invalid-since"),
        (
            format!("{events}?since=9223372036854775808"),
            "invalid-since",
        ),
        (
            format!("/api/v1/accounts/{account}/channels/a%20b/online"),
            "invalid-field",
        ),
    ];
    for (path, code) in bad {
        let (status, body) = server.admin(Method::GET, &path, None).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!(code)),
            "{path}"
        );
    }
    let path = format!("/api/v1/accounts/{account}/sessions/zz/revoke");
    assert_eq!(server.admin(Method::POST, &path, None).await.0, 404);
}
