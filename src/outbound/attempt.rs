//! Claiming deliveries for this node, and one attempt at a claimed delivery: the signed request,
//! then its outcome recorded under the claim (and, when final, told to the account's sessions as
//! `message-status`). Uses the store, the broker and the HTTP client; keeps no state between
//! attempts.

use std::time::Duration;

use actix::Addr;

use super::address::{Policy, Resolver};
use crate::actors::broker::Broker;
use crate::auth::signature;
use crate::commit;
use crate::config::{OutboundConfig, PresenceWebhook};
use crate::ids::AccountId;
use crate::inbox;
use crate::store::deliveries::{self, Delivery, Kind, Outcome, Status};
use crate::store::integrations;
use crate::store::{self, conversations, now_ms, Store, StoreError};

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How much of a failing receiver's answer is read, at most.
const ANSWER_BYTES: usize = 1024;
/// How much of it (in characters) is kept as the delivery's error, and logged.
const ERROR_EXCERPT: usize = 200;

/// Why an attempt did not deliver.
enum Failure {
    /// No request was made, and none would help: the delivery ends as failed.
    Final(String),
    /// The request failed or was refused: retried until the attempts run out.
    Request(String),
}

/// Where one delivery goes, and how it is signed.
struct Receiver {
    url: Option<String>,
    secret: String,
    disabled: bool,
    /// The account whose message's status follows the delivery's (replies only).
    account: Option<AccountId>,
}

/// What this node's attempts share.
pub(super) struct Attempts {
    store: Store,
    broker: Addr<Broker>,
    client: reqwest::Client,
    config: OutboundConfig,
    policy: Policy,
    /// This node's name, written into the leases it takes.
    node: String,
    /// Where presence webhooks of accounts without a presence integration go.
    global_presence: Option<PresenceWebhook>,
}

impl Attempts {
    pub(super) fn new(
        store: Store,
        broker: Addr<Broker>,
        config: OutboundConfig,
        global_presence: Option<PresenceWebhook>,
        node: &str,
    ) -> Self {
        let policy = Policy {
            allow_private: config.allow_private,
        };
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            // A redirect is an answer like any other (not a 2xx): following it would let the
            // receiver send Switchboard's request anywhere, past the address checks.
            .redirect(reqwest::redirect::Policy::none())
            // Through a proxy, the address connected to would be the proxy's, not the one
            // checked.
            .no_proxy()
            .dns_resolver(Resolver::new(policy))
            .build()
            .expect("the HTTP client builds with default TLS settings");
        Self {
            store,
            broker,
            client,
            config,
            policy,
            node: node.to_owned(),
            global_presence,
        }
    }

    pub(super) fn node(&self) -> &str {
        &self.node
    }

    /// Claims one delivery for this node, if it is due and no node holds it.
    pub(super) async fn claim(&self, id: String) -> Result<Option<Delivery>, StoreError> {
        let (node, lease) = (self.node.clone(), millis(self.config.lease));
        self.store
            .run(move |conn| {
                // Read on the blocking thread: the lease starts when the claim is made.
                let now = now_ms();
                deliveries::claim(conn, &id, &node, now, now.saturating_add(lease))
            })
            .await
    }

    /// Claims up to `limit` of the due deliveries no node holds.
    pub(super) async fn claim_due(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let (node, lease) = (self.node.clone(), millis(self.config.lease));
        self.store
            .run(move |conn| {
                let mut claimed = Vec::new();
                for (id, expired_holder) in deliveries::due(conn, now_ms(), limit as i64)? {
                    // Another node may claim it first: then it is that node's.
                    let now = now_ms();
                    let Some(delivery) =
                        deliveries::claim(conn, &id, &node, now, now.saturating_add(lease))?
                    else {
                        continue;
                    };
                    if let Some(holder) = expired_holder {
                        log::warn!(
                            "outbound delivery={id}: taken over from node {holder}, whose lease \
                             ran out before it finished"
                        );
                    }
                    claimed.push(delivery);
                }
                Ok(claimed)
            })
            .await
    }

