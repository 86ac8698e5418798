//! A token's lifetime on a live connection: a warning before it expires, a refresh in place for
//! the same user, and a dedicated close when no fresh token came — never streaming on an expired
//! token.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use crate::common::{self, now, sign, token, unique, Client, Db, TestServer, JWT_SECRET};

/// A token for `user` of `account` that expires `seconds` from now.
fn expiring_in(account: &str, user: &str, seconds: u64) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        json!({ "sub": user, "account_id": account, "exp": now() + seconds }),
    )
}

/// A server that asks for a fresh token two seconds before expiry (leeway 0, as in tests),
/// checking on heartbeats five times a second.
fn server(db: &Db) -> TestServer {
    let mut config = common::config(db);
    config.token_refresh_lead = Duration::from_secs(2);
    config.heartbeat.interval = Duration::from_millis(200);
    TestServer::start(config)
}

async fn expect_token_expiring(client: &mut Client, expires_at: u64) {
    assert_eq!(
        client.next_json().await,
        json!({"type": "token-expiring", "expires_at": expires_at})
    );
}

#[tokio::test]
async fn a_fresh_token_for_the_same_user_keeps_the_session_going() {
    let db = Db::sqlite();
    let server = server(&db);
    let account = unique("lifetime");
    let first = expiring_in(&account, "alice", 3);
    let (mut client, welcome) = server.connect(&first).await;
    let expires_at = welcome["token_expires_at"].as_u64().unwrap();
    assert!(expires_at >= now() + 2, "{welcome}");

    expect_token_expiring(&mut client, expires_at).await;
    let fresh = token(&account, "alice");
    client
        .send_text(&json!({"type": "auth", "token": fresh, "ref": 9}).to_string())
        .await;
    let answer: Value = client.next_json().await;
    assert_eq!(answer["type"], "authenticated");
    assert_eq!(answer["ref"], 9);
    assert!(answer["expires_at"].as_u64().unwrap() > now() + 3000);

    // Past the first token's expiry, the session still receives events. (A time that must pass:
    // the scenario, not a wait for something the server does.)
    tokio::time::sleep(Duration::from_millis(
        (expires_at + 1 - now()).saturating_mul(1000),
    ))
    .await;
    let seq = server.publish(&account, None, "after", json!(1)).await;
    assert_eq!(client.next_event().await.0, seq);
}

#[tokio::test]
async fn an_expired_token_without_a_refresh_closes_the_session_with_4002() {
    let db = Db::sqlite();
    let server = server(&db);
    let account = unique("lifetime");
    let (mut client, welcome) = server.connect(&expiring_in(&account, "alice", 3)).await;
    let expires_at = welcome["token_expires_at"].as_u64().unwrap();
    expect_token_expiring(&mut client, expires_at).await;
    assert_eq!(client.expect_close().await, 4002);
    // The account's events are stored all the same, for the client's resume with a new token.
    let seq = server.publish(&account, None, "missed", json!(1)).await;
    let (mut again, _) = server.resume(&token(&account, "alice"), seq - 1).await;
    assert_eq!(again.next_event().await.0, seq);
}

#[tokio::test]
async fn a_refresh_with_another_users_or_a_bad_token_is_refused_and_closes() {
    let db = Db::sqlite();
    let server = server(&db);
    let account = unique("lifetime");
    for (other, code) in [
        (token(&account, "mallory"), "token-mismatch"),
        (token(&unique("elsewhere"), "alice"), "token-mismatch"),
        ("not-a-jwt".to_owned(), "malformed-token"),
        (
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
                json!({ "sub": "alice", "account_id": account, "exp": now() - 10 }),
            ),
            "token-expired",
        ),
        (
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-that-is-32-bytes-long!"),
                json!({ "sub": "alice", "account_id": account, "exp": now() + 3600 }),
            ),
            "invalid-signature",
        ),
    ] {
        let (mut client, _) = server.connect(&token(&account, "alice")).await;
        client
            .send_text(&json!({"type": "auth", "token": other, "ref": 1}).to_string())
            .await;
        let error = client.next_json().await;
        assert_eq!(error["type"], "error");
        assert_eq!(error["code"], code, "{error}");
        assert_eq!(error["ref"], 1);
        assert!(!error["message"].as_str().unwrap().contains(&other));
        assert_eq!(client.expect_close().await, 4003);
    }
}
