//! Who may connect: only a verified token opens a session, and every refusal says why.

use base64::Engine;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use switchboard::config::JwtKey;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::common::{self, sign, token, Db, TestServer};

fn with_header(url: &str, name: &'static str, value: &str) -> impl IntoClientRequest + Unpin {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert(name, HeaderValue::from_str(value).unwrap());
    request
}

fn hs256(claims: Value, secret: &str) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
        claims,
    )
}

async fn refused(server: &TestServer, request: impl IntoClientRequest + Unpin) -> (u16, String) {
    match server.try_connect(request).await {
        Ok(_) => panic!("connection was accepted"),
        Err((status, body)) => {
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(!message.is_empty(), "refusal without a message: {body}");
            (
                status,
                body["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    }
}

#[tokio::test]
async fn header_and_query_tokens_both_connect() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let jwt = token("acme", "alice");

    let (_, welcome) = server.connect(&jwt).await;
    assert_eq!(welcome["account_id"], "acme");
    assert_eq!(welcome["user_id"], "alice");
    assert_eq!(welcome["seq"], 0);
    assert_eq!(welcome["heartbeat_interval_ms"], 5000);
    assert!(welcome["session_id"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));

    let request = with_header(&server.ws_url(), "authorization", &format!("Bearer {jwt}"));
    let mut client = server
        .try_connect(request)
        .await
        .expect("header token accepted");
    let welcome = client.next_json().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user_id"], "alice");
}

#[tokio::test]
async fn the_token_may_come_in_the_subprotocol_header_and_only_the_protocol_is_echoed() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let jwt = token("acme", "alice");
    let request = with_header(
        &server.ws_url(),
        "sec-websocket-protocol",
        &format!("switchboard.v1, bearer.{jwt}"),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "switchboard.v1"
    );
    let welcome: Value = match ws.next().await.unwrap().unwrap() {
        tokio_tungstenite::tungstenite::Message::Text(text) => serde_json::from_str(&text).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(welcome["account_id"], "acme");
    assert_eq!(welcome["user_id"], "alice");

    // A forged token there is refused like any other.
    let forged = hs256(
        json!({"sub": "alice", "account_id": "acme", "exp": common::now() + 60}),
        "another-secret-that-is-32-bytes-long!!",
    );
    let request = with_header(
        &server.ws_url(),
        "sec-websocket-protocol",
        &format!("switchboard.v1, bearer.{forged}"),
    );
    assert_eq!(
        refused(&server, request).await,
        (401, "invalid-signature".into())
    );
}

#[tokio::test]
async fn browser_handshakes_from_other_sites_are_refused_before_any_token_work() {
    let db = Db::sqlite();
    let server = TestServer::on(&db); // allows https://app.example.com
    let jwt = token("acme", "alice");
    let url = format!("{}?token={jwt}", server.ws_url());

    let listed = with_header(&url, "origin", "https://app.example.com");
    assert!(server.try_connect(listed).await.is_ok());
    let own = with_header(&url, "origin", &format!("http://{}", server.addr));
    assert!(
        server.try_connect(own).await.is_ok(),
        "same-host pages are allowed"
    );

    let evil = with_header(&url, "origin", "https://evil.example");
    assert_eq!(
        refused(&server, evil).await,
        (403, "origin-not-allowed".into())
    );
    // Refused for its origin even without a token: no JWT work is done for it.
    let tokenless = with_header(&server.ws_url(), "origin", "https://evil.example");
    assert_eq!(
        refused(&server, tokenless).await,
        (403, "origin-not-allowed".into())
    );
}

#[tokio::test]
async fn every_bad_token_is_refused_with_its_reason() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let url = server.ws_url();
    let exp = common::now() + 3600;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": "alice", "account_id": "acme", "exp": exp}))
    );
    let cases = [
        ("no token", url.clone(), "missing-token"),
        ("garbage", format!("{url}?token=abc"), "malformed-token"),
        (
            "wrong key",
            format!(
                "{url}?token={}",
                hs256(
                    json!({"sub": "alice", "account_id": "acme", "exp": exp}),
                    "another-secret-another-secret-xxxx"
                )
            ),
            "invalid-signature",
        ),
        (
            "alg none",
            format!("{url}?token={alg_none}"),
            "unsupported-algorithm",
        ),
        (
            "expired",
            format!(
                "{url}?token={}",
                hs256(
                    json!({"sub": "alice", "account_id": "acme", "exp": common::now() - 3600}),
                    common::JWT_SECRET
                )
            ),
            "token-expired",
        ),
        (
            "no exp",
            format!(
                "{url}?token={}",
                hs256(
                    json!({"sub": "alice", "account_id": "acme"}),
                    common::JWT_SECRET
                )
            ),
            "missing-claim",
        ),
        (
            "no account",
            format!(
                "{url}?token={}",
                hs256(json!({"sub": "alice", "exp": exp}), common::JWT_SECRET)
            ),
            "missing-claim",
        ),
        (
            "no user",
            format!(
                "{url}?token={}",
                hs256(
                    json!({"account_id": "acme", "exp": exp}),
                    common::JWT_SECRET
                )
            ),
            "missing-claim",
        ),
        (
            "account as object",
            format!(
                "{url}?token={}",
                hs256(
                    json!({"sub": "alice", "account_id": {"id": 1}, "exp": exp}),
                    common::JWT_SECRET
                )
            ),
            "invalid-claim",
        ),
    ];
    for (case, request, code) in cases {
        assert_eq!(
            refused(&server, request).await,
            (401, code.to_owned()),
            "case: {case}"
        );
    }
    let basic = with_header(&url, "authorization", "Basic YWxpY2U6c2VjcmV0");
    assert_eq!(
        refused(&server, basic).await,
        (401, "bad-authorization-header".to_owned())
    );
    let bad_header = with_header(&url, "authorization", &format!("Bearer {alg_none}"));
    assert_eq!(
        refused(&server, bad_header).await,
        (401, "unsupported-algorithm".to_owned())
    );
}

#[tokio::test]
async fn numeric_account_ids_are_accepted() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let jwt = hs256(
        json!({"sub": 7, "account_id": 42, "exp": common::now() + 60}),
        common::JWT_SECRET,
    );
    let (_, welcome) = server.connect(&jwt).await;
    assert_eq!(
        (welcome["account_id"].clone(), welcome["user_id"].clone()),
        (json!("42"), json!("7"))
    );
}