    /// One attempt at a delivery this node has claimed; returns when to try again, if at all.
    pub(super) async fn attempt(&self, delivery: Delivery) -> Option<Duration> {
        let receiver = match self.receiver(&delivery).await {
            Ok(receiver) => receiver,
            Err(e) => {
                // The claim runs out, and a scan takes the delivery again.
                log::error!("outbound delivery={}: {e}", delivery.id);
                return None;
            }
        };
        let result = match &receiver {
            None => Err(Failure::Final("its receiver no longer exists".into())),
            Some(r) if r.disabled => Err(Failure::Final("integration disabled".into())),
            Some(_)
                if now_ms().saturating_add(millis(self.config.timeout))
                    >= delivery.leased_until =>
            {
                // The database was slow: another node could claim it while the request runs.
                log::warn!(
                    "outbound delivery={}: too little of the lease left for a request; left to \
                     the next claim",
                    delivery.id
                );
                return None;
            }
            Some(r) => self.send(r, &delivery).await,
        };
        let account = receiver.and_then(|r| r.account);
        self.record(delivery, account, result).await
    }

    /// Where the delivery goes: its integration, or for a presence webhook without one, the
    /// globally configured receiver.
    async fn receiver(&self, delivery: &Delivery) -> Result<Option<Receiver>, StoreError> {
        let presence = delivery.kind == Kind::Presence.as_str();
        if presence && delivery.integration_id.is_empty() {
            return Ok(self.global_presence.as_ref().map(|global| Receiver {
                url: Some(global.url.clone()),
                secret: global.secret.expose().to_owned(),
                disabled: false,
                account: None,
            }));
        }
        let integration_id = delivery.integration_id.clone();
        let integration = self
            .store
            .run(move |conn| integrations::get(conn, &integration_id))
            .await?;
        Ok(integration.map(|i| Receiver {
            disabled: i.disabled_at.is_some(),
            url: i.outbound_url,
            secret: i.outbound_secret,
            // A reply's final outcome is its message's status too; a presence webhook's is not.
            account: (!presence).then_some(i.account_id),
        }))
    }

