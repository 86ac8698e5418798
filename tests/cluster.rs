//! Cluster mode as it runs in production: `switchboard` nodes as separate processes on this
//! machine's PostgreSQL, sharing a `redis-server` of the test's own (on its own port, so the
//! machine's shared Redis is left alone and can be stopped and restarted mid-stream).
//!
//! Clients here behave as the SDK does: when a connection ends they reconnect to a node that is
//! up, resuming with `?since=` their last sequence number; what they must end with is exactly
//! their events, in order, once each.

use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::engine_io::Poller;
use crate::common::process::{Process, Switchboard, CLUSTER_SECRET};
use crate::common::{eventually, token, unique, Api, Client, Db, Received, API_KEY, WAIT};

/// A `redis-server` of the test's own, on a free port; killed on drop.
pub(crate) struct Redis {
    port: u16,
    /// Arguments besides the port (TLS, a password).
    args: Vec<String>,
    process: Option<Process>,
}

impl Redis {
    pub(crate) fn start() -> Self {
        Self::start_with(Vec::new())
    }

    fn start_with(args: Vec<String>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self {
            port,
            args,
            process: None,
        };
        redis.restart();
        redis
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection of the test's own, to publish on the cluster channel as anyone could.
    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Sends it a signal (`STOP` freezes it: connections stay open and nothing answers).
    fn signal(&self, name: &str) {
        self.process.as_ref().expect("running").signal(name);
    }

    /// Kills it: every connection to it drops, and everything it held is gone.
    fn stop(&mut self) {
        self.process.take();
    }

    /// Starts it (again) on the same port, empty.
    fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        let port = self.port.to_string();
        let port_option = match self.args.iter().any(|a| a == "--tls-cert-file") {
            true => vec!["--port", "0", "--tls-port", &port],
            false => vec!["--port", &port],
        };
        command
            .args(port_option)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // Its log where `Process` reads it: it says when it takes connections.
            .args(["--logfile", "/dev/stderr"])
            .args(&self.args);
        let mut process = Process::spawn(command);
        process.wait_for("Ready to accept connections");
        self.process = Some(process);
    }
}

/// A `switchboard` process in cluster mode.
struct Node {
    process: Process,
    api: Api,
}

impl std::ops::Deref for Node {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Node {
    async fn start(db: &Db, redis: &Redis) -> Self {
        Self::start_with(db, &redis.url(), &[]).await
    }

    /// A node with settings of its own (`env`) on top of the tests' ones.
    async fn start_with(db: &Db, redis_url: &str, env: &[(&str, &str)]) -> Self {
        let (process, api) = Switchboard::new()
            .keys()
            .database(db.url())
            .cluster(redis_url)
            .env("SWITCHBOARD_PRESENCE_GRACE", "300ms")
            .env("SWITCHBOARD_DRAIN_PERIOD", "1s")
            .envs(env)
            .serve();
        let node = Self { process, api };
        node.until_ready(true).await;
        node
    }

    async fn readyz(&self) -> (u16, Value) {
        match reqwest::get(self.http_url("/readyz")).await {
            Ok(response) => (
                response.status().as_u16(),
                response.json().await.unwrap_or(Value::Null),
            ),
            Err(_) => (0, Value::Null),
        }
    }

    /// Waits until `/readyz` says ready (or, with `false`, not ready); returns its body.
    async fn until_ready(&self, ready: bool) -> Value {
        eventually("readyz", Duration::from_secs(20), || async {
            match self.readyz().await {
                (status, body) if (status == 200) == ready => Ok(body),
                stayed => Err(stayed),
            }
        })
        .await
    }
}

/// A client that keeps its place: what it received, and where to resume.
struct Follower {
    token: String,
    client: Client,
    seqs: Vec<u64>,
    reconnects: usize,
}

impl Follower {
    async fn connect(node: &Api, account: &str, user: &str) -> Self {
        let token = token(account, user);
        let (client, _) = node.connect(&token).await;
        Self {
            token,
            client,
            seqs: Vec::new(),
            reconnects: 0,
        }
    }

    /// Receives until it holds `count` events; when its connection ends, resumes on the first
    /// of `nodes` that takes it.
    async fn collect(&mut self, count: usize, nodes: &[&Api]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.seqs.len() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {count} events: {:?}",
                self.seqs.len(),
                self.seqs
            );
            match self.client.receive(WAIT).await {
                Received::Json(frame) if frame["type"] == "event" => {
                    if let Some(seq) = frame["seq"].as_u64() {
                        self.seqs.push(seq);
                    }
                }
                Received::Json(_) => {}
                Received::Closed(_) | Received::TimedOut => self.reconnect(nodes).await,
            }
        }
    }

    async fn reconnect(&mut self, nodes: &[&Api]) {
        let since = self.seqs.last().copied().unwrap_or(0);
        let token = &self.token;
        self.client = eventually("a node took the reconnect", WAIT, || async {
            for node in nodes {
                let url = format!("{}?token={token}&since={since}", node.ws_url());
                if let Ok(mut client) = node.try_connect(url).await {
                    let welcome = client.next_json().await;
                    assert_eq!(welcome["type"], "welcome", "{welcome}");
                    return Ok(client);
                }
            }
            Err("every node refused")
        })
        .await;
        self.reconnects += 1;
    }
}

