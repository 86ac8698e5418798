//! Outbound replies in a cluster: `switchboard` nodes as separate processes on this machine's
//! PostgreSQL and a `redis-server` of the test's own (see `cluster`), posting to a backend that
//! counts the requests of each `webhook-id` and notes any that arrive while another of the same
//! id is still being answered. A delivery is sent by one node at a time; the node that holds one
//! can die mid-retry and another finishes it once the lease runs out; and pending deliveries are
//! each sent once when every node restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::cluster::Redis;
use crate::common::process::{Process, Switchboard};
use crate::common::{eventually, unique, Api, Db};

/// The outbound settings of every node: a request's time limit, and the lease just over it.
const TIMEOUT: Duration = Duration::from_secs(3);
const LEASE: Duration = Duration::from_secs(4);
const SCAN_INTERVAL: Duration = Duration::from_millis(300);
/// How long the backend takes to answer: long enough for a second sender to overlap.
const ANSWER_AFTER: Duration = Duration::from_millis(150);

/// How the backend answers the requests of each webhook-id, counted from 1.
#[derive(Clone, Copy)]
struct Script {
    /// The first ones fail (500).
    fail_first: usize,
    /// This one is held unanswered until the test lets it go (then fails).
    hold: Option<usize>,
    /// After those: 200, or 500 when false.
    accept: bool,
}

#[derive(Default)]
struct Seen {
    requests: HashMap<String, usize>,
    accepted: HashMap<String, usize>,
    answering: HashMap<String, usize>,
    /// Webhook-ids that arrived while another request of the same id was being answered.
    overlaps: Vec<String>,
    held: usize,
}

/// Counts a request as answered when it is, or when its connection goes and actix drops it.
struct Answering {
    seen: Arc<Mutex<Seen>>,
    id: String,
}

impl Drop for Answering {
    fn drop(&mut self) {
        if let Some(n) = self.seen.lock().unwrap().answering.get_mut(&self.id) {
            *n -= 1;
        }
    }
}