    async fn send(&self, receiver: &Receiver, delivery: &Delivery) -> Result<(), Failure> {
        let Some(url) = &receiver.url else {
            return Err(Failure::Final("the integration has no outbound_url".into()));
        };
        let url = self
            .policy
            .check_literal(url)
            .map_err(|e| Failure::Final(format!("outbound_url refused: {e}")))?;
        let timestamp = now_ms() / 1000;
        let signature = signature::sign_standard(
            &receiver.secret,
            &delivery.id,
            timestamp,
            delivery.payload.as_bytes(),
        );
        let sent = self
            .client
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
            Ok(response) => Err(Failure::Request(refusal(response).await)),
            // Without the URL: it may carry credentials in its query string.
            Err(e) => Err(Failure::Request(format!(
                "request failed: {}",
                excerpt(&causes(&e.without_url()))
            ))),
        }
    }

    /// Records the attempt's outcome under this node's claim; tells the account's sessions of a
    /// final one. Returns when to try again, if this node is to.
    async fn record(
        &self,
        delivery: Delivery,
        account: Option<AccountId>,
        result: Result<(), Failure>,
    ) -> Option<Duration> {
        let requested = !matches!(result, Err(Failure::Final(_)));
        let attempts = delivery.attempts + i64::from(requested);
        let (status, retry_in, error) = match result {
            Ok(()) => (Status::Delivered, None, None),
            Err(Failure::Final(e)) => (Status::Failed, None, Some(e)),
            Err(Failure::Request(e)) if attempts >= i64::from(self.config.max_attempts) => {
                (Status::Failed, None, Some(e))
            }
            Err(Failure::Request(e)) => (Status::Pending, Some(self.backoff(attempts)), Some(e)),
        };
        match &error {
            Some(e) => log::warn!(
                "outbound delivery={} integration={} attempt={attempts} status={status}: {e}",
                delivery.id,
                delivery.integration_id
            ),
            None => log::debug!("outbound delivery={} delivered", delivery.id),
        }
        let next_attempt_at = now_ms() + retry_in.map_or(0, millis);
        let broker = self.broker.clone();
        let id = delivery.id.clone();
        let recorded = self
            .store
            .run(move |conn| {
                let outcome = Outcome {
                    status,
                    attempts,
                    error: error.as_deref(),
                    next_attempt_at,
                };
                finish(conn, &broker, &delivery, account.as_ref(), &outcome)
            })
            .await;
        match recorded {
            Ok(true) => retry_in,
            Ok(false) => {
                log::warn!(
                    "outbound delivery={id}: another node took it over (this node's lease ran \
                     out); this attempt's outcome is not recorded"
                );
                None
            }
            Err(e) => {
                log::error!("outbound delivery={id}: cannot record the attempt: {e}");
                None
            }
        }
    }

    fn backoff(&self, attempts: i64) -> Duration {
        let doublings = (attempts - 1).clamp(0, 20) as u32;
        self.config
            .retry_base
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF)
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Records `outcome` if the claim on `delivery` still stands. A final outcome is recorded in the
/// account's write transaction, with the message's status and its `message-status` event, so
/// that a node whose claim was lost changes neither.
fn finish(
    conn: &mut store::DbConnection,
    broker: &Addr<Broker>,
    delivery: &Delivery,
    account: Option<&AccountId>,
    outcome: &Outcome<'_>,
) -> Result<bool, StoreError> {
    let message_status = match outcome.status {
        Status::Delivered => conversations::MessageStatus::Forwarded,
        Status::Failed => conversations::MessageStatus::Failed,
        Status::Pending => return deliveries::finish(conn, delivery, outcome),
    };
    let Some(account) = account else {
        return deliveries::finish(conn, delivery, outcome);
    };
    let (recorded, _) = commit::write(conn, broker, account, |conn| {
        if !deliveries::finish(conn, delivery, outcome)? {
            return Ok((false, Vec::new()));
        }
        let message =
            conversations::set_message_status(conn, &delivery.message_id, message_status, None)?;
        let event = inbox::one_message_status(conn, account, &message)?;
        Ok::<_, StoreError>((true, vec![event]))
    })?;
    Ok(recorded)
}

/// A receiver's refusal: its status and the start of its answer.
async fn refusal(mut response: reqwest::Response) -> String {
    let status = response.status();
    let mut answer = Vec::new();
    while answer.len() < ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => answer.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    answer.truncate(ANSWER_BYTES);
    let text = excerpt(&String::from_utf8_lossy(&answer));
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    }
}

/// An error and its causes, one after another (reqwest's own says only "error sending request").
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// What of a receiver's text is kept and logged: at most [`ERROR_EXCERPT`] characters, without
/// control characters (no forged log lines, no terminal escapes, no text direction tricks).
fn excerpt(text: &str) -> String {
    let is_bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() || is_bidi(c) { ' ' } else { c })
        .collect();
    let clean = clean.trim();
    let mut kept: String = clean.chars().take(ERROR_EXCERPT).collect();
    if kept.len() < clean.len() {
        kept.push('…');
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_short_and_printable() {
        let answer = format!(
            "bad\r\nFAKE LOG LINE\u{1b}[31m red \u{202e}{}",
            "x".repeat(500)
        );
        let kept = excerpt(&answer);
        assert!(kept.chars().count() <= ERROR_EXCERPT + 1, "{kept}");
        assert!(kept.starts_with("bad  FAKE LOG LINE [31m red  x"), "{kept}");
        assert!(!kept.chars().any(|c| c.is_control() || c == '\u{202e}'));
        assert!(kept.ends_with('…'));
        assert_eq!(excerpt("  short  "), "short");
    }
}
