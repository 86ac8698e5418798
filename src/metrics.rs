//! Prometheus metrics, served at `GET /metrics`. Recorded through the `metrics` facade into one
//! process-wide Prometheus recorder; every name is here, with its help text, and no metric is
//! ever labelled by account, user or token (their number is unbounded, and they are private).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const CONNECTIONS: &str = "switchboard_connections";
const SESSIONS: &str = "switchboard_sessions";
const ROOMS: &str = "switchboard_rooms";
const DELIVERIES: &str = "switchboard_deliveries_total";
const EVENTS_PUBLISHED: &str = "switchboard_events_published_total";
const PUBLISH_TO_DELIVERY: &str = "switchboard_publish_to_delivery_seconds";
const HEARTBEAT_TIMEOUTS: &str = "switchboard_heartbeat_timeouts_total";
const SLOW_CONSUMER_CLOSES: &str = "switchboard_slow_consumer_closes_total";
const AUTH_FAILURES: &str = "switchboard_auth_failures_total";
const WEBHOOK_SIGNATURE_FAILURES: &str = "switchboard_webhook_signature_failures_total";
const RESUMES: &str = "switchboard_resumes_total";
const REDIS_ERRORS: &str = "switchboard_redis_errors_total";
const DATABASE_ERRORS: &str = "switchboard_database_errors_total";
const CONNECTIONS_REFUSED: &str = "switchboard_connections_refused_total";
const BODY_TIMEOUTS: &str = "switchboard_request_body_timeouts_total";
const PUBLISH_QUEUE: &str = "switchboard_publish_queue";
const PUBLISHES_OVERLOADED: &str = "switchboard_publishes_overloaded_total";
const RELAY_QUEUE: &str = "switchboard_cluster_relay_queue";
const RELAYS_DROPPED: &str = "switchboard_cluster_relays_dropped_total";
const CLUSTER_MESSAGES_DROPPED: &str = "switchboard_cluster_messages_dropped_total";
const JOINS_REFUSED: &str = "switchboard_joins_refused_total";
const ROOM_EVENTS_DROPPED: &str = "switchboard_room_events_dropped_total";

/// Latency buckets, in seconds: from a quick local hand-off to a paced publish under load.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The recorder's handle, installing it on first use, labelled with this node's name. (One
/// process normally runs one node; tests that start several share the first one's label.)
pub fn install(node: &str) -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .add_global_label("node", node)
                .set_buckets_for_metric(Matcher::Full(PUBLISH_TO_DELIVERY.into()), LATENCY_BUCKETS)
                .expect("the buckets are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            // So a scrape before the first session shows the node, at zero.
            gauge!(CONNECTIONS).set(0.0);
            gauge!(ROOMS).set(0.0);
            gauge!(PUBLISH_QUEUE).set(0.0);
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(
        CONNECTIONS,
        "Open sessions on this node, every transport (WebSocket, Socket.IO, SSE)."
    );
    describe_gauge!(SESSIONS, "Open sessions on this node, by transport.");
    describe_gauge!(ROOMS, "Accounts with a live room on this node.");
    describe_counter!(DELIVERIES, "Event frames queued for sessions.");
    describe_counter!(EVENTS_PUBLISHED, "Events stored by this node.");
    describe_histogram!(
        PUBLISH_TO_DELIVERY,
        metrics::Unit::Seconds,
        "From an event's publish (or storing) to its last session on this node taking it."
    );
    describe_counter!(
        HEARTBEAT_TIMEOUTS,
        "Sessions closed for answering no ping (4000)."
    );
    describe_counter!(
        SLOW_CONSUMER_CLOSES,
        "Sessions closed as slow consumers (4001)."
    );
    describe_counter!(AUTH_FAILURES, "Refused tokens and API keys, by reason.");
    describe_counter!(
        WEBHOOK_SIGNATURE_FAILURES,
        "Webhooks refused for their signature, by provider."
    );
    describe_counter!(RESUMES, "Resume attempts, by outcome.");
    describe_counter!(REDIS_ERRORS, "Failed Redis commands and lost connections.");
    describe_counter!(
        DATABASE_ERRORS,
        "Database errors seen by requests and rooms."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed as accepted, by the cap they were past."
    );
    describe_counter!(
        BODY_TIMEOUTS,
        "Requests answered 408 for a body too slow to arrive."
    );
    describe_gauge!(PUBLISH_QUEUE, "Publishes waiting to be stored.");
    describe_counter!(
        PUBLISHES_OVERLOADED,
        "Publishes refused (503 overloaded) because too many were waiting to be stored."
    );
    describe_gauge!(
        RELAY_QUEUE,
        "Relays, catch-up notices and presence questions waiting to go to Redis."
    );
    describe_counter!(
        RELAYS_DROPPED,
        "Items not queued for Redis because the relay queue was full, by kind."
    );
    describe_counter!(
        CLUSTER_MESSAGES_DROPPED,
        "Messages from the cluster channel dropped unread, by reason."
    );
    describe_counter!(
        JOINS_REFUSED,
        "Sessions closed with 1011 because their room could not read the database."
    );
    describe_counter!(
        ROOM_EVENTS_DROPPED,
        "Events a room stopped holding (read back from the database instead), by reason."
    );
}

