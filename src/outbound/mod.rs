//! Outbound webhooks: a reply posted in Switchboard is handed to the application's backend (which
//! forwards it to Facebook or Zalo — Switchboard never calls them) as a Standard Webhooks request
//! signed with the integration's outbound secret, retried with exponential backoff. Presence
//! webhooks (`user.online` / `user.offline`, queued by `presence_webhooks`) are deliveries of
//! another kind, sent the same way to the account's presence integration or the global receiver.
//!
//! Deliveries are rows (`store::deliveries`), so their state is visible through the admin API and
//! survives a restart. Each outcome is also told to the account's sessions as a `message-status`
//! event (`forwarded` or `failed`).
//!
//! Every node runs a [`Dispatcher`], and a delivery is attempted by one node at a time: a node
//! claims it in the database, with a lease (`SWITCHBOARD_OUTBOUND_LEASE`, longer than one
//! request), before it sends anything, and records the outcome only while its claim stands. A
//! fresh reply is claimed at once by the node that stored it, and a retry by that node when it
//! falls due; besides, every node scans for due deliveries that no node holds
//! (`SWITCHBOARD_OUTBOUND_SCAN_INTERVAL`), so pending deliveries are sent once after a restart of
//! every node, and a dead node's are taken over once its lease runs out. Delivery is at least
//! once: a node that dies after the receiver took a request, before recording it, leaves it to be
//! sent again (with the same `webhook-id`).
//!
//! Layout: [`attempt`] makes one attempt at a claimed delivery; [`address`] says which addresses
//! may be reached.

pub mod address;
mod attempt;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::actors::broker::Broker;
use crate::commit::Dispatch;
use crate::config::{OutboundConfig, PresenceWebhook};
use crate::store::deliveries::Delivery;
use crate::store::Store;
use attempt::Attempts;

/// Deliveries one node attempts at once. Past it, a fresh reply is not claimed here: it stays
/// due in the table, and the next scan (of any node) takes it.
const MAX_IN_FLIGHT: usize = 64;
/// Retries a node keeps timers for. Past it, a retry is left to the scans (at most one scan
/// interval later than its backoff).
const MAX_RETRY_TIMERS: usize = 4096;

pub struct Dispatcher {
    attempts: Arc<Attempts>,
    scan_interval: Duration,
    /// Deliveries this node is claiming or attempting: never two attempts of one at once here,
    /// and their number is bounded by [`MAX_IN_FLIGHT`].
    in_flight: HashSet<String>,
    /// Places in `in_flight` kept for the deliveries the running scan will claim.
    scan_reserved: usize,
    /// Timers set for retries, bounded by [`MAX_RETRY_TIMERS`].
    retry_timers: usize,
}

impl Dispatcher {
    /// `node` names this node in the leases it takes; `global_presence` receives the presence
    /// webhooks of accounts without a presence integration.
    pub fn new(
        store: Store,
        broker: Addr<Broker>,
        config: OutboundConfig,
        global_presence: Option<PresenceWebhook>,
        node: &str,
    ) -> Self {
        Self {
            attempts: Arc::new(Attempts::new(store, broker, config, global_presence, node)),
            scan_interval: config.scan_interval,
            in_flight: HashSet::new(),
            scan_reserved: 0,
            retry_timers: 0,
        }
    }

    fn room(&self) -> usize {
        MAX_IN_FLIGHT.saturating_sub(self.in_flight.len() + self.scan_reserved)
    }

    /// Claims the due deliveries no node holds, as many as this node has room for.
    fn scan(&mut self, ctx: &mut Context<Self>) {
        let room = self.room();
        if self.scan_reserved > 0 || room == 0 {
            return;
        }
        self.scan_reserved = room;
        let attempts = self.attempts.clone();
        let claim = async move { attempts.claim_due(room).await };
        ctx.spawn(claim.into_actor(self).map(|claimed, this, ctx| {
            this.scan_reserved = 0;
            match claimed {
                Ok(claimed) => {
                    for delivery in claimed {
                        // One of ours whose lease ran out mid-attempt: that attempt goes on.
                        if this.in_flight.insert(delivery.id.clone()) {
                            this.attempt(delivery, ctx);
                        }
                    }
                }
                Err(e) => log::error!("outbound: cannot look for due deliveries: {e}"),
            }
        }));
    }

    /// Attempts a delivery this node has claimed (and put in `in_flight`); sets a timer for its
    /// retry, if any.
    fn attempt(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        let id = delivery.id.clone();
        let attempts = self.attempts.clone();
        let attempt = async move { attempts.attempt(delivery).await };
        ctx.spawn(attempt.into_actor(self).map(move |retry_in, this, ctx| {
            this.in_flight.remove(&id);
            let Some(wait) = retry_in else { return };
            if this.retry_timers >= MAX_RETRY_TIMERS {
                return;
            }
            this.retry_timers += 1;
            ctx.run_later(wait, move |this, ctx| {
                this.retry_timers -= 1;
                ctx.notify(Dispatch { delivery_id: id });
            });
        }));
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        log::info!(
            "outbound: node {} looks for due deliveries every {}",
            self.attempts.node(),
            humantime::format_duration(self.scan_interval)
        );
        // At once: deliveries left pending by the last run.
        self.scan(ctx);
        ctx.run_interval(self.scan_interval, |this, ctx| this.scan(ctx));
    }
}

impl Handler<Dispatch> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: Dispatch, ctx: &mut Context<Self>) {
        if self.room() == 0 || !self.in_flight.insert(msg.delivery_id.clone()) {
            return;
        }
        let attempts = self.attempts.clone();
        let id = msg.delivery_id;
        let claim = {
            let id = id.clone();
            async move { attempts.claim(id).await }
        };
        ctx.spawn(claim.into_actor(self).map(move |claimed, this, ctx| {
            match claimed {
                Ok(Some(delivery)) => this.attempt(delivery, ctx),
                // Not due, done, or held by another node: nothing for this node to do.
                Ok(None) => {
                    this.in_flight.remove(&id);
                }
                Err(e) => {
                    this.in_flight.remove(&id);
                    log::error!("outbound delivery={id}: cannot claim it: {e}");
                }
            }
        }));
    }
}
