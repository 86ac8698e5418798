//! Generic webhooks in the Standard Webhooks scheme, so any system can feed an account's inbox:
//! `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256(secret,
//! "id.timestamp.body")>` (several signatures while keys rotate, at most
//! [`MAX_STANDARD_SIGNATURES`](crate::auth::signature::MAX_STANDARD_SIGNATURES), checked against one HMAC). A
//! timestamp outside the replay window is refused; a `webhook-id` seen before is acknowledged and
//! ignored.
//!
//! Body: `{"type":"message","data":{"contact_id":"…","text":"…","attachments":[…],"sent_at":…}}`.

use serde::Deserialize;
use serde_json::Value;

use super::{
    cpu_bound, header, ingest, millis, Direction, Inbound, Ingested, Request, WebhookError,
    Webhooks,
};
use crate::auth::signature::{SignatureError, StandardSignatures};
use crate::store::integrations::{self, Provider};
use crate::store::now_ms;

const PROVIDER: Provider = Provider::Generic;

#[derive(Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "kebab-case")]
enum Body {
    Message(MessageData),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageData {
    contact_id: String,
    text: Option<String>,
    attachments: Option<Value>,
    /// Seconds or milliseconds since the epoch; the webhook's timestamp when absent.
    sent_at: Option<i64>,
}

/// The body's message, once the signature over it is verified.
fn verify_and_parse(
    signatures: &StandardSignatures,
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
) -> Result<MessageData, WebhookError> {
    if !signatures.verify(secret, id, timestamp, body) {
        return Err(WebhookError::Signature(SignatureError::Mismatch));
    }
    let Body::Message(data) = crate::json::from_slice(body)?;
    if data.contact_id.is_empty() || (data.text.is_none() && data.attachments.is_none()) {
        return Err(WebhookError::InvalidBody(
            "a message needs a `contact_id` and a `text` or `attachments`".into(),
        ));
    }
    Ok(data)
}

/// `POST /webhooks/generic/{integration_id}`
pub async fn receive(
    req: impl Request,
    integration_id: String,
    hooks: &Webhooks,
) -> Result<Ingested, WebhookError> {
    let stats = &hooks.stats;
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header(&req, "webhook-id"),
        header(&req, "webhook-timestamp"),
        header(&req, "webhook-signature"),
    ) else {
        return Err(stats.refused(PROVIDER, SignatureError::Missing));
    };
    // Before the body is read: a list no sender needs is refused without reading it.
    let signatures =
        StandardSignatures::parse(&signatures).map_err(|e| stats.refused(PROVIDER, e))?;
    let body = req.body(hooks.max_body_bytes).await?;

    let integration = hooks
        .store
        .run(move |conn| integrations::get(conn, &integration_id))
        .await?
        .filter(|i| i.provider == PROVIDER.as_str() && i.disabled_at.is_none())
        .ok_or(WebhookError::UnknownIntegration)?;

    let sent = timestamp.parse::<i64>().ok();
    let tolerance = hooks.tolerance.as_secs();
    if sent.is_none_or(|t| (now_ms() / 1000).abs_diff(t) > tolerance) {
        return Err(stats.refused(PROVIDER, SignatureError::Stale));
    }
    let secret = integration.secret.clone();
    let (signed_id, signed_timestamp) = (id.clone(), timestamp);
    let data = cpu_bound(stats, PROVIDER, &body, move |body| {
        verify_and_parse(&signatures, &secret, &signed_id, &signed_timestamp, &body)
    })
    .await?;
    let item = Inbound::Message {
        provider_message_id: id,
        sender_id: data.contact_id.clone(),
        contact_id: data.contact_id,
        direction: Direction::Inbound,
        text: data.text,
        attachments: data.attachments,
        sent_at: millis(data.sent_at.or(sent))?,
        echo_of: None,
    };
    ingest(&hooks.commits, integration, vec![item]).await
}