#[tokio::test]
async fn audience_and_issuer_are_enforced_when_configured() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.jwt.audience = Some("switchboard".into());
    config.jwt.issuer = Some("https://app.example".into());
    let server = TestServer::start(config);
    let url = server.ws_url();
    let exp = common::now() + 3600;
    let with = |extra: Value| {
        let mut claims = json!({"sub": "alice", "account_id": "acme", "exp": exp});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        format!("{url}?token={}", hs256(claims, common::JWT_SECRET))
    };

    let ok = with(json!({"aud": "switchboard", "iss": "https://app.example"}));
    assert!(server.try_connect(ok).await.is_ok());
    let cases = [
        (
            json!({"aud": "other", "iss": "https://app.example"}),
            "invalid-audience",
        ),
        (json!({"iss": "https://app.example"}), "missing-claim"),
        (
            json!({"aud": "switchboard", "iss": "https://evil.example"}),
            "invalid-issuer",
        ),
        (json!({"aud": "switchboard"}), "missing-claim"),
    ];
    for (extra, code) in cases {
        assert_eq!(
            refused(&server, with(extra.clone())).await,
            (401, code.to_owned()),
            "claims: {extra}"
        );
    }
}

#[tokio::test]
async fn rs256_and_es256_public_keys_verify_their_tokens_only() {
    for (algorithm, public, private) in [
        (Algorithm::RS256, "rsa_public.pem", "rsa_private.pem"),
        (Algorithm::ES256, "ec_public.pem", "ec_private.pem"),
    ] {
        let db = Db::sqlite();
        let mut config = common::config(&db);
        let public_pem = std::fs::read(common::fixture(public)).unwrap();
        config.jwt.key = JwtKey::PublicKey {
            algorithm,
            pem: public_pem.clone(),
        };
        let server = TestServer::start(config);
        let private_pem = std::fs::read(common::fixture(private)).unwrap();
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&private_pem),
            _ => EncodingKey::from_ec_pem(&private_pem),
        }
        .unwrap();
        let claims = json!({"sub": "alice", "account_id": "acme", "exp": common::now() + 60});

        let (_, welcome) = server.connect(&sign(algorithm, &key, claims.clone())).await;
        assert_eq!(welcome["account_id"], "acme", "{algorithm:?}");

        // The classic confusion attack: HS256 "signed" with the public key as the secret.
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&public_pem),
            claims,
        );
        let url = format!("{}?token={confused}", server.ws_url());
        assert_eq!(
            refused(&server, url).await,
            (401, "unsupported-algorithm".to_owned())
        );
    }
}

#[tokio::test]
async fn an_account_named_by_the_client_is_ignored() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let jwt = token("acme", "alice");
    let url = format!(
        "{}?token={jwt}&account_id=globex&user_id=mallory",
        server.ws_url()
    );
    let request = with_header(&url, "x-account-id", "globex");
    let mut client = server.try_connect(request).await.expect("accepted");
    let welcome = client.next_json().await;
    assert_eq!(
        (welcome["account_id"].clone(), welcome["user_id"].clone()),
        (json!("acme"), json!("alice"))
    );
    client
        .send_text(r#"{"type":"join","account_id":"globex"}"#)
        .await;
    assert_eq!(client.next_json().await["code"], "unknown-type");

    server
        .publish("globex", None, "secret-plans", json!({}))
        .await;
    server
        .publish("globex", Some("mallory"), "secret-plans", json!({}))
        .await;
    let seq = server.publish("acme", None, "hello", json!({})).await;
    let (got, event, _) = client.next_event().await;
    assert_eq!((got, event.as_str()), (seq, "hello"));
    let sentinel = server.sentinel("acme", Some("alice")).await;
    client.expect_sentinel(sentinel).await;
}

