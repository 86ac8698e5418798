//! What operators, their load balancers and their monitoring see: liveness, readiness, the
//! database going away and coming back, metrics.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{eventually, token, unique, Db, TestServer, API_KEY};

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

/// A TCP relay between the server and PostgreSQL that the test can cut: what the server sees
/// when the database goes away (connections reset, new ones refused) and comes back.
struct Relay {
    port: u16,
    upstream: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut relay = Self {
            port,
            upstream,
            task: None,
        };
        relay.serve(listener);
        relay
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream;
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }));
    }

    /// Every connection through the relay is dropped, and new ones are refused.
    async fn cut(&mut self) {
        // Aborting the task drops the listener and, with the join set, every connection; once
        // the aborted task is done, its port is free again.
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the relay's port, free since the cut");
        self.serve(listener);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn with_postgresql_down_publishes_answer_503_and_the_node_recovers_by_itself() {
    let db = Db::postgres();
    let url = reqwest::Url::parse(db.url()).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let mut relay = Relay::start(upstream.parse().unwrap()).await;
    let mut through_relay = url.clone();
    through_relay.set_port(Some(relay.port)).unwrap();
    let mut config = crate::common::config(&Db::with_url(through_relay.as_str()));
    config.db_pool_size = 2;
    let server = TestServer::start(config);

    let account = unique("pg-down");
    let (mut client, _) = server.connect(&token(&account, "alice")).await;
    let first = server.publish(&account, None, "before", json!(1)).await;
    assert_eq!(client.next_event().await.0, first);

    relay.cut().await;
    let body = json!({"account_id": account, "event": "during", "data": 2}).to_string();
    let (status, answer) = server
        .publish_raw(Some(&format!("Bearer {API_KEY}")), body)
        .await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "unavailable");
    let ready = reqwest::get(server.http_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["database"],
        "unreachable"
    );

    relay.restore().await;
    // The node reconnects by itself; the refused publish was not stored behind anyone's back.
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let body = json!({"account_id": account, "event": "after", "data": 3}).to_string();
        let (status, answer) = server
            .publish_raw(Some(&format!("Bearer {API_KEY}")), body)
            .await;
        if status == 200 {
            break answer["seq"].as_u64().unwrap();
        }
        assert_eq!(status, 503, "{answer}");
        assert!(Instant::now() < deadline, "still unavailable");
    };
    assert_eq!(after, first + 1);
    let (seq, event, _) = client.next_event().await;
    assert_eq!((seq, event.as_str()), (after, "after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn with_postgresql_down_a_new_rooms_session_is_closed_with_1011_not_left_waiting() {
    let db = Db::postgres();
    let url = reqwest::Url::parse(db.url()).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let mut relay = Relay::start(upstream.parse().unwrap()).await;
    let mut through_relay = url.clone();
    through_relay.set_port(Some(relay.port)).unwrap();
    let mut config = crate::common::config(&Db::with_url(through_relay.as_str()));
    config.db_pool_size = 2;
    let server = TestServer::start(config);

    // The account's first session: its new room must read the account's sequence number, and
    // cannot. The session is closed (1011: reconnect with backoff) instead of waiting, without
    // a welcome, for as long as the database is away.
    relay.cut().await;
    let token = token(&unique("pg-down-room"), "alice");
    let mut client = server
        .try_connect(format!("{}?token={token}", server.ws_url()))
        .await
        .unwrap();
    assert_eq!(client.expect_close().await, 1011);

    relay.restore().await;
    let url = format!("{}?token={token}", server.ws_url());
    eventually("still refused", Duration::from_secs(20), || async {
        let mut client = server.try_connect(url.as_str()).await.unwrap();
        match client.receive(crate::common::WAIT).await {
            crate::common::Received::Json(welcome) => {
                assert_eq!(welcome["type"], "welcome", "{welcome}");
                Ok(())
            }
            other => Err(other),
        }
    })
    .await;
}

#[tokio::test]
async fn metrics_are_served_for_prometheus_without_user_labels() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let scrape = || async {
        let response = reqwest::get(server.http_url("/metrics")).await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    };
    let account = unique("metrics");
    let (mut client, _) = server.connect(&token(&account, "alice")).await;
    server.publish(&account, None, "x", json!(1)).await;
    client.next_event().await;
    let refused = server
        .try_connect(format!("{}?token=not-a-token", server.ws_url()))
        .await;
    assert!(refused.is_err());

    let text = scrape().await;
    for name in [
        "# TYPE switchboard_connections gauge",
        "# TYPE switchboard_rooms gauge",
        "# TYPE switchboard_deliveries_total counter",
        "# TYPE switchboard_events_published_total counter",
        "# TYPE switchboard_publish_to_delivery_seconds histogram",
        "switchboard_publish_to_delivery_seconds_bucket{node=\"node_",
        "switchboard_auth_failures_total{node=\"node_",
        "reason=\"malformed-token\"}",
    ] {
        assert!(text.contains(name), "no {name:?} in:\n{text}");
    }
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let delivered = value(&text, "switchboard_deliveries_total");
    assert!(delivered >= 1.0, "{text}");
    // Tests share one process, so counters move with other tests: only growth is asserted.
    server.publish(&account, None, "x", json!(2)).await;
    client.next_event().await;
    assert!(value(&scrape().await, "switchboard_deliveries_total") > delivered);
    // Never labelled by who: the account and the user appear nowhere.
    assert!(
        !text.contains(&account) && !text.contains("alice"),
        "{text}"
    );
}

#[tokio::test]
async fn with_a_metrics_token_the_scrape_needs_it() {
    let db = Db::sqlite();
    let mut config = crate::common::config(&db);
    let scraper = "metrics-token-0123456789abcdef";
    config.metrics_token = Some(switchboard::config::Secret::new(scraper.into()));
    let server = TestServer::start(config);
    let scrape = |bearer: Option<String>| {
        let mut request = reqwest::Client::new().get(server.http_url("/metrics"));
        if let Some(bearer) = bearer {
            request = request.header("authorization", bearer);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    for bearer in [
        None,
        Some("Bearer not-the-token".to_owned()),
        Some(format!("Bearer {scraper}x")),
        Some(format!("Bearer {API_KEY}")),
        Some(scraper.to_owned()),
    ] {
        let (status, body) = scrape(bearer.clone()).await;
        assert_eq!(status, 401, "{bearer:?}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "invalid-metrics-token", "{bearer:?}");
        assert!(!body.to_string().contains(scraper));
    }
    let (status, text) = scrape(Some(format!("Bearer {scraper}"))).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("# TYPE switchboard_connections gauge"),
        "{text}"
    );
}
