//! The node's subscription to the cluster channel: every message from another node becomes a
//! typed message to this node's broker. After every (re)subscription every room catches up from
//! the database, since whatever was published while the subscription was down was missed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use bytestring::ByteString;
use futures_util::StreamExt;

use super::wire::{Wire, CHANNEL};
use super::{next_backoff, Health, REDIS_TIMEOUT};
use crate::actors::broker::{Broker, CatchUp, Ephemeral, FromPeers};
use crate::actors::room::{Handed, RoomEvent};
use crate::ids::{AccountId, UserId};
use crate::metrics;

/// How often the subscription is checked with a ping (a Redis that hangs closes nothing).
const PING_EVERY: Duration = Duration::from_secs(2);

pub async fn run(client: redis::Client, node: Arc<str>, broker: Addr<Broker>, health: Arc<Health>) {
    let mut backoff = Duration::from_millis(500);
    // Redis being unreachable is said once at warning level (at start, or when the
    // subscription is lost); every retry after that at debug.
    let mut warned = false;
    loop {
        match subscribe(&client).await {
            Ok(pubsub) => {
                backoff = Duration::from_millis(500);
                health.subscribed.store(true, Ordering::Relaxed);
                log::info!("cluster: subscribed to {CHANNEL}");
                broker.do_send(CatchUp(None));
                let lost = listen(pubsub, &node, &broker).await;
                health.subscribed.store(false, Ordering::Relaxed);
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
async fn listen(pubsub: redis::aio::PubSub, node: &str, broker: &Addr<Broker>) -> String {
    let (mut sink, mut messages) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    return "connection closed".into();
                };
                match serde_json::from_slice::<Wire>(message.get_payload_bytes()) {
                    Ok(wire) if wire.node() == Some(node) => {}
                    Ok(wire) => {
                        forward(wire, broker);
                    }
                    Err(e) => log::warn!("cluster: ignored a message that does not parse: {e}"),
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

/// Hands a message from another node to the broker. Ids that do not parse — only a foreign
/// publisher on the channel could send them — drop the message.
fn forward(wire: Wire, broker: &Addr<Broker>) -> Option<()> {
    let account = |a: &str| AccountId::new(a).ok();
    let user = |u: &str| UserId::new(u).ok();
    match wire {
        Wire::Event {
            account: a,
            seq,
            user: u,
            stored_ms,
            frame,
            ..
        } => broker.do_send(FromPeers::Event {
            account: account(&a)?,
            event: RoomEvent {
                seq,
                user: match u {
                    Some(u) => Some(user(&u)?),
                    None => None,
                },
                frame: ByteString::from(frame.get()),
                handed: Some(Handed::stored_ago(Duration::from_millis(
                    (crate::store::now_ms() - stored_ms).max(0) as u64,
                ))),
            },
        }),
        Wire::Ephemeral {
            account: a,
            users,
            except,
            frame,
            ..
        } => broker.do_send(FromPeers::Ephemeral(Ephemeral {
            account: account(&a)?,
            users: match users {
                Some(users) => Some(users.iter().map(|u| user(u)).collect::<Option<_>>()?),
                None => None,
            },
            except: match except {
                Some(u) => Some(user(&u)?),
                None => None,
            },
            frame: ByteString::from(frame.get()),
        })),
        Wire::Presence {
            account: a,
            user: u,
            online,
        } => broker.do_send(FromPeers::Presence {
            account: account(&a)?,
            user: user(&u)?,
            online,
        }),
        Wire::CatchUp { account: a, .. } => broker.do_send(CatchUp(Some(account(&a)?))),
    }
    Some(())
}
