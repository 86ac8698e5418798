//! Facebook Messenger: the subscription handshake, and page webhooks signed with the app secret
//! (`X-Hub-Signature-256`). The secret comes from the integrations of the pages the body names,
//! so those ids — and nothing else — are read from the raw body first; the signature is then
//! checked with that one secret (one HMAC per request, however many integrations there are), and
//! only then is the payload interpreted. One app signs a webhook: pages registered with different
//! secrets cannot share one, so one app cannot post into another app's pages.

use std::collections::{BTreeSet, HashMap};

use serde::Deserialize;
use serde_json::Value;

use super::{
    cpu_bound, header, ingest, millis, Direction, Inbound, Ingested, Receipt, Request,
    WebhookError, Webhooks,
};
use crate::auth::signature::{self, SignatureError};
use crate::protocol::ECHO_METADATA_PREFIX;
use crate::store::integrations::{self, Integration, Provider};

const PROVIDER: Provider = Provider::Facebook;

/// `GET /webhooks/facebook?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`
/// Answers with the challenge to echo, as `text/plain`.
pub fn handshake(
    query: &HashMap<String, String>,
    hooks: &Webhooks,
) -> Result<String, WebhookError> {
    let param = |name: &'static str| {
        query.get(name).ok_or(WebhookError::InvalidField {
            field: name,
            reason: "missing".into(),
        })
    };
    let (mode, token, challenge) = (
        param("hub.mode")?,
        param("hub.verify_token")?,
        param("hub.challenge")?,
    );
    if mode != "subscribe" {
        return Err(WebhookError::InvalidField {
            field: "hub.mode",
            reason: "must be `subscribe`".into(),
        });
    }
    let Some(expected) = &hooks.facebook_verify_token else {
        return Err(WebhookError::VerifyToken(
            "no Facebook verify token is configured",
        ));
    };
    if !expected.matches(token) {
        return Err(WebhookError::VerifyToken("the verify token does not match"));
    }
    Ok(challenge.clone())
}

/// Most distinct pages one webhook may name: Facebook batches the events of an app's pages, and
/// each page named is looked up before the signature can be checked.
pub const MAX_PAGES_PER_WEBHOOK: usize = 100;

/// The page ids of a payload, the only part read before the signature is checked.
#[derive(Deserialize)]
struct PageIds {
    entry: Vec<PageId>,
}

#[derive(Deserialize)]
struct PageId {
    id: String,
}

/// The distinct pages `body` names, at most [`MAX_PAGES_PER_WEBHOOK`].
fn page_ids(body: &[u8]) -> Result<Vec<String>, WebhookError> {
    let named: PageIds = crate::json::from_slice(body)?;
    let pages: BTreeSet<String> = named.entry.into_iter().map(|e| e.id).collect();
    if pages.len() > MAX_PAGES_PER_WEBHOOK {
        return Err(WebhookError::InvalidField {
            field: "entry",
            reason: format!("names more than {MAX_PAGES_PER_WEBHOOK} pages"),
        });
    }
    Ok(pages.into_iter().collect())
}

/// The one app secret the pages' integrations hold; `None` when they hold several.
fn shared_secret(integrations: &[Integration]) -> Option<String> {
    let first = &integrations.first()?.secret;
    integrations
        .iter()
        .all(|i| constant_time_eq::constant_time_eq(i.secret.as_bytes(), first.as_bytes()))
        .then(|| first.clone())
}

#[derive(Deserialize)]
struct Payload {
    object: String,
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    id: String,
    #[serde(default)]
    messaging: Vec<Messaging>,
}

#[derive(Deserialize)]
struct Messaging {
    sender: Party,
    recipient: Party,
    timestamp: Option<i64>,
    message: Option<FbMessage>,
    delivery: Option<Watermark>,
    read: Option<Watermark>,
}

#[derive(Deserialize)]
struct Party {
    id: String,
}

#[derive(Deserialize)]
struct FbMessage {
    mid: String,
    text: Option<String>,
    attachments: Option<Value>,
    #[serde(default)]
    is_echo: bool,
    /// Set by the app on its Send API call; `switchboard:<message id>` ties an echo to our reply.
    metadata: Option<String>,
}