/// `transport`: `ws`, `socket.io` or `sse`.
pub fn session_opened(transport: &'static str) {
    gauge!(CONNECTIONS).increment(1.0);
    gauge!(SESSIONS, "transport" => transport).increment(1.0);
}

pub fn session_closed(transport: &'static str) {
    gauge!(CONNECTIONS).decrement(1.0);
    gauge!(SESSIONS, "transport" => transport).decrement(1.0);
}

pub fn room_opened() {
    gauge!(ROOMS).increment(1.0);
}

pub fn room_closed() {
    gauge!(ROOMS).decrement(1.0);
}

pub fn delivered(frames: usize) {
    counter!(DELIVERIES).increment(frames as u64);
}

pub fn published(events: usize) {
    counter!(EVENTS_PUBLISHED).increment(events as u64);
}

pub fn publish_to_delivery(latency: Duration) {
    histogram!(PUBLISH_TO_DELIVERY).record(latency);
}

pub fn heartbeat_timeout() {
    counter!(HEARTBEAT_TIMEOUTS).increment(1);
}

pub fn slow_consumer() {
    counter!(SLOW_CONSUMER_CLOSES).increment(1);
}

/// `reason`: the error code the client was given (`token-expired`, `invalid-api-key`, …).
pub fn auth_failure(reason: &'static str) {
    counter!(AUTH_FAILURES, "reason" => reason).increment(1);
}

pub fn webhook_signature_failure(provider: &'static str) {
    counter!(WEBHOOK_SIGNATURE_FAILURES, "provider" => provider).increment(1);
}

/// `outcome`: `resumed`, `resume-failed` or `resume-too-late`.
pub fn resume(outcome: &'static str) {
    counter!(RESUMES, "outcome" => outcome).increment(1);
}

pub fn redis_error() {
    counter!(REDIS_ERRORS).increment(1);
}

pub fn database_error() {
    counter!(DATABASE_ERRORS).increment(1);
}

/// `reason`: `per-address` or `pending` (the cap the connection was past).
pub fn connection_refused(reason: &'static str) {
    counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

pub fn body_timeout() {
    counter!(BODY_TIMEOUTS).increment(1);
}

/// Publishes waiting to be stored, now.
pub fn publish_queue(depth: usize) {
    gauge!(PUBLISH_QUEUE).set(depth as f64);
}

pub fn publish_overloaded() {
    counter!(PUBLISHES_OVERLOADED).increment(1);
}

/// Items waiting to go to Redis, now.
pub fn relay_queue(depth: usize) {
    gauge!(RELAY_QUEUE).set(depth as f64);
}

/// `kind`: `event`, `ephemeral`, `catch-up` or `presence-query`.
pub fn relay_dropped(kind: &'static str) {
    counter!(RELAYS_DROPPED, "kind" => kind).increment(1);
}

/// `reason`: `too-large`, `unsigned`, `bad-signature`, `malformed`, `bad-id` or `bad-frame`.
pub fn cluster_message_dropped(reason: &'static str) {
    counter!(CLUSTER_MESSAGES_DROPPED, "reason" => reason).increment(1);
}

pub fn join_refused() {
    counter!(JOINS_REFUSED).increment(1);
}

/// `reason`: `overflow` (held past the bound) or `absent` (announced, but not in the database).
pub fn room_events_dropped(reason: &'static str, events: usize) {
    counter!(ROOM_EVENTS_DROPPED, "reason" => reason).increment(events as u64);
}
