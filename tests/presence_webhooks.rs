//! Presence webhooks (`user.online` / `user.offline`), received by a small HTTP server of the
//! test's own that checks each request's Standard Webhooks signature and keeps what arrived:
//! per user, the webhooks must alternate, start with `user.online`, carry generations 1, 2, 3, …
//! and a `webhook-id` of their own (a retry of one would repeat its id, which is counted).
//! Single node here, on SQLite; three nodes with one killed, and a reconnect storm, in
//! `cluster` mode at the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::Redis;
use crate::common::process::{Process, Switchboard};
use crate::common::{config, eventually, token, unique, Api, Db, TestServer};
use switchboard::auth::signature::StandardSignatures;
use switchboard::config::{PresenceWebhook, Secret};

/// The secret the global receiver's webhooks are signed with.
const SECRET: &str = "whsec_cHJlc2VuY2Utd2ViaG9va3MtdGVzdC1zZWNyZXQ=";
/// Longer than any wait the server needs to decide and send (the grace is 300 ms in tests).
const WAIT: Duration = Duration::from_secs(10);

/// One webhook as received.
#[derive(Debug, Clone)]
struct Hook {
    id: String,
    online: bool,
    generation: i64,
}

/// Per (account, user), the webhooks in the order they arrived.
type Seen = Mutex<HashMap<(String, String), Vec<Hook>>>;

