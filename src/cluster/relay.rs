//! The node's outgoing side of the cluster: one task, one Redis connection, one ordered, bounded
//! queue — events and ephemeral frames to relay, catch-up notices, presence questions — and the
//! presence changes to record (the latest per user).
//!
//! While Redis is unreachable the node carries on alone: its own sessions get everything (the
//! broker delivered locally before relaying), presence is announced locally, and the accounts
//! whose events could not be relayed are remembered; once Redis is back, the other nodes are asked
//! to catch those accounts up from the database (every account, when relays were dropped at the
//! queue's bound or too many accounts were missed to list).

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
use super::signing::Key;
use super::wire::{ChannelMessage, CHANNEL};
use super::{next_backoff, Outgoing, Shared, REDIS_TIMEOUT};
use crate::actors::broker::{Broker, FromPeers};
use crate::ids::{AccountId, UserId};
use crate::metrics;

/// How often the link checks its connection and presence records.
const TICK: Duration = Duration::from_secs(1);
/// Most queued items handled in one round (relays in one pipeline).
const MAX_ROUND: usize = 512;
/// Most accounts remembered for a catch-up; past it, every account is caught up.
const MAX_UNRELAYED: usize = 10_000;

/// What the other nodes have not heard of and must catch up on once Redis is back.
#[derive(Default)]
struct Unrelayed {
    accounts: HashSet<AccountId>,
    /// Too much to list: every account.
    all: bool,
}

impl Unrelayed {
    fn add(&mut self, accounts: impl IntoIterator<Item = AccountId>) {
        if !self.all {
            self.accounts.extend(accounts);
        }
        if self.accounts.len() > MAX_UNRELAYED {
            self.everything();
        }
    }

    fn everything(&mut self) {
        self.all = true;
        self.accounts = HashSet::new();
    }

    fn is_empty(&self) -> bool {
        !self.all && self.accounts.is_empty()
    }

    /// The catch-up notices that cover it.
    fn notices<'a>(&'a self, node: &'a str) -> Vec<ChannelMessage<'a>> {
        let notice = |account: Option<&'a AccountId>| ChannelMessage::CatchUp {
            node: node.into(),
            account: account.map(|a| a.as_str().into()),
            head: None,
        };
        if self.all {
            return vec![notice(None)];
        }
        self.accounts.iter().map(Some).map(notice).collect()
    }
}

pub struct Relay {
    client: redis::Client,
    node: Arc<str>,
    /// Signs every message this node publishes.
    key: Key,
    broker: Addr<Broker>,
    shared: Arc<Shared>,
    conn: Option<MultiplexedConnection>,
    scripts: Scripts,
    /// Users with a session on this node (or within the grace after their last), whose
    /// presence records it renews.
    online_here: HashSet<(AccountId, UserId)>,
    /// Users whose last session here closed, and when their grace ends.
    leaving: HashMap<(AccountId, UserId), Instant>,
    grace: Duration,
    /// Events the other nodes did not hear of.
    unrelayed: Unrelayed,
    /// When to try Redis again, in ticks, and the wait after that.
    retry_in: u32,
    backoff: Duration,
    /// Ticks since the presence records were last renewed.
    since_renewal: u32,
}