/// Asserts the follower got exactly `expected`, in order.
fn assert_exact(who: &str, follower: &Follower, expected: &[u64]) {
    assert_eq!(follower.seqs, expected, "{who} got the wrong events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn publishes_and_webhooks_on_any_node_reach_every_session_on_every_node() {
    let db = Db::postgres();
    let redis = Redis::start();
    let nodes = [
        Node::start(&db, &redis).await,
        Node::start(&db, &redis).await,
        Node::start(&db, &redis).await,
    ];
    let (acme, globex) = (unique("cluster-acme"), unique("cluster-globex"));
    let generic = nodes[0]
        .integration(
            json!({"provider": "generic", "external_id": unique("shop"), "account_id": acme}),
        )
        .await;

    // Every user has a tab on every node.
    let mut followers = Vec::new();
    for (account, user) in [(&acme, "alice"), (&acme, "bob"), (&globex, "carol")] {
        for node in &nodes {
            followers.push((account, user, Follower::connect(node, account, user).await));
        }
    }

    // Sequence numbers of an account are gap-free from 1, so what each user must get follows
    // from the targeted publishes alone.
    let mut for_alice_only = Vec::new();
    for i in 0..45 {
        let node = &nodes[i % 3];
        match i % 5 {
            0 => {
                // A customer message through a webhook: events for the whole account.
                node.message_from(&generic, "cust", json!({"text": format!("m{i}")}))
                    .await;
            }
            1 => for_alice_only.push(
                node.publish(&acme, Some("alice"), "dm", json!({"i": i}))
                    .await,
            ),
            2 | 3 => {
                node.publish(&globex, None, "tick", json!({"i": i})).await;
            }
            _ => {
                node.publish(&acme, None, "tick", json!({"i": i})).await;
            }
        }
    }
    let acme_last = nodes[2].publish(&acme, None, "last", json!(null)).await;
    let globex_last = nodes[0].publish(&globex, None, "last", json!(null)).await;

    let api: Vec<&Api> = nodes.iter().map(|n| &n.api).collect();
    let want = |account: &String, user: &str| -> Vec<u64> {
        if account == &globex {
            (1..=globex_last).collect()
        } else if user == "alice" {
            (1..=acme_last).collect()
        } else {
            (1..=acme_last)
                .filter(|seq| !for_alice_only.contains(seq))
                .collect()
        }
    };
    for (account, user, follower) in &mut followers {
        follower.collect(want(account, user).len(), &api).await;
    }
    let sentinels = [
        nodes[1].sentinel(&acme, None).await,
        nodes[1].sentinel(&globex, None).await,
    ];
    for (account, user, follower) in &mut followers {
        let sentinel = sentinels[usize::from(*account == &globex)];
        follower.client.expect_sentinel(sentinel).await;
        assert_exact(&format!("{account}/{user}"), follower, &want(account, user));
        assert_eq!(follower.reconnects, 0, "{account}/{user} was disconnected");
    }
}

/// Publishes `count` events for the whole account through `node`, one after another with a
/// pause, from a task of its own; answers their sequence numbers, and meanwhile how many have
/// been answered so far.
fn publish_in_background(
    node: &Api,
    account: &str,
    count: usize,
    pause: Duration,
) -> (
    tokio::task::JoinHandle<Vec<u64>>,
    tokio::sync::watch::Receiver<usize>,
) {
    let (node, account) = (Api { addr: node.addr }, account.to_owned());
    let (answered, progress) = tokio::sync::watch::channel(0);
    let publishing = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for i in 0..count {
            seqs.push(
                node.publish(&account, None, "tick", json!({ "i": i }))
                    .await,
            );
            answered.send_replace(seqs.len());
            // A steady stream: the scenario's pace, not a wait for something.
            tokio::time::sleep(pause).await;
        }
        seqs
    });
    (publishing, progress)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn clients_of_a_killed_node_and_of_a_drained_node_resume_elsewhere_losing_nothing() {
    let db = Db::postgres();
    let redis = Redis::start();
    let mut nodes = [
        Node::start(&db, &redis).await,
        Node::start(&db, &redis).await,
        Node::start(&db, &redis).await,
    ];
    let account = unique("cluster-failover");
    let mut followers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for tab in 0..2 {
            let user = format!("user-{i}-{tab}");
            followers.push((i, Follower::connect(node, &account, &user).await));
        }
    }
    let (publishing, mut progress) =
        publish_in_background(&nodes[2], &account, 120, Duration::from_millis(10));
    // Mid-stream: one node is killed once 25 events are published, another drained at 40.
    progress.wait_for(|&n| n >= 25).await.unwrap();
    nodes[0].process.signal("KILL");
    progress.wait_for(|&n| n >= 40).await.unwrap();
    nodes[1].process.signal("TERM");
    let published = publishing.await.unwrap();
    assert_eq!(published, (1..=120).collect::<Vec<u64>>());

    let survivor = [&nodes[2].api];
    for (_, follower) in &mut followers {
        follower.collect(published.len(), &survivor).await;
    }
    let sentinel = nodes[2].sentinel(&account, None).await;
    for (node, follower) in &mut followers {
        follower.client.expect_sentinel(sentinel).await;
        assert_exact(&format!("a client of node {node}"), follower, &published);
        let moved = if *node == 2 { 0 } else { 1 };
        assert_eq!(follower.reconnects, moved, "client of node {node}");
    }
    // Drained, the node said so to every client and stopped by itself.
    let drained = &mut nodes[1].process;
    drained.wait_for("2 session(s) closed with 1001");
    assert!(drained.exits_within(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn redis_stopped_and_restarted_mid_stream_loses_nothing() {
    let db = Db::postgres();
    let mut redis = Redis::start();
    let nodes = [
        Node::start(&db, &redis).await,
        Node::start(&db, &redis).await,
    ];
    let account = unique("cluster-redis");
    let mut followers = Vec::new();
    for user in ["ann", "ben", "cat"] {
        followers.push(Follower::connect(&nodes[1], &account, user).await);
    }
    let mut published = Vec::new();
    for i in 0..30 {
        published.push(
            nodes[0]
                .publish(&account, None, "tick", json!({ "i": i }))
                .await,
        );
    }
    redis.stop();
    // Both nodes carry on — publishes are accepted and stored — and say they are degraded.
    for node in &nodes {
        let health = node.until_ready(false).await;
        assert_eq!(
            health,
            json!({"status": "degraded", "database": "ok", "redis": "unreachable", "draining": false})
        );
    }
    // The last events are published while node 1 cannot hear of them: nothing comes after them
    // to reveal a gap, so only the catch-up when Redis returns brings them.
    for i in 30..60 {
        published.push(
            nodes[0]
                .publish(&account, None, "tick", json!({ "i": i }))
                .await,
        );
    }
    redis.restart();
    for node in &nodes {
        node.until_ready(true).await;
    }
    assert_eq!(published, (1..=60).collect::<Vec<u64>>());

    for follower in &mut followers {
        follower.collect(published.len(), &[&nodes[1].api]).await;
    }
    let sentinel = nodes[0].sentinel(&account, None).await;
    for follower in &mut followers {
        follower.client.expect_sentinel(sentinel).await;
        assert_exact(
            "a client of the node that missed messages",
            follower,
            &published,
        );
        assert_eq!(
            follower.reconnects, 0,
            "the sessions themselves were never cut"
        );
    }
}

async fn presence_change(client: &mut Client, wait: Duration) -> (String, String) {
    match client.receive(wait).await {
        Received::Json(frame) => (
            frame["event"].as_str().unwrap_or_default().to_owned(),
            frame["data"]["user_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
        other => panic!("expected a presence change, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn presence_and_typing_span_nodes_and_a_dead_nodes_users_go_offline() {
    let db = Db::postgres();
    let redis = Redis::start();
    let nodes = [
        Node::start(&db, &redis).await,
        Node::start(&db, &redis).await,
    ];
    let account = unique("cluster-presence");
    let (olga, uma) = (token(&account, "olga"), token(&account, "uma"));
    let (mut observer, _) = nodes[0].connect(&olga).await;
    observer.watch_presence();
    // Presence across nodes is decided by timers (the grace, 300 ms here, and the nodes' records
    // in Redis): a wrong announcement would come after them, behind any sentinel sent at once,
    // so "nothing announced" is a silence that outlasts them.
    let quiet = Duration::from_millis(800);

    let (mut uma_on_1, _) = nodes[1].connect(&uma).await;
    let online = ("user-online".to_owned(), "uma".to_owned());
    let offline = ("user-offline".to_owned(), "uma".to_owned());
    assert_eq!(presence_change(&mut observer, WAIT).await, online);
    // A second tab on the other node: still one online user.
    let (uma_on_0, _) = nodes[0].connect(&uma).await;
    observer.expect_silence(quiet).await;
    for node in &nodes {
        let (status, listed) = node
            .as_user(&olga, Method::GET, "/api/v1/presence", None)
            .await;
        assert_eq!((status, listed), (200, json!({"users": ["olga", "uma"]})));
    }

    // Typing goes to the other participant wherever their session is.
    let (status, dm) = nodes[1]
        .as_user(
            &uma,
            Method::POST,
            "/api/v1/conversations",
            Some(json!({"participants": ["olga"]})),
        )
        .await;
    assert_eq!(status, 201, "{dm}");
    let dm = dm["id"].as_str().unwrap().to_owned();
    uma_on_1
        .send_text(&json!({"type": "typing", "conversation_id": dm}).to_string())
        .await;
    let typing = loop {
        let frame = observer.next_json().await;
        if frame["event"] == "typing" {
            break frame;
        }
    };
    assert_eq!(
        typing["data"],
        json!({"conversation_id": dm, "user_id": "uma"})
    );

    // The tab on node 1 closes: Uma is still online on node 0.
    drop(uma_on_1);
    observer.expect_silence(quiet).await;
    drop(uma_on_0);
    assert_eq!(presence_change(&mut observer, WAIT).await, offline);

    // A node that dies cannot say its users left; its records expire and another node sweeps
    // them (within the record's 15 s lifetime and one sweep).
    let doomed = Node::start(&db, &redis).await;
    let (_uma_on_doomed, _) = doomed.connect(&uma).await;
    assert_eq!(presence_change(&mut observer, WAIT).await, online);
    doomed.process.signal("KILL");
    assert_eq!(
        presence_change(&mut observer, Duration::from_secs(30)).await,
        offline
    );
    let (_, listed) = nodes[0]
        .as_user(&olga, Method::GET, "/api/v1/presence", None)
        .await;
    assert_eq!(listed, json!({"users": ["olga"]}));
}

/// A Socket.IO client is a session like any other: events stored through another node reach it;
/// a drained node tells it to go (and closes its connection, so socket.io-client reconnects);
/// on another node it recovers its state from its `pid` and last offset, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn socket_io_clients_get_other_nodes_events_and_recover_on_another_node_after_a_drain() {
    let db = Db::postgres();
    let redis = Redis::start();
    let mut nodes = [
        Node::start(&db, &redis).await,
        Node::start(&db, &redis).await,
    ];
    let account = unique("cluster-socketio");
    let auth = json!({ "token": token(&account, "alice") });
    let (mut client, connected) = Poller::connect(&nodes[0], auth.clone()).await;

    let mut seqs = Vec::new();
    for i in 0..5 {
        let seq = nodes[1].publish(&account, None, "tick", json!(i)).await;
        assert_eq!(client.next().await, format!(r#"42["tick",{i},"{seq}"]"#));
        seqs.push(seq);
    }

    // As socket.io-client does, the client has a poll waiting when the node starts draining.
    let (closing, ()) = tokio::join!(client.next(), async {
        // Nothing outside the node tells that a poll is waiting (a second poll to find out would
        // close the connection): the pause makes it likely; a poll that came later would find
        // the same packets waiting for it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        nodes[0].process.signal("TERM");
    });
    let closing: Value = serde_json::from_str(closing.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(
        (&closing[0], &closing[1]["name"]),
        (&json!("closing"), &json!("server-shutdown"))
    );
    // In the same answer, the close packet: the client reconnects by itself.
    assert_eq!(client.next().await, "1");
    drop(client);
    assert!(nodes[0]
        .process
        .exits_within(Duration::from_secs(10))
        .success());

    // Published while the client is away; then it reconnects elsewhere, as socket.io-client does.
    for i in 5..8 {
        seqs.push(nodes[1].publish(&account, None, "tick", json!(i)).await);
    }
    let mut recovering = auth;
    recovering["pid"] = connected["pid"].clone();
    recovering["offset"] = json!(seqs[4].to_string());
    let (mut client, reconnected) = Poller::connect(&nodes[1], recovering).await;
    assert_eq!(reconnected["pid"], connected["pid"], "socket.recovered");
    for (i, seq) in seqs.iter().enumerate().skip(5) {
        assert_eq!(client.next().await, format!(r#"42["tick",{i},"{seq}"]"#));
    }
}

/// A message as a node of the test cluster signs it (`sb1.<HMAC-SHA256 tag, hex>.<json>`, under
/// a key derived from the cluster secret), or as a node holding `secret` would.
fn signed(json: &str, secret: &str) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut derive = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    derive.update(b"switchboard cluster messages v1");
    let key = derive.finalize().into_bytes();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(json.as_bytes());
    format!("sb1.{}.{json}", hex::encode(mac.finalize().into_bytes())).into_bytes()
}

/// What could arrive on the channel besides real news, around event `next` of `account`: bytes
/// that are not JSON, a cut message, frames of another shape (another version of Switchboard),
/// forgeries (unsigned, or signed with another cluster's secret), an event no node stored, ids
/// that are not ids, a kind of message this version does not know.
fn not_news(account: &str, next: u64) -> Vec<Vec<u8>> {
    let account = json!(account).to_string();
    let event = |seq: u64, frame: &str| {
        format!(
            r#"{{"event":{{"node":"elsewhere","account":{account},"seq":{seq},"user":null,"stored_ms":0,"frame":{frame}}}}}"#
        )
    };
    let frame =
        |seq: u64| format!(r#"{{"type":"event","seq":{seq},"event":"tick","data":"forged"}}"#);
    let forged = event(next, &frame(next));
    let typing = format!(
        r#"{{"ephemeral":{{"node":"elsewhere","account":{account},"users":null,"except":null,"frame":{{"type":"event","event":"typing","data":"forged"}}}}}}"#
    );
    let ours = |json: &str| signed(json, CLUSTER_SECRET);
    vec![
        b"\xff\x00 not json".to_vec(),
        forged.clone().into_bytes(),
        typing.clone().into_bytes(),
        signed(&forged, "another cluster's secret, of 32 bytes or more"),
        // A frame of another shape, unsigned and signed: what made a room with Socket.IO
        // sessions panic.
        event(next, r#"{"foo":1}"#).into_bytes(),
        ours(&event(next, r#"{"foo":1}"#)),
        ours(&event(next, "[1,2,3]")),
        ours(&event(next + 1, &frame(next))),
        ours(&forged[..forged.len() / 2]),
        ours(&event(1_000_000_000, &frame(1_000_000_000))),
        ours(&typing.replace(r#""typing""#, r#""not a name""#)),
        ours(&forged.replace(&account, r#""""#)),
        br#"{"presence":{"account":"","user":"u","online":true}}"#.to_vec(),
        ours(r#"{"catch-up":{"node":"elsewhere","account":""}}"#),
        ours(r#"{"something-new":{"node":"elsewhere"}}"#),
    ]
}

/// The node's metrics text.
async fn metrics(node: &Api) -> String {
    reqwest::get(node.http_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Whether `metric` has a series labelled `label` with a positive value.
fn counted(metrics: &str, metric: &str, label: &str) -> bool {
    metrics.lines().any(|line| {
        line.starts_with(metric)
            && line.contains(label)
            && line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn what_no_node_of_the_cluster_sent_is_dropped_and_every_real_event_arrives_once_in_order() {
    let db = Db::postgres();
    let redis = Redis::start();
    let mut nodes = [
        Node::start(&db, &redis).await,
        Node::start(&db, &redis).await,
    ];
    let account = unique("cluster-garbage");
    let (mut native, _) = nodes[1].connect(&token(&account, "alice")).await;
    let (mut socket_io, _) =
        Poller::connect(&nodes[1], json!({ "token": token(&account, "bob") })).await;
    let mut channel = redis.connection().await;

    let mut published = Vec::new();
    for i in 0..15 {
        for message in not_news(&account, published.len() as u64 + 1) {
            let _: i64 = redis::cmd("PUBLISH")
                .arg("switchboard:events")
                .arg(message)
                .query_async(&mut channel)
                .await
                .unwrap();
        }
        published.push(nodes[0].publish(&account, None, "tick", json!(i)).await);
    }

    for (i, seq) in published.iter().enumerate() {
        assert_eq!(
            native.next_event().await,
            (*seq, "tick".to_owned(), json!(i))
        );
        assert_eq!(socket_io.next().await, format!(r#"42["tick",{i},"{seq}"]"#));
    }
    let sentinel = nodes[0].sentinel(&account, Some("alice")).await;
    native.expect_sentinel(sentinel).await;

    // The event no node stored was held for a while, then let go once the database said so.
    let absent = "reason=\"absent\"";
    let counts = eventually("the absent event let go", WAIT, || async {
        let counts = metrics(&nodes[1]).await;
        match counted(&counts, "switchboard_room_events_dropped_total", absent) {
            true => Ok(counts),
            false => Err(counts),
        }
    })
    .await;
    for reason in [
        "unsigned",
        "bad-signature",
        "malformed",
        "bad-id",
        "bad-frame",
    ] {
        let label = format!("reason=\"{reason}\"");
        assert!(
            counted(
                &counts,
                "switchboard_cluster_messages_dropped_total",
                &label
            ),
            "no {reason} drop counted:\n{counts}"
        );
    }
    let log = nodes[1].process.read_log();
    assert!(
        !log.iter()
            .any(|line| line.contains("panicked") || line.contains("room failed")),
        "{}",
        log.join("\n")
    );
    // Each kind of drop is said once; the rest are counted.
    let said = |reason: &str| {
        let needle = format!("dropped a message from the channel ({reason})");
        log.iter().filter(|line| line.contains(&needle)).count()
    };
    assert_eq!((said("bad-frame"), said("unsigned")), (1, 1));
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// How much a node's resident memory may grow while Redis is frozen under the test's load.
const STALL_RSS_GROWTH_KIB: u64 = 16 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn redis_frozen_under_steady_publishing_holds_memory_and_every_stored_event_arrives() {
    let db = Db::postgres();
    let redis = Redis::start();
    let nodes = [
        Node::start(&db, &redis).await,
        Node::start(&db, &redis).await,
    ];
    let account = unique("cluster-stall");
    let mut followers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for tab in 0..2 {
            let user = format!("user-{i}-{tab}");
            followers.push(Follower::connect(node, &account, &user).await);
        }
    }
    let pids: Vec<u32> = nodes.iter().map(|n| n.process.child.id()).collect();
    let before: Vec<u64> = pids.iter().map(|pid| rss_kib(*pid)).collect();

    // 50 publishes a second, alternating between the nodes, from 2 s before the freeze (once 100
    // are answered) to 2 s after it.
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let (answered, mut progress) = tokio::sync::watch::channel(0);
    let load = {
        let account = account.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(20));
            let mut answers = Vec::new();
            for i in 0..1200 {
                every.tick().await;
                let node = Api {
                    addr: addrs[i % addrs.len()],
                };
                let body = json!({"account_id": account, "event": "tick", "data": i});
                let auth = format!("Bearer {API_KEY}");
                answers.push(node.publish_raw(Some(&auth), body.to_string()).await);
                answered.send_replace(answers.len());
            }
            answers
        })
    };
    progress.wait_for(|&n| n >= 100).await.unwrap();
    redis.signal("STOP");
    let mut most = before.clone();
    for _ in 0..20 {
        // Redis stays frozen for 20 s, the node's memory sampled every second: the scenario's
        // length, not a wait for something.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (most, pid) in most.iter_mut().zip(&pids) {
            *most = (*most).max(rss_kib(*pid));
        }
    }
    redis.signal("CONT");
    let answers = load.await.unwrap();

    // Every publish was stored, or refused with the documented error (and nothing stored).
    let mut stored = Vec::new();
    for (status, body) in answers {
        match status {
            200 => stored.push(body["seq"].as_u64().unwrap()),
            503 => assert_eq!(body["error"]["code"], "overloaded", "{body}"),
            _ => panic!("publish answered {status} {body}"),
        }
    }
    stored.sort_unstable();
    assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>());
    for (node, (before, most)) in before.iter().zip(&most).enumerate() {
        eprintln!("node {node}: RSS {before} KiB before the freeze, at most {most} KiB during it");
        assert!(
            most - before < STALL_RSS_GROWTH_KIB,
            "node {node} grew from {before} KiB to {most} KiB"
        );
    }

    for node in &nodes {
        node.until_ready(true).await;
    }
    let api: Vec<&Api> = nodes.iter().map(|n| &n.api).collect();
    for follower in &mut followers {
        follower.collect(stored.len(), &api).await;
    }
    let sentinel = nodes[0].sentinel(&account, None).await;
    for follower in &mut followers {
        follower.client.expect_sentinel(sentinel).await;
        assert_exact("a client of either node", follower, &stored);
        assert_eq!(
            follower.reconnects, 0,
            "the sessions themselves were never cut"
        );
    }
}

/// Writes an event as a node leaves it when it dies between committing the event and relaying
/// it: stored (with the publish's idempotency key, if any), and news of it sent to no one.
/// Answers its sequence number.
fn store_unrelayed(db: &Db, account: &str, key: Option<&str>) -> u64 {
    use switchboard::store::{self, StoreError};
    let database = switchboard::config::Database::parse(db.url()).unwrap();
    let store = store::Store::open(&database, 1).unwrap();
    let mut conn = store.connection().unwrap();
    let account = switchboard::ids::AccountId::new(account).unwrap();
    let data = serde_json::value::RawValue::from_string(r#"{"order":7}"#.into()).unwrap();
    store::write_accounts(&mut conn, std::slice::from_ref(&account), |conn| {
        let event = switchboard::inbox::emit(conn, &account, None, "order-paid", &data)?;
        if let Some(key) = key {
            store::publish_keys::remember(conn, &account, key, event.seq)?;
        }
        Ok::<_, StoreError>(event.seq)
    })
    .unwrap()
}

/// Six tabs of `account`, three on each node.
async fn six_tabs(nodes: &[Node; 2], account: &str) -> Vec<Client> {
    let mut tabs = Vec::new();
    for node in nodes {
        for user in ["ann", "ben", "cat"] {
            tabs.push(node.connect(&token(account, user)).await.0);
        }
    }
    tabs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn an_event_answered_as_an_idempotent_replay_reaches_every_tab_though_its_relay_was_lost() {
    let db = Db::postgres();
    let redis = Redis::start();
    // Rooms do not check heads on their own here: only the replay's catch-up can bring it.
    let quiet = [("SWITCHBOARD_CLUSTER_CHECK_INTERVAL", "1h")];
    let nodes = [
        Node::start_with(&db, &redis.url(), &quiet).await,
        Node::start_with(&db, &redis.url(), &quiet).await,
    ];
    let account = unique("cluster-replayed");
    let mut tabs = six_tabs(&nodes, &account).await;
    let seq = store_unrelayed(&db, &account, Some("order-7-paid"));
    // Only a timer (the head check, an hour away here) would bring it now; a sentinel event
    // would reveal the gap and bring it, which is the replay's part below.
    for tab in &mut tabs {
        tab.expect_silence(Duration::from_millis(200)).await;
    }

    // The publisher's retry reaches another node, and is answered as a replay.
    let response = reqwest::Client::new()
        .post(nodes[1].http_url("/api/v1/publish"))
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("idempotency-key", "order-7-paid")
        .json(&json!({"account_id": account, "event": "order-paid", "data": {"order": 7}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    assert_eq!(response.json::<Value>().await.unwrap()["seq"], seq);

    for tab in &mut tabs {
        assert_eq!(
            tab.next_event().await,
            (seq, "order-paid".to_owned(), json!({"order": 7}))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn a_committed_event_whose_relay_was_lost_reaches_quiet_rooms_within_the_check_interval() {
    let db = Db::postgres();
    let redis = Redis::start();
    let often = [("SWITCHBOARD_CLUSTER_CHECK_INTERVAL", "1s")];
    let nodes = [
        Node::start_with(&db, &redis.url(), &often).await,
        Node::start_with(&db, &redis.url(), &often).await,
    ];
    let account = unique("cluster-quiet");
    let mut tabs = six_tabs(&nodes, &account).await;
    // Nothing else happens on the account: no later event reveals a gap.
    let seq = store_unrelayed(&db, &account, None);
    for tab in &mut tabs {
        assert_eq!(
            tab.next_event().await,
            (seq, "order-paid".to_owned(), json!({"order": 7}))
        );
    }
}

/// A certificate authority and a certificate it signed for `127.0.0.1`, made with `openssl`;
/// answers the CA's file and the server's certificate and key files.
fn certificates(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    let [ca, ca_key, cert, key, csr, ext] = [
        "ca.pem",
        "ca.key",
        "redis.pem",
        "redis.key",
        "redis.csr",
        "ext.cnf",
    ]
    .map(|f| dir.join(f));
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let path = |p: &std::path::PathBuf| p.to_str().unwrap().to_owned();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", &path(&ca_key), "-out", &path(&ca)],
        ]
        .concat()
        .into_iter()
        .chain(["-days", "1", "-subj", "/CN=switchboard test CA"])
        .chain(["-addext", "basicConstraints=critical,CA:TRUE"])
        .chain(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .collect::<Vec<_>>(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", &path(&key), "-out", &path(&csr)],
        ]
        .concat()
        .into_iter()
        .chain(["-subj", "/CN=127.0.0.1"])
        .collect::<Vec<_>>(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path(&csr),
        "-CA",
        &path(&ca),
        "-CAkey",
        &path(&ca_key),
        "-CAcreateserial",
        "-out",
        &path(&cert),
        "-days",
        "1",
        "-extfile",
        &path(&ext),
    ]);
    [ca, cert, key]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn nodes_reach_a_redis_that_takes_tls_and_a_password() {
    let db = Db::postgres();
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = certificates(dir.path());
    let file = |p: &std::path::PathBuf| p.to_str().unwrap().to_owned();
    let redis = Redis::start_with(vec![
        "--tls-cert-file".into(),
        file(&cert),
        "--tls-key-file".into(),
        file(&key),
        "--tls-ca-cert-file".into(),
        file(&ca),
        "--tls-auth-clients".into(),
        "no".into(),
        "--requirepass".into(),
        "a-redis-password".into(),
    ]);
    let url = format!("rediss://:a-redis-password@127.0.0.1:{}", redis.port);
    let with_ca = [("SWITCHBOARD_REDIS_CA_FILE", ca.to_str().unwrap())];
    // Ready means subscribed and publishing: both connections took TLS and the password.
    let nodes = [
        Node::start_with(&db, &url, &with_ca).await,
        Node::start_with(&db, &url, &with_ca).await,
    ];
    let account = unique("cluster-tls");
    let (mut client, _) = nodes[1].connect(&token(&account, "alice")).await;
    let seq = nodes[0]
        .publish(&account, None, "tick", json!("over TLS"))
        .await;
    assert_eq!(
        client.next_event().await,
        (seq, "tick".to_owned(), json!("over TLS"))
    );
}

/// A token for `user` of `account` issued a few seconds ago, following `order:*`.
fn token_following_orders(account: &str, user: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(crate::common::JWT_SECRET.as_bytes());
    let now = crate::common::now();
    crate::common::sign(
        jsonwebtoken::Algorithm::HS256,
        &key,
        json!({ "sub": user, "account_id": account, "exp": now + 3600, "iat": now - 5,
                "channels": ["order:*"], "publish": ["order:*"] }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn channel_events_cross_nodes_and_a_revoked_user_is_closed_and_refused_on_every_node() {
    let db = Db::postgres();
    let redis = Redis::start();
    let nodes = [
        Node::start(&db, &redis).await,
        Node::start(&db, &redis).await,
        Node::start(&db, &redis).await,
    ];
    let account = unique("cluster-revoke");
    let alice = token_following_orders(&account, "alice");
    let mut tabs = Vec::new();
    for node in &nodes {
        let url = format!("{}?token={alice}&channels=order:1", node.ws_url());
        let mut client = node.try_connect(url).await.expect("connected");
        assert_eq!(client.next_json().await["type"], "welcome");
        tabs.push(client);
    }
    let (mut bob, bob_welcome) = nodes[2]
        .connect(&token_following_orders(&account, "bob"))
        .await;
    let bob_session = bob_welcome["session_id"].as_str().unwrap().to_owned();

    // A channel event published on one node reaches its followers on every node, only them.
    let body = json!({"account_id": account, "channel": "order:1", "event": "paid", "data": 1});
    let (status, answer) = nodes[1]
        .publish_raw(Some(&format!("Bearer {API_KEY}")), body.to_string())
        .await;
    assert_eq!(status, 200, "{answer}");
    for tab in &mut tabs {
        let frame = tab.next_json().await;
        assert_eq!(
            (&frame["seq"], &frame["channel"]),
            (&answer["seq"], &json!("order:1"))
        );
    }
    // A user's ephemeral message to the channel reaches its followers on the other nodes too.
    let carol = token_following_orders(&account, "carol");
    let url = format!("{}?token={carol}&channels=order:1", nodes[2].ws_url());
    let mut carol = nodes[2].try_connect(url).await.expect("connected");
    assert_eq!(carol.next_json().await["type"], "welcome");
    tabs[0]
        .send_text(r#"{"type":"publish","channel":"order:1","event":"viewing","data":{"at":1}}"#)
        .await;
    let message = carol.next_json().await;
    assert_eq!(
        message,
        json!({"type": "event", "channel": "order:1", "event": "viewing", "data": {"at": 1},
               "user_id": "alice"})
    );

    // Revoked through one node: closed on every node, refused by every node.
    let path = format!("/api/v1/accounts/{account}/users/alice/revoke");
    let (status, body) = nodes[0].admin(Method::POST, &path, None).await;
    assert_eq!(status, 200, "{body}");
    for tab in &mut tabs {
        assert_eq!(tab.expect_close().await, 4005);
    }
    for node in &nodes {
        let url = format!("{}?token={alice}", node.ws_url());
        match node.try_connect(url).await {
            Err((status, body)) => {
                assert_eq!(
                    (status, &body["error"]["code"]),
                    (401, &json!("token-revoked"))
                )
            }
            Ok(_) => panic!("a revoked token was taken"),
        }
    }
    let sentinel = nodes[0].sentinel(&account, None).await;
    bob.expect_sentinel(sentinel).await;

    // One session revoked through another node than its own: that node closes it — even after
    // a call that named the wrong account (which closes nothing).
    let wrong = format!("/api/v1/accounts/{account}-x/sessions/{bob_session}/revoke");
    let (status, _) = nodes[0].admin(Method::POST, &wrong, None).await;
    assert_eq!(status, 200);
    let path = format!("/api/v1/accounts/{account}/sessions/{}/revoke", bob_session);
    let (status, body) = nodes[0].admin(Method::POST, &path, None).await;
    assert_eq!(
        (status, &body["closed_here"]),
        (200, &json!(false)),
        "{body}"
    );
    assert_eq!(bob.expect_close().await, 4005);
}
