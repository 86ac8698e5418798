//! The node's subscription to the cluster channel: every message from another node is admitted
//! (checked, see [`super::admission`]) and becomes a typed message to this node's broker; what
//! does not pass is counted and dropped. After every (re)subscription every room catches up from
//! the database, since whatever was published while the subscription was down was missed.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use futures_util::StreamExt;

use super::admission::{admit, Admitted, Refusal};
use super::signing::Key;
use super::wire::CHANNEL;
use super::{next_backoff, Shared, REDIS_TIMEOUT};
use crate::actors::broker::{Broker, CatchUp};
use crate::metrics;

/// How often the subscription is checked with a ping (a Redis that hangs closes nothing).
const PING_EVERY: Duration = Duration::from_secs(2);

pub async fn run(client: redis::Client, mut node: Node, broker: Addr<Broker>, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(500);
    // Redis being unreachable is said once at warning level (at start, or when the
    // subscription is lost); every retry after that at debug.
    let mut warned = false;
    loop {
        match subscribe(&client).await {
            Ok(pubsub) => {
                backoff = Duration::from_millis(500);
                shared.subscribed.store(true, Ordering::Relaxed);
                log::info!("cluster: subscribed to {CHANNEL}");
                broker.do_send(CatchUp(None));
                let lost = listen(pubsub, &mut node, &broker).await;
                shared.subscribed.store(false, Ordering::Relaxed);
                if !broker.connected() {
                    return;
                }
                metrics::redis_error();
                warned = true;
                log::warn!(
                    "cluster: lost the Redis subscription ({lost}); this node's sessions are \
                     served alone until it is back"
                );
            }
            Err(e) => {
                metrics::redis_error();
                if warned {
                    log::debug!("cluster: cannot subscribe: {e}");
                } else {
                    warned = true;
                    log::warn!(
                        "cluster: cannot reach Redis ({e}); this node's sessions are served \
                         alone until it answers"
                    );
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = next_backoff(backoff);
    }
}

async fn subscribe(client: &redis::Client) -> redis::RedisResult<redis::aio::PubSub> {
    let subscribed = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL).await?;
        Ok(pubsub)
    };
    tokio::time::timeout(REDIS_TIMEOUT, subscribed)
        .await
        .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "timed out").into()))
}

/// Hands messages to the broker until the subscription is lost; says why.
async fn listen(pubsub: redis::aio::PubSub, node: &mut Node, broker: &Addr<Broker>) -> String {
    let (mut sink, mut messages) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    return "connection closed".into();
                };
                if !node.hand_over(message.get_payload_bytes(), broker).await {
                    return "this node is stopping".into();
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(REDIS_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) => return "ping timed out".into(),
                }
            }
        }
    }
}

/// What the listener knows of this node: its name, the cluster's key, and which kinds of
/// dropped message it has said something about.
pub struct Node {
    name: Arc<str>,
    key: Key,
    /// Each kind of dropped message is logged once (then only counted): a peer of another
    /// version, or a flood of forgeries, must not flood the log.
    logged: HashSet<Refusal>,
}

impl Node {
    pub fn new(name: Arc<str>, key: Key) -> Self {
        Self {
            name,
            key,
            logged: HashSet::new(),
        }
    }

    /// Checks a message and hands what it says to the broker, waiting for the broker to take
    /// it: the broker's mailbox holds at most one message from the channel at a time. `false`
    /// once the broker is gone.
    async fn hand_over(&mut self, payload: &[u8], broker: &Addr<Broker>) -> bool {
        let sent = match admit(payload, &self.key, &self.name) {
            Ok(Admitted::News(news)) => broker.send(news).await,
            Ok(Admitted::Own) => Ok(()),
            Err(refused) => {
                self.dropped(refused.why);
                match refused.catch_up {
                    Some(catch_up) => broker.send(catch_up).await,
                    None => Ok(()),
                }
            }
        };
        sent.is_ok()
    }

    fn dropped(&mut self, why: Refusal) {
        metrics::cluster_message_dropped(why.kind());
        if self.logged.insert(why) {
            log::warn!(
                "cluster: dropped a message from the channel ({}); further ones of this kind \
                 are only counted (switchboard_cluster_messages_dropped_total)",
                why.kind()
            );
        }
    }
}
