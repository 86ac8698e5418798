//! The node's outgoing side of the cluster: one task, one Redis connection, one ordered queue —
//! events and ephemeral frames to relay, presence changes to record, presence questions.
//!
//! While Redis is unreachable the node carries on alone: its own sessions get everything (the
//! broker delivered locally before relaying), presence is announced locally, and the accounts
//! whose events could not be relayed are remembered; once Redis is back, the other nodes are asked
//! to catch those accounts up from the database.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use actix::Addr;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::presence::{self, Scripts};
use super::wire::{Wire, CHANNEL};
use super::{next_backoff, Health, Outgoing, REDIS_TIMEOUT};
use crate::actors::broker::{Broker, FromPeers};
use crate::ids::{AccountId, UserId};
use crate::metrics;

/// How often the link checks its connection and presence records.
const TICK: Duration = Duration::from_secs(1);
/// Most queued items handled in one round (relays in one pipeline).
const MAX_ROUND: usize = 512;

pub struct Link {
    client: redis::Client,
    node: Arc<str>,
    broker: Addr<Broker>,
    health: Arc<Health>,
    conn: Option<MultiplexedConnection>,
    scripts: Scripts,
    /// Users with a session on this node (or within the grace after their last), whose
    /// presence records it renews.
    online_here: HashSet<(AccountId, UserId)>,
    /// Users whose last session here closed, and when their grace ends.
    leaving: HashMap<(AccountId, UserId), Instant>,
    grace: Duration,
    /// Accounts with events the other nodes did not hear of.
    unrelayed: HashSet<AccountId>,
    /// When to try Redis again, in ticks, and the wait after that.
    retry_in: u32,
    backoff: Duration,
    /// Ticks since the presence records were last renewed.
    since_renewal: u32,
}

impl Link {
    pub fn new(
        client: redis::Client,
        node: Arc<str>,
        grace: Duration,
        broker: Addr<Broker>,
        health: Arc<Health>,
    ) -> Self {
        Self {
            leaving: HashMap::new(),
            grace,
            client,
            node,
            broker,
            health,
            conn: None,
            scripts: Scripts::default(),
            online_here: HashSet::new(),
            unrelayed: HashSet::new(),
            retry_in: 0,
            backoff: TICK,
            since_renewal: 0,
        }
    }

