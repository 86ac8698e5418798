//! What the browser side needs from the server: the SDK at a stable path, the demo page only
//! when enabled, demo tokens only in development mode, and CORS for pages on other origins. The
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