#[derive(Deserialize)]
struct Watermark {
    watermark: i64,
}

fn items(page: &str, messaging: Vec<Messaging>) -> Result<Vec<Inbound>, WebhookError> {
    let mut items = Vec::with_capacity(messaging.len());
    for m in messaging {
        // For an echo the page is the sender and the contact the recipient.
        let outbound = m.message.as_ref().is_some_and(|msg| msg.is_echo);
        let contact_id = if outbound {
            m.recipient.id
        } else {
            m.sender.id
        };
        let at = millis(m.timestamp)?;
        if let Some(message) = m.message {
            items.push(Inbound::Message {
                provider_message_id: message.mid,
                sender_id: if outbound {
                    page.to_owned()
                } else {
                    contact_id.clone()
                },
                contact_id,
                direction: if outbound {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                },
                text: message.text,
                attachments: message.attachments,
                sent_at: at,
                echo_of: message
                    .metadata
                    .and_then(|m| m.strip_prefix(ECHO_METADATA_PREFIX).map(str::to_owned)),
            });
        } else if let Some((status, w)) = m
            .read
            .map(|w| (Receipt::Read, w))
            .or(m.delivery.map(|w| (Receipt::Delivered, w)))
        {
            items.push(Inbound::Status {
                receipt: format!("{}:{contact_id}:{}", status.as_str(), w.watermark),
                contact_id,
                status,
                watermark: millis(Some(w.watermark))?,
            });
        }
        // Anything else (postbacks, reactions, …) is not part of the inbox: acknowledged
        // and dropped.
    }
    Ok(items)
}

/// The body's inbound items by page, once the signature over it is verified.
fn verify_and_parse(
    secret: &str,
    header: &str,
    body: &[u8],
) -> Result<HashMap<String, Vec<Inbound>>, WebhookError> {
    if !signature::verify_facebook(secret, body, header) {
        return Err(WebhookError::Signature(SignatureError::Mismatch));
    }
    let payload: Payload = crate::json::from_slice(body)?;
    if payload.object != "page" {
        return Err(WebhookError::InvalidField {
            field: "object",
            reason: "must be `page`".into(),
        });
    }
    let mut by_page: HashMap<String, Vec<Inbound>> = HashMap::new();
    for entry in payload.entry {
        let items = items(&entry.id, entry.messaging)?;
        by_page.entry(entry.id).or_default().extend(items);
    }
    Ok(by_page)
}

/// `POST /webhooks/facebook`
pub async fn receive(req: impl Request, hooks: &Webhooks) -> Result<Ingested, WebhookError> {
    let stats = &hooks.stats;
    let Some(header) = header(&req, "x-hub-signature-256") else {
        return Err(stats.refused(PROVIDER, SignatureError::Missing));
    };
    let body = req.body(hooks.max_body_bytes).await?;

    let pages = cpu_bound(stats, PROVIDER, &body, |body| page_ids(&body)).await?;
    let registered = hooks
        .store
        .run(move |conn| integrations::find_enabled_among(conn, PROVIDER.as_str(), &pages))
        .await?;
    if registered.is_empty() {
        return Err(WebhookError::UnknownIntegration);
    }
    let secret = shared_secret(&registered)
        .ok_or_else(|| stats.refused(PROVIDER, SignatureError::SecretsDiffer))?;
    let by_page = cpu_bound(stats, PROVIDER, &body, move |body| {
        verify_and_parse(&secret, &header, &body)
    })
    .await?;

    let mut total = Ingested::default();
    for (page, items) in by_page {
        let Some(integration) = registered.iter().find(|i| i.external_id == page) else {
            log::warn!("facebook webhook for an unknown page page={page}");
            continue;
        };
        let ingested = ingest(&hooks.commits, integration.clone(), items).await?;
        total.stored += ingested.stored;
        total.duplicates += ingested.duplicates;
    }
    Ok(total)
}
