//! Outbound webhooks: a reply posted in Switchboard is handed to the application's backend (which
//! forwards it to Facebook or Zalo — Switchboard never calls them) as a Standard Webhooks request
//! signed with the integration's outbound secret, retried with exponential backoff.
//!
//! Deliveries are rows (`store::deliveries`), so their state is visible through the admin API and
//! survives a restart: the [`Dispatcher`] picks up pending ones when it starts. Each outcome is
//! also told to the account's sessions as a `message-status` event (`forwarded` or `failed`).

use std::time::Duration;

use actix::prelude::*;

use crate::actors::broker::Broker;
use crate::config::OutboundConfig;
use crate::ids::AccountId;
use crate::inbox;
use crate::store::{self, conversations, deliveries, integrations, now_ms, Store, StoreError};
use crate::webhooks::signature;

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How much of a failing receiver's answer is kept as the delivery's error.
const ERROR_EXCERPT: usize = 200;

/// Attempt (or retry) a delivery now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch {
    pub delivery_id: String,
}

pub struct Dispatcher {
    store: Store,
    broker: Addr<Broker>,
    client: reqwest::Client,
    config: OutboundConfig,
}

impl Dispatcher {
    pub fn new(store: Store, broker: Addr<Broker>, config: OutboundConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .expect("the HTTP client builds with default TLS settings");
        Self {
            store,
            broker,
            client,
            config,
        }
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let pending = async move { store.run(deliveries::pending).await };
        ctx.spawn(pending.into_actor(self).map(|result, _, ctx| match result {
            Ok(pending) => {
                for delivery in pending {
                    let wait = (delivery.next_attempt_at - now_ms()).max(0) as u64;
                    let id = delivery.id;
                    ctx.run_later(Duration::from_millis(wait), move |_, ctx| {
                        ctx.notify(Dispatch { delivery_id: id })
                    });
                }
            }
            Err(e) => log::error!("outbound: cannot read pending deliveries: {e}"),
        }));
    }
}

impl Handler<Dispatch> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: Dispatch, ctx: &mut Context<Self>) {
        let attempt = attempt(
            self.store.clone(),
            self.broker.clone(),
            self.client.clone(),
            self.config,
            msg.delivery_id.clone(),
        );
        ctx.spawn(attempt.into_actor(self).map(move |retry_in, _, ctx| {
            if let Some(wait) = retry_in {
                ctx.run_later(wait, move |_, ctx| {
                    ctx.notify(Dispatch {
                        delivery_id: msg.delivery_id,
                    })
                });
            }
        }));
    }
}

/// One attempt; returns when to try again, if at all.
async fn attempt(
    store: Store,
    broker: Addr<Broker>,
    client: reqwest::Client,
    config: OutboundConfig,
    id: String,
) -> Option<Duration> {
    let lookup_id = id.clone();
    let found = store
        .run(move |conn| {
            let Some(delivery) = deliveries::get(conn, &lookup_id)? else {
                return Ok(None);
            };
            let integration = integrations::get(conn, &delivery.integration_id)?;
            Ok::<_, StoreError>(integration.map(|i| (delivery, i)))
        })
        .await;
    let (delivery, integration) = match found {
        Ok(Some(found)) => found,
        Ok(None) => return None,
        Err(e) => {
            log::error!("outbound delivery={id}: {e}");
            return Some(config.retry_base);
        }
    };
    if delivery.status != "pending" {
        return None;
    }

    let result = match &integration.outbound_url {
        None => Err("the integration has no outbound_url".to_owned()),
        Some(url) => {
            let timestamp = now_ms() / 1000;
            let signature = signature::sign_standard(
                &integration.outbound_secret,
                &delivery.id,
                timestamp,
                delivery.payload.as_bytes(),
            );
            let sent = client
                .post(url)
                .header("content-type", "application/json")
                .header("webhook-id", &delivery.id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(delivery.payload.clone())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    let excerpt: String = text.chars().take(ERROR_EXCERPT).collect();
                    Err(format!("HTTP {status}: {excerpt}"))
                }
                // Without the URL: it may carry credentials in its query string.
                Err(e) => Err(format!("request failed: {}", e.without_url())),
            }
        }
    };

    let attempts = delivery.attempts as u32 + 1;
    let (status, retry_in) = match &result {
        Ok(()) => ("delivered", None),
        Err(_) if attempts >= config.max_attempts => ("failed", None),
        Err(_) => {
            let backoff = config
                .retry_base
                .saturating_mul(1 << (attempts - 1).min(20))
                .min(MAX_BACKOFF);
            ("pending", Some(backoff))
        }
    };
    let error = result.err();
    match &error {
        Some(e) => log::warn!(
            "outbound delivery={} integration={} attempt={attempts} status={status}: {e}",
            delivery.id,
            integration.id
        ),
        None => log::debug!("outbound delivery={} delivered", delivery.id),
    }
    let next_at = now_ms() + retry_in.map_or(0, |d| d.as_millis() as i64);
    let recorded = store
        .run(move |conn| {
            deliveries::record_attempt(conn, &delivery.id, status, error.as_deref(), next_at)?;
            let message_status = match status {
                "delivered" => "forwarded",
                "failed" => "failed",
                _ => return Ok(()),
            };
            let Ok(account) = AccountId::new(&integration.account_id) else {
                return Ok(());
            };
            let events = store::write(conn, &account, |conn| {
                let message = conversations::set_message_status(
                    conn,
                    &delivery.message_id,
                    message_status,
                    None,
                )?;
                Ok::<_, StoreError>(vec![inbox::one_message_status(conn, &account, &message)?])
            })?;
            inbox::hand_off(&broker, &account, events);
            Ok::<_, StoreError>(())
        })
        .await;
    if let Err(e) = recorded {
        log::error!("outbound delivery={id}: cannot record the attempt: {e}");
    }
    retry_in
}