impl Relay {
    pub fn new(
        client: redis::Client,
        node: Arc<str>,
        key: Key,
        grace: Duration,
        broker: Addr<Broker>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            leaving: HashMap::new(),
            grace,
            client,
            node,
            key,
            broker,
            shared,
            conn: None,
            scripts: Scripts::default(),
            online_here: HashSet::new(),
            unrelayed: Unrelayed::default(),
            retry_in: 0,
            backoff: TICK,
            since_renewal: 0,
        }
    }

    pub async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Outgoing>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round = Vec::with_capacity(MAX_ROUND);
        let shared = self.shared.clone();
        loop {
            tokio::select! {
                received = queue.recv_many(&mut round, MAX_ROUND) => {
                    if received == 0 {
                        return;
                    }
                    for item in &round {
                        shared.release(item.cost());
                    }
                    self.handle(round.drain(..)).await;
                    self.catch_up().await;
                }
                _ = shared.presence_changed.notified() => {
                    for ((account, user), online) in shared.take_presence() {
                        self.presence(account, user, online).await;
                    }
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
                Outgoing::OnlineUsers { account, reply } => {
                    self.flush(&mut relays, &mut relayed).await;
                    let users = match self.conn.as_mut() {
                        Some(conn) => presence::online_users(conn, &account).await,
                        None => Err(not_connected()),
                    };
                    let users = self.check(users);
                    let _ = reply.send(users);
                }
                relay => {
                    if let Some((account, message)) = self.message(relay) {
                        relays.publish(CHANNEL, message);
                        relayed.extend(account);
                    }
                }
            }
        }
        self.flush(&mut relays, &mut relayed).await;
    }

    /// A relay as signed on the channel, with the account whose events it is about.
    fn message(&self, relay: Outgoing) -> Option<(Option<AccountId>, Vec<u8>)> {
        let node = self.node.as_ref();
        let (account, wire) = match &relay {
            Outgoing::Event {
                account,
                seq,
                user,
                stored_ms,
                frame,
            } => (
                Some(account),
                ChannelMessage::Event {
                    node: node.into(),
                    account: account.as_str().into(),
                    seq: *seq,
                    user: user.as_ref().map(|u| u.as_str().into()),
                    stored_ms: *stored_ms,
                    frame: serde_json::from_str::<&RawValue>(frame).ok()?,
                },
            ),
            Outgoing::Ephemeral(ephemeral) => (
                None,
                ChannelMessage::Ephemeral {
                    node: node.into(),
                    account: ephemeral.account.as_str().into(),
                    users: ephemeral
                        .users
                        .as_ref()
                        .map(|users| users.iter().map(|u| u.as_str().into()).collect()),
                    except: ephemeral.except.as_ref().map(|u| u.as_str().into()),
                    frame: serde_json::from_str::<&RawValue>(&ephemeral.frame).ok()?,
                },
            ),
            Outgoing::CatchUp { account, head } => (
                Some(account),
                ChannelMessage::CatchUp {
                    node: node.into(),
                    account: Some(account.as_str().into()),
                    head: Some(*head),
                },
            ),
            Outgoing::OnlineUsers { .. } => return None,
        };
        Some((account.cloned(), self.sign(&wire)))
    }

    fn sign(&self, wire: &ChannelMessage) -> Vec<u8> {
        self.key.sign(&to_json(wire))
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
            self.unrelayed.add(relayed.drain(..));
        }
        relays.clear();
        relayed.clear();
    }

    /// A user's first session here opened, or their last one closed (which counts once the
    /// grace has passed without a new one).
    /// (Changes come coalesced, the latest per user: a user who came and went before the link
    /// looked was never recorded here, and has nothing to take back.)
    async fn presence(&mut self, account: AccountId, user: UserId, online: bool) {
        let key = (account, user);
        if !online {
            if self.online_here.contains(&key) {
                self.leaving.insert(key, Instant::now() + self.grace);
            }
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
                decided: None,
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
                self.shared.publishing.store(true, Ordering::Relaxed);
                log::info!("cluster: publishing to Redis");
            }
            Err(e) => {
                self.failed(&e);
                return false;
            }
        }
        self.catch_up().await;
        self.since_renewal = 0;
        self.renew().await;
        self.conn.is_some()
    }

    /// While connected, asks the other nodes to catch up on whatever they did not hear of:
    /// relays that failed, or were dropped at the queue's bound.
    async fn catch_up(&mut self) {
        if self.shared.overflowed.swap(false, Ordering::Relaxed) {
            self.unrelayed.everything();
        }
        if self.unrelayed.is_empty() || self.conn.is_none() {
            return;
        }
        let mut notices = redis::pipe();
        for wire in self.unrelayed.notices(&self.node) {
            notices.publish(CHANNEL, self.sign(&wire));
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let sent = notices.query_async::<()>(conn).await;
        if self.check(sent).is_some() {
            self.unrelayed = Unrelayed::default();
        }
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
                    self.shared.publishing.store(false, Ordering::Relaxed);
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

fn to_json(wire: &ChannelMessage) -> String {
    serde_json::to_string(wire).expect("wire messages serialize")
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
