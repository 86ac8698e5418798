//! What the browser side needs from the server: the SDK at a stable path, the demo page only
//! when enabled, demo tokens only in development mode and only to the demo page itself, and CORS
//! for pages on other origins (not for the demo). The
//! SDK and the page themselves are tested in Chromium (`tests/browser`) and with Node's test
//! runner (`tests/sdk`).

use reqwest::header;
use serde_json::{json, Value};
use switchboard::config::{Config, Demo};

use crate::common::{self, Db, TestServer};

async fn get(url: String) -> reqwest::Response {
    reqwest::get(url).await.unwrap()
}

async fn demo_token(server: &TestServer, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.http_url("/demo/token"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn the_sdk_and_its_types_are_served() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let script = get(server.http_url("/sdk/switchboard.js")).await;
    assert_eq!(script.status(), 200);
    assert_eq!(
        script.headers()[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    assert!(script
        .text()
        .await
        .unwrap()
        .contains("export function connect(url, options)"));
    let types = get(server.http_url("/sdk/switchboard.d.ts")).await;
    assert_eq!(types.status(), 200);
    assert!(types
        .text()
        .await
        .unwrap()
        .contains("export function connect(url: string, options: Options): Client;"));
}

#[tokio::test]
async fn the_demo_is_off_unless_enabled() {
    let db = Db::sqlite();
    let server = TestServer::on(&db); // configured keys, no demo
    let page = get(server.http_url("/demo")).await;
    assert_eq!(page.status(), 404);
    let body: Value = page.json().await.unwrap();
    assert_eq!(body["error"]["code"], "demo-off");
    let (status, body) =
        demo_token(&server, json!({"account_id": "acme", "user_id": "alice"})).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "demo-tokens-off");
}

#[tokio::test]
async fn an_enabled_demo_with_configured_keys_serves_the_page_but_mints_no_tokens() {
    let db = Db::sqlite();
    let server = TestServer::start(Config {
        demo: Demo::Page,
        ..common::config(&db)
    });
    let page = get(server.http_url("/demo")).await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/sdk/switchboard.js"));
    let (status, body) =
        demo_token(&server, json!({"account_id": "acme", "user_id": "alice"})).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "demo-tokens-off");
}

#[tokio::test]
async fn development_mode_gives_demo_tokens_that_open_a_session_as_that_user() {
    let db = Db::sqlite();
    let server = TestServer::start(Config {
        demo: Demo::WithTokens,
        ..common::config(&db)
    });
    let account = common::unique("demo");
    let (status, body) =
        demo_token(&server, json!({"account_id": account, "user_id": "alice"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 3600);
    let (_, welcome) = server.connect(body["token"].as_str().unwrap()).await;
    assert_eq!(welcome["account_id"], account.as_str());
    assert_eq!(welcome["user_id"], "alice");

    let (status, body) = demo_token(&server, json!({"account_id": "", "user_id": "alice"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid-field");
    let (status, body) = demo_token(&server, json!({"account": "acme"})).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn pages_on_other_origins_may_call_the_api_with_a_token() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let preflight = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, server.http_url("/api/v1/events"))
        .header(header::ORIGIN, "https://app.example.com")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let headers = preflight.headers();
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example.com"
    );
    assert!(headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .unwrap()
        .contains("authorization"));
    // No cookies: credentials are never allowed, so an origin gains nothing without a token.
    assert!(headers
        .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
        .is_none());
}

/// What the server answers to a raw `request`, as (status, head, body).
async fn raw(addr: std::net::SocketAddr, request: String) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(common::WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("an answer, then the connection closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// `POST /demo/token` as a page would send it: `host` is where the browser thinks it is,
/// `origin` the page's origin, `content_type` the body's.
fn token_request(host: &str, origin: Option<&str>, content_type: &str) -> String {
    let body = r#"{"account_id":"acme","user_id":"alice"}"#;
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!(
        "POST /demo/token HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Demo tokens impersonate anyone, so only the demo page itself may have them: a page on another
/// site gets none — not with a simple form post, not after a preflight (none is granted), not
/// through a name that resolves to this machine (DNS rebinding) — and nothing under `/demo`
/// carries CORS headers.
#[tokio::test]
async fn demo_tokens_go_to_the_demo_page_alone() {
    let db = Db::sqlite();
    let server = TestServer::start(Config {
        demo: Demo::WithTokens,
        ..common::config(&db)
    });
    let here = server.addr.to_string();
    let own_origin = format!("http://{here}");
    let evil = "https://evil.example";
    let rebound = format!("evil.example:{}", server.addr.port());
    let rebound_origin = format!("http://{rebound}");
    let json = "application/json";
    let cases = [
        (
            "a form post from another site",
            &here,
            Some(evil),
            "text/plain",
            403,
        ),
        ("JSON from another site", &here, Some(evil), json, 403),
        (
            "a page served under another name",
            &rebound,
            Some(rebound_origin.as_str()),
            json,
            403,
        ),
        (
            "a form post from this page",
            &here,
            Some(own_origin.as_str()),
            "text/plain",
            415,
        ),
        (
            "a form post without an origin",
            &here,
            None,
            "text/plain",
            415,
        ),
        (
            "the demo page itself",
            &here,
            Some(own_origin.as_str()),
            json,
            200,
        ),
        ("curl on this machine", &here, None, json, 200),
    ];
    for (what, host, origin, content_type, status) in cases {
        let (got, head, body) = raw(server.addr, token_request(host, origin, content_type)).await;
        assert_eq!(got, status, "{what}: {head}\n{body}");
        assert!(
            !head.contains("access-control-allow-origin"),
            "{what}: {head}"
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        match status {
            200 => assert!(body["token"].is_string(), "{what}: {body}"),
            403 => assert_eq!(body["error"]["code"], "demo-tokens-off", "{what}"),
            _ => assert_eq!(body["error"]["code"], "unsupported-media-type", "{what}"),
        }
    }

    // A preflight for the JSON post is not granted.
    let preflight = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, server.http_url("/demo/token"))
        .header(header::ORIGIN, evil)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
        .send()
        .await
        .unwrap();
    assert!(!preflight.status().is_success(), "{}", preflight.status());
    assert!(preflight
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
    // Nor does the page itself carry CORS headers.
    let page = reqwest::Client::new()
        .get(server.http_url("/demo"))
        .header(header::ORIGIN, evil)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
}