/// The application's backend, receiving presence webhooks.
struct Receiver {
    url: String,
    seen: Arc<Seen>,
    /// Requests whose signature did not verify, or that were not presence webhooks.
    bad: Arc<Mutex<Vec<String>>>,
    /// What the webhooks must be signed with; settable after start (an integration's secret is
    /// known once the integration, which needs the receiver's URL, is made).
    secret: Arc<Mutex<String>>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(secret: &str) -> Self {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let secret = Arc::new(Mutex::new(secret.to_owned()));
        let shared = (seen.clone(), bad.clone(), secret.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = actix_web::HttpServer::new(move || {
                    let shared = shared.clone();
                    actix_web::App::new().default_service(actix_web::web::to(
                        move |req: actix_web::HttpRequest, body: actix_web::web::Bytes| {
                            let (seen, bad, secret) = shared.clone();
                            async move {
                                let secret = secret.lock().unwrap().clone();
                                take(&req, &body, &secret, &seen, &bad);
                                actix_web::HttpResponse::Ok().finish()
                            }
                        },
                    ))
                })
                .workers(1)
                .bind("127.0.0.1:0")
                .unwrap();
                let addr = server.addrs()[0];
                let server = server.run();
                tx.send((addr, server.handle())).unwrap();
                let _ = server.await;
            });
        });
        let (addr, handle) = rx.recv().unwrap();
        Self {
            url: format!("http://{addr}/presence"),
            seen,
            bad,
            secret,
            handle,
            thread: Some(thread),
        }
    }

    fn of(&self, account: &str, user: &str) -> Vec<Hook> {
        let key = (account.to_owned(), user.to_owned());
        self.seen
            .lock()
            .unwrap()
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until the user's webhooks number `count`; returns them.
    async fn until(&self, account: &str, user: &str, count: usize) -> Vec<Hook> {
        eventually(&format!("{count} webhooks of {user}"), WAIT, || async {
            let hooks = self.of(account, user);
            match hooks.len() >= count {
                true => Ok(hooks),
                false => Err(hooks),
            }
        })
        .await
    }

    /// What a correct sender gives a receiver: the user's webhooks alternate from online,
    /// generations 1, 2, … in order, each id once; and every request was signed.
    fn check(&self, account: &str, user: &str) -> Vec<Hook> {
        assert!(self.bad.lock().unwrap().is_empty(), "{:?}", self.bad);
        let hooks = self.of(account, user);
        let mut sorted = hooks.clone();
        sorted.sort_by_key(|h| h.generation);
        for (i, hook) in sorted.iter().enumerate() {
            assert_eq!(hook.generation, i as i64 + 1, "{hooks:?}");
            assert_eq!(hook.online, i % 2 == 0, "{hooks:?}");
        }
        let mut ids: Vec<&str> = hooks.iter().map(|h| h.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), hooks.len(), "each webhook once: {hooks:?}");
        hooks
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Keeps a request if it is a signed presence webhook; notes it as bad otherwise.
fn take(
    req: &actix_web::HttpRequest,
    body: &[u8],
    secret: &str,
    seen: &Seen,
    bad: &Mutex<Vec<String>>,
) {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    let signed = StandardSignatures::parse(&header("webhook-signature"))
        .is_ok_and(|s| s.verify(secret, &id, &timestamp, body));
    let payload: Value = serde_json::from_slice(body).unwrap_or_default();
    let data = &payload["data"];
    let online = match payload["type"].as_str() {
        Some("user.online") => true,
        Some("user.offline") => false,
        _ => {
            bad.lock().unwrap().push(format!("not presence: {payload}"));
            return;
        }
    };
    if !signed || data["online"] != online {
        bad.lock()
            .unwrap()
            .push(format!("signed={signed}: {payload}"));
        return;
    }
    let key = (
        data["account_id"].as_str().unwrap_or_default().to_owned(),
        data["user_id"].as_str().unwrap_or_default().to_owned(),
    );
    seen.lock().unwrap().entry(key).or_default().push(Hook {
        id,
        online,
        generation: data["generation"].as_i64().unwrap_or_default(),
    });
}

/// A server on SQLite whose presence webhooks go to `receiver`.
fn server_for(db: &Db, receiver: &Receiver) -> TestServer {
    TestServer::start(config_for(db, receiver))
}

fn config_for(db: &Db, receiver: &Receiver) -> switchboard::config::Config {
    let mut config = config(db);
    config.presence_webhook = Some(PresenceWebhook {
        url: receiver.url.clone(),
        secret: Secret::new(SECRET.into()),
    });
    config
}

/// [`server_for`], looking for due deliveries every 200 ms and holding one for 2 s: a server
/// that stopped may have recorded a webhook, even claimed it, without sending it.
fn scanning_server_for(db: &Db, receiver: &Receiver) -> TestServer {
    let mut config = config_for(db, receiver);
    config.outbound.scan_interval = Duration::from_millis(200);
    config.outbound.timeout = Duration::from_secs(1);
    config.outbound.lease = Duration::from_secs(2);
    TestServer::start(config)
}

/// Online at the first tab, nothing for a reload within the grace nor for a second tab, offline
/// once the grace has passed after the last; then online again, as generation 3 — each signed,
/// listed among the deliveries as delivered.
#[actix_web::test]
async fn a_user_goes_online_and_offline_once_each_and_a_reload_sends_nothing() {
    let receiver = Receiver::start(SECRET);
    let db = Db::sqlite();
    let server = server_for(&db, &receiver);
    let account = unique("acct");
    let user = "ana";
    let user_token = token(&account, user);

    let (first, _) = server.connect(&user_token).await;
    let hooks = receiver.until(&account, user, 1).await;
    assert!(hooks[0].online);
    // A reload: the tab closes and opens again within the grace; a second tab comes and goes.
    drop(first);
    let (tab, _) = server.connect(&user_token).await;
    let (second, _) = server.connect(&user_token).await;
    drop(second);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.of(&account, user).len(),
        1,
        "a reload sends nothing"
    );

    drop(tab);
    let hooks = receiver.until(&account, user, 2).await;
    assert!(!hooks[1].online);
    let (_back, _) = server.connect(&user_token).await;
    receiver.until(&account, user, 3).await;
    let hooks = receiver.check(&account, user);
    assert_eq!(hooks.len(), 3, "{hooks:?}");

    let listed = eventually("three delivered presence webhooks", WAIT, || async {
        let (status, body) = server
            .admin(reqwest::Method::GET, "/api/v1/presence/deliveries", None)
            .await;
        assert_eq!(status, 200, "{body}");
        let ours: Vec<Value> = body["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["status"] == "delivered" && hooks.iter().any(|h| d["id"] == h.id))
            .cloned()
            .collect();
        match ours.len() {
            3 => Ok(ours),
            _ => Err(body),
        }
    })
    .await;
    assert!(listed.iter().all(|d| d["kind"] == "presence"), "{listed:?}");
}

/// A single node that stops with a user online (its sessions do not survive it) sends their
/// offline once — recorded before it stops (then sent by the next run, if it had no time to), or
/// when it starts again — and the next online is the next generation: the generations live in
/// the database.
#[actix_web::test]
async fn a_restarted_node_takes_its_users_offline_once_and_generations_go_on() {
    let receiver = Receiver::start(SECRET);
    let db = Db::sqlite();
    let account = unique("acct");
    let user_token = token(&account, "cy");
    let first = scanning_server_for(&db, &receiver);
    let (tab, _) = first.connect(&user_token).await;
    receiver.until(&account, "cy", 1).await;
    drop(first);
    drop(tab);

    let second = scanning_server_for(&db, &receiver);
    let hooks = receiver.until(&account, "cy", 2).await;
    assert!(!hooks[1].online, "{hooks:?}");
    let (_back, _) = second.connect(&user_token).await;
    receiver.until(&account, "cy", 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.check(&account, "cy").len(), 3);
}

/// An account's own presence integration receives its webhooks, signed with its outbound
/// secret, and lists them; another account's users send it nothing.
#[actix_web::test]
async fn an_accounts_presence_integration_receives_its_webhooks() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let account = unique("acct");
    let receiver = Receiver::start("not yet known");
    let (status, created) = server
        .admin(
            reqwest::Method::POST,
            "/api/v1/integrations",
            Some(json!({
                "provider": "presence",
                "account_id": account,
                "outbound_url": receiver.url,
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert!(created.get("webhook_path").is_none(), "{created}");
    *receiver.secret.lock().unwrap() = created["outbound_secret"].as_str().unwrap().to_owned();
    let integration = created["id"].as_str().unwrap();

    let (tab, _) = server.connect(&token(&account, "bo")).await;
    let (other, _) = server.connect(&token(&unique("other"), "bo")).await;
    receiver.until(&account, "bo", 1).await;
    drop(tab);
    drop(other);
    receiver.until(&account, "bo", 2).await;
    assert_eq!(receiver.check(&account, "bo").len(), 2);
    assert_eq!(
        receiver.seen.lock().unwrap().len(),
        1,
        "only its account's users"
    );
    let delivered = eventually("two delivered", WAIT, || async {
        let listed = server.deliveries(integration).await;
        match listed.iter().filter(|d| d["status"] == "delivered").count() {
            2 => Ok(listed),
            _ => Err(listed),
        }
    })
    .await;
    assert!(delivered.iter().all(|d| d["kind"] == "presence"));
}

/// Asking for a presence integration with what it cannot have is refused, field by field.
#[actix_web::test]
async fn a_presence_integration_needs_a_url_and_no_external_id() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    for (body, field) in [
        (
            json!({"provider": "presence", "account_id": "a"}),
            "outbound_url",
        ),
        (
            json!({"provider": "presence", "account_id": "a", "external_id": "x",
                   "outbound_url": "http://127.0.0.1:9/"}),
            "external_id",
        ),
        (
            json!({"provider": "presence", "account_id": "a", "secret": "whsec_abcdefgh",
                   "outbound_url": "http://127.0.0.1:9/"}),
            "secret",
        ),
    ] {
        let (status, answer) = server
            .admin(reqwest::Method::POST, "/api/v1/integrations", Some(body))
            .await;
        assert_eq!(status, 400, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("`{field}`")), "{answer}");
    }
}

/// A node of a three-node cluster on PostgreSQL and the test's Redis, its deliveries scanned
/// for often (a dead node's are taken over soon).
/// Waits until the node says it is ready with its Redis link up.
async fn linked(api: &Api) {
    eventually("the node linked to Redis", WAIT, || async {
        let body: Value = match reqwest::get(api.http_url("/readyz")).await {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        match (body["status"].as_str(), body["redis"].as_str()) {
            (Some("ready"), Some("ok")) => Ok(()),
            _ => Err(body),
        }
    })
    .await;
}

fn cluster_node(db: &Db, redis: &Redis) -> (Process, Api) {
    Switchboard::new()
        .keys()
        .database(db.url())
        .cluster(&redis.url())
        // Room for twenty users to reconnect one after another within it.
        .env("SWITCHBOARD_PRESENCE_GRACE", "2s")
        .env("SWITCHBOARD_OUTBOUND_ALLOW_PRIVATE", "true")
        .env("SWITCHBOARD_OUTBOUND_SCAN_INTERVAL", "500ms")
        .env("SWITCHBOARD_OUTBOUND_RETRY_BASE", "200ms")
        .serve()
}

/// Three nodes: a user with tabs on two nodes is one presence; a node killed with `kill -9`
/// takes its only user offline once, within the cluster's record lifetime (15 s, swept every
/// 5 s); twenty users moving from one node to another within the grace (a reconnect storm)
/// send nothing. The receiver checks the order, generations and ids of every user's webhooks.
#[actix_web::test]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn in_a_cluster_each_transition_is_sent_once_across_a_node_kill_and_a_reconnect_storm() {
    let db = Db::postgres();
    let redis = Redis::start();
    let mut nodes: Vec<(Process, Api)> = (0..3).map(|_| cluster_node(&db, &redis)).collect();
    // A node takes sessions before its Redis link is up (alone, degraded), and presence
    // decided alone is not the cluster's: start once every node has joined.
    for (_, api) in &nodes {
        linked(api).await;
    }
    let account = unique("presence");
    // The account's own integration (a global receiver would be every test server's on this
    // shared database, and those without one would fail its deliveries).
    let receiver = Receiver::start("not yet known");
    let (status, created) = nodes[0]
        .1
        .admin(
            reqwest::Method::POST,
            "/api/v1/integrations",
            Some(json!({"provider": "presence", "account_id": account,
                        "outbound_url": receiver.url})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    *receiver.secret.lock().unwrap() = created["outbound_secret"].as_str().unwrap().to_owned();

    // One user, tabs on two nodes: online once; one tab closing changes nothing.
    let (on_first, _) = nodes[0].1.connect(&token(&account, "multi")).await;
    let (_on_second, _) = nodes[1].1.connect(&token(&account, "multi")).await;
    receiver.until(&account, "multi", 1).await;
    drop(on_first);

    // The only tab of another user is on the node that dies.
    let (doomed_tab, _) = nodes[2].1.connect(&token(&account, "doomed")).await;
    receiver.until(&account, "doomed", 1).await;
    nodes[2].0.signal("KILL");
    drop(doomed_tab);
    let waited = std::time::Instant::now();
    eventually(
        "the dead node's user offline",
        Duration::from_secs(40),
        || async {
            match receiver.of(&account, "doomed").len() {
                2 => Ok(()),
                n => Err(n),
            }
        },
    )
    .await;
    assert!(waited.elapsed() < Duration::from_secs(25), "{waited:?}");

    // The storm: twenty users leave node 0 and come back on node 1 at once.
    let users: Vec<String> = (0..20).map(|i| format!("storm{i}")).collect();
    let mut tabs = Vec::new();
    for user in &users {
        tabs.push(nodes[0].1.connect(&token(&account, user)).await.0);
    }
    for user in &users {
        receiver.until(&account, user, 1).await;
    }
    drop(tabs);
    let mut back = Vec::new();
    for user in &users {
        back.push(nodes[1].1.connect(&token(&account, user)).await.0);
    }
    // Well past the grace, and a sweep of the survivors' records.
    tokio::time::sleep(Duration::from_secs(6)).await;

    for user in &users {
        assert_eq!(
            receiver.check(&account, user).len(),
            1,
            "{user}: no flapping"
        );
    }
    assert_eq!(receiver.check(&account, "multi").len(), 1, "one presence");
    let doomed = receiver.check(&account, "doomed");
    assert_eq!(doomed.len(), 2, "offline exactly once: {doomed:?}");
    nodes.truncate(2);
}