/// The application's backend.
struct Backend {
    url: String,
    seen: Arc<Mutex<Seen>>,
    script: Arc<Mutex<Script>>,
    release: Arc<Notify>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    fn start(script: Script) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let script = Arc::new(Mutex::new(script));
        let release = Arc::new(Notify::new());
        let shared = (seen.clone(), script.clone(), release.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = actix_web::HttpServer::new(move || {
                    let shared = shared.clone();
                    actix_web::App::new().default_service(actix_web::web::to(
                        move |req: actix_web::HttpRequest| {
                            let (seen, script, release) = shared.clone();
                            answer(req, seen, script, release)
                        },
                    ))
                })
                .workers(2)
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
            url: format!("http://{addr}/hooks"),
            seen,
            script,
            release,
            handle,
            thread: Some(thread),
        }
    }

    fn requests(&self, id: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .requests
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    fn accepted(&self, id: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .accepted
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// Waits (bounded) until `done` holds of what the backend has seen.
    async fn until(&self, what: &str, wait: Duration, done: impl Fn(&Seen) -> bool) {
        eventually(&format!("the backend saw {what}"), wait, || async {
            match done(&self.seen.lock().unwrap()) {
                true => Ok(()),
                false => Err("not yet"),
            }
        })
        .await
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.release.notify_waiters();
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn answer(
    req: actix_web::HttpRequest,
    seen: Arc<Mutex<Seen>>,
    script: Arc<Mutex<Script>>,
    release: Arc<Notify>,
) -> actix_web::HttpResponse {
    let id = req
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let script = *script.lock().unwrap();
    let nth = {
        let mut seen = seen.lock().unwrap();
        let answering = seen.answering.entry(id.clone()).or_default();
        *answering += 1;
        if *answering > 1 {
            seen.overlaps.push(id.clone());
        }
        let nth = seen.requests.entry(id.clone()).or_default();
        *nth += 1;
        *nth
    };
    let _answering = Answering {
        seen: seen.clone(),
        id: id.clone(),
    };
    let accept = if script.hold == Some(nth) {
        let released = release.notified();
        seen.lock().unwrap().held += 1;
        let _ = tokio::time::timeout(Duration::from_secs(60), released).await;
        false
    } else {
        // The backend's own pace (the scenario), not a wait for something.
        tokio::time::sleep(ANSWER_AFTER).await;
        nth > script.fail_first && script.accept
    };
    if accept {
        *seen.lock().unwrap().accepted.entry(id).or_default() += 1;
        actix_web::HttpResponse::Ok().finish()
    } else {
        actix_web::HttpResponse::InternalServerError().finish()
    }
}

/// A `switchboard` process in cluster mode, and the name it gives its leases.
struct Node {
    process: Process,
    api: Api,
    name: String,
}

impl std::ops::Deref for Node {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A duration as a setting takes it.
fn setting(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// Starts `count` nodes together (so that they look for pending deliveries at the same time).
fn start_nodes(db: &Db, redis: &Redis, count: usize) -> Vec<Node> {
    let processes: Vec<Process> = (0..count)
        .map(|_| {
            Switchboard::new()
                .keys()
                .database(db.url())
                .cluster(&redis.url())
                .env("SWITCHBOARD_OUTBOUND_ALLOW_PRIVATE", "true")
                .env("SWITCHBOARD_OUTBOUND_TIMEOUT", setting(TIMEOUT))
                .env("SWITCHBOARD_OUTBOUND_LEASE", setting(LEASE))
                .env("SWITCHBOARD_OUTBOUND_SCAN_INTERVAL", setting(SCAN_INTERVAL))
                .env("SWITCHBOARD_OUTBOUND_RETRY_BASE", "500ms")
                .env("SWITCHBOARD_OUTBOUND_MAX_ATTEMPTS", "20")
                .spawn()
        })
        .collect();
    processes
        .into_iter()
        .map(|mut process| {
            let addr = process.listening_on().parse().unwrap();
            let said = "outbound: node ";
            let line = match process.log.iter().find(|line| line.contains(said)) {
                Some(line) => line.clone(),
                None => process.wait_for(said),
            };
            let name = line.split(said).nth(1).unwrap();
            let name = name.split_whitespace().next().unwrap().to_owned();
            Node {
                process,
                api: Api { addr },
                name,
            }
        })
        .collect()
}

/// The delivery of `message` as the admin API shows it.
async fn delivery(node: &Api, integration: &str, message: &Value) -> Value {
    node.deliveries(integration)
        .await
        .into_iter()
        .find(|d| d["message_id"] == message["id"])
        .expect("the reply has a delivery")
}

/// What the test's parts share: the database and Redis the nodes use, the backend, and the
/// integration whose replies go to it.
struct Scene {
    db: Db,
    redis: Redis,
    backend: Backend,
    integration: Value,
    id: String,
    account: String,
}

/// How long the test waits for what it expects, beyond the lease.
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn each_delivery_is_sent_by_one_node_at_a_time_and_survives_its_node() {
    let db = Db::postgres();
    let redis = Redis::start();
    let backend = Backend::start(Script {
        fail_first: 1,
        hold: Some(2),
        accept: true,
    });
    let mut nodes = start_nodes(&db, &redis, 3);
    let integration = nodes[0]
        .integration(json!({"provider": "generic", "external_id": unique("shop"),
                            "account_id": unique("cluster-outbound"), "outbound_url": backend.url}))
        .await;
    let scene = Scene {
        id: integration["id"].as_str().unwrap().to_owned(),
        account: integration["account_id"].as_str().unwrap().to_owned(),
        integration,
        db,
        redis,
        backend,
    };
    the_holder_dies_mid_retry(&scene, &mut nodes).await;
    every_node_restarts_with_deliveries_pending(&scene, nodes).await;
    assert_eq!(
        scene.backend.seen.lock().unwrap().overlaps,
        Vec::<String>::new(),
        "sent by two nodes at once"
    );
}

/// The first attempt fails; the retry is held unanswered, and the node making it is killed
/// meanwhile: another takes the delivery over once the lease runs out.
async fn the_holder_dies_mid_retry(scene: &Scene, nodes: &mut Vec<Node>) {
    let conversation = nodes[0].conversation_from(&scene.integration, "c0").await;
    let reply = nodes[0]
        .reply(&scene.account, "agent", &conversation, "held")
        .await;
    let webhook_id = delivery(&nodes[0], &scene.id, &reply).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let backend = &scene.backend;
    backend
        .until("the retry", WAIT, |seen| seen.held == 1)
        .await;
    let holder = delivery(&nodes[0], &scene.id, &reply).await["leased_by"].clone();
    let holder = nodes
        .iter()
        .position(|node| holder == node.name.as_str())
        .unwrap_or_else(|| panic!("held by {holder}, not a node of this test"));
    nodes[holder].process.signal("KILL");
    let dead = nodes.remove(holder);
    backend.release.notify_waiters();
    let still = delivery(&nodes[0], &scene.id, &reply).await;
    assert_eq!(
        (&still["status"], &still["leased_by"]),
        (&json!("pending"), &json!(dead.name)),
        "killed while it held the delivery"
    );
    // Another node takes it once the lease runs out (and one scan later).
    backend
        .until("the delivery taken over", LEASE + WAIT, |seen| {
            seen.accepted.get(&webhook_id) == Some(&1)
        })
        .await;
    let message = reply["id"].as_str().unwrap();
    nodes[0]
        .delivery_when(&scene.id, message, "delivered", WAIT)
        .await;
    assert_eq!(backend.requests(&webhook_id), 3);
}

/// Replies on every node, whose backend now fails them all; every node dies; all start again at
/// once, the backend accepting: each pending delivery is sent once.
async fn every_node_restarts_with_deliveries_pending(scene: &Scene, mut nodes: Vec<Node>) {
    let backend = &scene.backend;
    *backend.script.lock().unwrap() = Script {
        fail_first: 0,
        hold: None,
        accept: false,
    };
    nodes.extend(start_nodes(&scene.db, &scene.redis, 1));
    let mut replies = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let contact = format!("c{}", i + 1);
        let conversation = node.conversation_from(&scene.integration, &contact).await;
        for text in ["one", "two"] {
            replies.push(
                node.reply(&scene.account, "agent", &conversation, text)
                    .await,
            );
        }
    }
    let mut ids = Vec::new();
    for reply in &replies {
        let delivery = delivery(&nodes[0], &scene.id, reply).await;
        ids.push(delivery["id"].as_str().unwrap().to_owned());
    }
    backend
        .until("every reply tried", WAIT, |seen| {
            ids.iter().all(|id| seen.requests.contains_key(id))
        })
        .await;
    for node in &mut nodes {
        node.process.signal("KILL");
        node.process.exits_within(Duration::from_secs(5));
    }
    drop(nodes);
    // What the dead nodes had sent is all counted once none of it is being answered.
    backend
        .until("the dead nodes' requests answered", WAIT, |seen| {
            seen.answering.values().all(|n| *n == 0)
        })
        .await;
    let before: Vec<usize> = ids.iter().map(|id| backend.requests(id)).collect();

    backend.script.lock().unwrap().accept = true;
    let nodes = start_nodes(&scene.db, &scene.redis, 3);
    backend
        // Three nodes starting at once on a machine running the whole suite take a while before
        // the first scan; what this checks is once and no overlap, not how soon.
        .until("every reply delivered", LEASE + WAIT * 3, |seen| {
            ids.iter().all(|id| seen.accepted.contains_key(id))
        })
        .await;
    // Any second sending would have come at once: every node looked when it started. A second
    // sending could only come from a node's scan, a timer nothing outside the node shows, so
    // the window is two scans and a quarter of the lease (no sentinel: a delivery made for one
    // would be taken by whichever node scans first, telling nothing of the others).
    tokio::time::sleep(LEASE / 4 + SCAN_INTERVAL * 2).await;
    for (id, before) in ids.iter().zip(before) {
        assert_eq!(
            (backend.requests(id) - before, backend.accepted(id)),
            (1, 1),
            "{id} after the restart"
        );
    }
    for reply in &replies {
        let message = reply["id"].as_str().unwrap();
        nodes[0]
            .delivery_when(&scene.id, message, "delivered", WAIT)
            .await;
    }
}
