//! What operators and their load balancers see: liveness and readiness.

use serde_json::{json, Value};

use crate::common::{Db, TestServer};

#[tokio::test]
async fn health_and_readiness_answer_for_load_balancers() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let alive = reqwest::get(server.http_url("/healthz")).await.unwrap();
    assert_eq!(alive.status(), 200);
    assert_eq!(
        alive.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    let ready = reqwest::get(server.http_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"status": "ready", "database": "ok", "draining": false})
    );
}