#[tokio::test]
async fn api_keys_being_rotated_out_are_still_accepted() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let body = json!({"account_id": "acme", "event": "rotated"}).to_string();
    for key in [common::API_KEY, common::PREVIOUS_API_KEY] {
        let (status, answer) = server
            .publish_raw(Some(&format!("Bearer {key}")), body.clone())
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    // Same length, a prefix, an extension: each compared as a digest, each refused.
    let prefix = &common::API_KEY[..common::API_KEY.len() - 1];
    let extended = format!("{}0", common::API_KEY);
    for key in ["test-api-key-0123456780", prefix, &extended] {
        let (status, answer) = server
            .publish_raw(Some(&format!("Bearer {key}")), body.clone())
            .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (401, Some("invalid-api-key")),
            "{key}"
        );
    }
}

#[tokio::test]
async fn a_token_with_critical_header_extensions_is_refused() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let claims = json!({"sub": "alice", "account_id": "acme", "exp": common::now() + 3600});
    let key = EncodingKey::from_secret(common::JWT_SECRET.as_bytes());
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    // RFC 7515: an extension the recipient must understand; this server implements none.
    header.crit = Some(vec!["exp".into()]);
    let critical = jsonwebtoken::encode(&header, &claims, &key).unwrap();

    let url = format!("{}?token={critical}", server.ws_url());
    assert_eq!(
        refused(&server, url.as_str()).await,
        (401, "unsupported-header".into())
    );
    let (status, body) = server
        .as_user(
            &critical,
            reqwest::Method::GET,
            "/api/v1/conversations",
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unsupported-header"))
    );
    // The same claims without `crit` are accepted.
    let plain =
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key).unwrap();
    server.connect(&plain).await;
}

#[tokio::test]
async fn an_address_guessing_tokens_is_answered_429_before_any_token_work() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.auth_failures_per_minute = std::num::NonZeroU32::new(3).unwrap();
    let server = TestServer::start(config);
    let forged = hs256(
        json!({"sub": "alice", "account_id": "acme", "exp": common::now() + 60}),
        "another-secret-that-is-32-bytes-long!!",
    );
    let from = |source: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(source))
            .build()
            .unwrap()
    };
    let presence = |client: &reqwest::Client, jwt: &str| {
        client
            .get(server.http_url("/api/v1/presence"))
            .bearer_auth(jwt)
            .send()
    };
    let guesser = from([127, 0, 0, 1]);
    for _ in 0..4 {
        let response = presence(&guesser, &forged).await.unwrap();
        assert_eq!(response.status(), 401);
    }
    // Over the allowance: refused at once, even with a good token, and told when to come back.
    let response = presence(&guesser, &token("acme", "alice")).await.unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too-many-auth-failures");
    // So is a WebSocket handshake from there.
    let url = format!("{}?token={}", server.ws_url(), token("acme", "alice"));
    assert_eq!(refused(&server, url.as_str()).await.0, 429);
    // Another address is not affected.
    let neighbour = from([127, 0, 0, 2]);
    let response = presence(&neighbour, &token("acme", "alice")).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn fresh_tokens_on_live_sessions_count_against_the_address_and_past_it_are_refused() {
    let db = Db::sqlite();
    let mut config = common::config(&db);
    config.auth_failures_per_minute = std::num::NonZeroU32::new(3).unwrap();
    let server = TestServer::start(config);
    let good = token("acme", "alice");
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(server.connect(&good).await.0);
    }
    let (mut socket_io, _) =
        common::engine_io::Poller::connect(&server, json!({ "token": good })).await;

    // Bad `auth` frames: each refused for what it is (4003), and counted against the address.
    let forged = hs256(
        json!({"sub": "alice", "account_id": "acme", "exp": common::now() + 60}),
        "another-secret-that-is-32-bytes-long!!",
    );
    for session in &mut sessions[..3] {
        let auth = json!({"type": "auth", "token": forged, "ref": 1});
        session.send_text(&auth.to_string()).await;
        assert_eq!(session.next_json().await["code"], "invalid-signature");
        assert_eq!(session.expect_close().await, 4003);
    }
    // The fourth, by Socket.IO's `auth` command, passes the allowance.
    let auth = format!("421{}", json!(["auth", { "token": forged }]));
    socket_io.post(&auth).await;
    let answer = socket_io.next().await;
    let answer: Value = serde_json::from_str(answer.strip_prefix("431").expect("an ack")).unwrap();
    assert_eq!(answer[0]["code"], "invalid-signature", "{answer}");

    // Over it: even a good token is refused unverified, with when to try again.
    let auth = json!({"type": "auth", "token": good, "ref": 2});
    sessions[3].send_text(&auth.to_string()).await;
    let error = sessions[3].next_json().await;
    assert_eq!(error["code"], "too-many-auth-failures", "{error}");
    assert!(error["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0));
    assert_eq!(sessions[3].expect_close().await, 4003);
    // As is any other request from there.
    let response = reqwest::Client::new()
        .get(server.http_url("/api/v1/presence"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
}