    pub async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Outgoing>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round = Vec::with_capacity(MAX_ROUND);
        loop {
            tokio::select! {
                received = queue.recv_many(&mut round, MAX_ROUND) => {
                    if received == 0 {
                        return;
                    }
                    self.handle(round.drain(..)).await;
                }
                _ = tick.tick() => self.maintain().await,
                _ = sleep_until(self.leaving.values().min().copied()) => self.left().await,
            }
        }
    }

    /// Handles a round of queued items in order; relays go out together in one pipeline.
    async fn handle(&mut self, round: impl Iterator<Item = Outgoing>) {
        let mut relays = redis::pipe();
        let mut relayed: Vec<AccountId> = Vec::new();
        for item in round {
            match item {
                Outgoing::Event {
                    account,
                    seq,
                    user,
                    stored_ms,
                    frame,
                } => {
                    let Ok(frame) = serde_json::from_str::<&RawValue>(&frame) else {
                        continue;
                    };
                    let wire = Wire::Event {
                        node: self.node.as_ref().into(),
                        account: account.as_str().into(),
                        seq,
                        user: user.as_ref().map(|u| u.as_str().into()),
                        stored_ms,
                        frame,
                    };
                    relays.publish(CHANNEL, to_json(&wire));
                    relayed.push(account);
                }
                Outgoing::Ephemeral(ephemeral) => {
                    let Ok(frame) = serde_json::from_str::<&RawValue>(&ephemeral.frame) else {
                        continue;
                    };
                    let wire = Wire::Ephemeral {
                        node: self.node.as_ref().into(),
                        account: ephemeral.account.as_str().into(),
                        users: ephemeral
                            .users
                            .as_ref()
                            .map(|users| users.iter().map(|u| u.as_str().into()).collect()),
                        except: ephemeral.except.as_ref().map(|u| u.as_str().into()),
                        frame,
                    };
                    relays.publish(CHANNEL, to_json(&wire));
                }
                Outgoing::Presence {
                    account,
                    user,
                    online,
                } => {
                    self.flush(&mut relays, &mut relayed).await;
                    self.presence(account, user, online).await;
                }
                Outgoing::OnlineUsers { account, reply } => {
                    self.flush(&mut relays, &mut relayed).await;
                    let users = match self.conn.as_mut() {
                        Some(conn) => presence::online_users(conn, &account).await,
                        None => Err(not_connected()),
                    };
                    let users = self.check(users);
                    let _ = reply.send(users);
                }
            }
        }
        self.flush(&mut relays, &mut relayed).await;
    }

    /// Sends the pending relays; on failure remembers their accounts for a catch-up.
    async fn flush(&mut self, relays: &mut redis::Pipeline, relayed: &mut Vec<AccountId>) {
        if relays.is_empty() {
            return;
        }
        let sent = match self.conn.as_mut() {
            Some(conn) => relays.query_async::<()>(conn).await,
            None => Err(not_connected()),
        };
        if self.check(sent).is_none() {
            self.unrelayed.extend(relayed.drain(..));
        }
        relays.clear();
        relayed.clear();
    }

    /// A user's first session here opened, or their last one closed (which counts once the
    /// grace has passed without a new one).
    async fn presence(&mut self, account: AccountId, user: UserId, online: bool) {
        let key = (account, user);
        if !online {
            self.leaving.insert(key, Instant::now() + self.grace);
        } else if self.leaving.remove(&key).is_none() && self.online_here.insert(key.clone()) {
            self.record(key.0, key.1, true).await;
        }
    }

    /// Users whose grace is over are offline here.
    async fn left(&mut self) {
        let now = Instant::now();
        let over: Vec<_> = self
            .leaving
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in over {
            self.leaving.remove(&key);
            self.online_here.remove(&key);
            self.record(key.0, key.1, false).await;
        }
    }

    /// Records a presence change in Redis, which announces it to every node if it changed the
    /// user's presence anywhere. Without Redis, the local room announces it itself.
    async fn record(&mut self, account: AccountId, user: UserId, online: bool) {
        let recorded = match self.conn.as_mut() {
            Some(conn) if online => self
                .scripts
                .up(conn, &self.node, std::iter::once((&account, &user)))
                .await
                .map(drop),
            Some(conn) => self
                .scripts
                .down(conn, &self.node, &account, &user)
                .await
                .map(drop),
            None => Err(not_connected()),
        };
        if self.check(recorded).is_none() {
            self.broker.do_send(FromPeers::Presence {
                account,
                user,
                online,
            });
        }
    }

    /// Reconnects when due; renews and sweeps presence records every [`presence::REFRESH`].
    async fn maintain(&mut self) {
        if self.conn.is_none() {
            if self.retry_in > 0 {
                self.retry_in -= 1;
                return;
            }
            if !self.connect().await {
                return;
            }
        }
        self.since_renewal += 1;
        if self.since_renewal < presence::REFRESH.as_secs() as u32 {
            return;
        }
        self.since_renewal = 0;
        self.renew().await;
    }

    async fn renew(&mut self) {
        let users: Vec<_> = self.online_here.iter().cloned().collect();
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let renewed = self.scripts.renew(conn, &self.node, &users).await;
        if self.check(renewed).is_none() {
            return;
        }
        let conn = self.conn.as_mut().expect("checked above");
        let swept = self.scripts.sweep(conn).await;
        if let Some(gone) = self.check(swept).filter(|gone| *gone > 0) {
            log::info!("presence: {gone} user(s) of stopped nodes went offline");
        }
    }

    /// Opens the connection; on success asks the other nodes to catch up on what this node could
    /// not relay, and renews its presence records (Redis may have lost them).
    async fn connect(&mut self) -> bool {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => {
                self.conn = Some(conn);
                self.backoff = TICK;
                self.health.publishing.store(true, Ordering::Relaxed);
                log::info!("cluster: publishing to Redis");
            }
            Err(e) => {
                self.failed(&e);
                return false;
            }
        }
        if !self.unrelayed.is_empty() {
            let mut catch_up = redis::pipe();
            for account in &self.unrelayed {
                let wire = Wire::CatchUp {
                    node: self.node.as_ref().into(),
                    account: account.as_str().into(),
                };
                catch_up.publish(CHANNEL, to_json(&wire));
            }
            let conn = self.conn.as_mut().expect("just connected");
            let sent = catch_up.query_async::<()>(conn).await;
            if self.check(sent).is_none() {
                return false;
            }
            self.unrelayed.clear();
        }
        self.since_renewal = 0;
        self.renew().await;
        self.conn.is_some()
    }

    /// Passes a result through; on an error drops the connection (so the next tick reconnects)
    /// and answers `None`.
    fn check<T>(&mut self, result: redis::RedisResult<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                if self.conn.take().is_some() {
                    log::warn!(
                        "cluster: Redis failed ({e}); serving this node's sessions alone, \
                         will catch up when it is back"
                    );
                    self.health.publishing.store(false, Ordering::Relaxed);
                }
                metrics::redis_error();
                None
            }
        }
    }

    fn failed(&mut self, e: &redis::RedisError) {
        log::debug!("cluster: cannot reach Redis: {e}");
        metrics::redis_error();
        self.retry_in = self.backoff.as_secs() as u32;
        self.backoff = next_backoff(self.backoff);
    }
}

fn not_connected() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "not connected to Redis"))
}

fn to_json(wire: &Wire) -> String {
    serde_json::to_string(wire).expect("wire messages serialize")
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
