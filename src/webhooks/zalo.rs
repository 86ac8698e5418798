//! Zalo Official Account webhooks. Zalo signs `app id + body + timestamp + OA secret key` with
//! SHA-256, and the timestamp and the OA id are inside the body: so this module reads just those
//! two fields to find the integration and its key, verifies the signature over the raw bytes with
//! that key alone (one MAC per request), and only then interprets the event.

use serde::Deserialize;
use serde_json::Value;

use super::{
    cpu_bound, header, ingest, millis, Direction, Inbound, Ingested, Request, WebhookError,
    Webhooks,
};
use crate::auth::signature::{self, SignatureError};
use crate::store::integrations::{self, Provider};

const PROVIDER: Provider = Provider::Zalo;

/// The fields needed to verify, read before anything else.
#[derive(Deserialize)]
struct Envelope {
    event_name: String,
    /// Zalo sends it as a string; the signature uses it exactly as sent.
    timestamp: Value,
    oa_id: Option<String>,
    sender: Option<Party>,
    recipient: Option<Party>,
}

#[derive(Deserialize)]
struct Party {
    id: String,
}

#[derive(Deserialize)]
struct Event {
    event_name: String,
    sender: Option<Party>,
    recipient: Option<Party>,
    follower: Option<Party>,
    message: Option<ZaloMessage>,
}

#[derive(Deserialize)]
struct ZaloMessage {
    msg_id: String,
    text: Option<String>,
    attachments: Option<Value>,
}

impl Envelope {
    fn timestamp(&self) -> Option<String> {
        match &self.timestamp {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// The OA the event belongs to: named outright, or the recipient of a user's message, or the
    /// sender of the OA's own.
    fn oa_id(&self) -> Option<&str> {
        let party = if self.event_name.starts_with("oa_send_") {
            &self.sender
        } else {
            &self.recipient
        };
        self.oa_id
            .as_deref()
            .or(party.as_ref().map(|p| p.id.as_str()))
    }
}

fn invalid(reason: &str) -> WebhookError {
    WebhookError::InvalidBody(reason.to_owned())
}

fn parse(event: Event, at: i64) -> Result<Option<Inbound>, WebhookError> {
    let name = event.event_name.as_str();
    if name == "follow" || name == "unfollow" {
        let follower = event
            .follower
            .ok_or_else(|| invalid("follow event without `follower`"))?;
        return Ok(Some(Inbound::Follow {
            receipt: format!("{name}:{}:{at}", follower.id),
            contact_id: follower.id,
            following: name == "follow",
            at,
        }));
    }
    let direction = if name.starts_with("user_send_") {
        Direction::Inbound
    } else if name.starts_with("oa_send_") {
        Direction::Outbound
    } else {
        // Zalo has many other events; acknowledging them keeps the webhook enabled.
        return Ok(None);
    };
    let message = event
        .message
        .ok_or_else(|| invalid("message event without `message`"))?;
    let (sender, recipient) = (
        event
            .sender
            .ok_or_else(|| invalid("message event without `sender`"))?,
        event
            .recipient
            .ok_or_else(|| invalid("message event without `recipient`"))?,
    );
    let contact_id = match direction {
        Direction::Inbound => sender.id.clone(),
        _ => recipient.id,
    };
    Ok(Some(Inbound::Message {
        provider_message_id: message.msg_id,
        contact_id,
        sender_id: sender.id,
        direction,
        text: message.text,
        attachments: message.attachments,
        sent_at: at,
        echo_of: None,
    }))
}

/// The timestamp and the OA id, read before the signature can be checked.
fn envelope(body: &[u8]) -> Result<(String, String), WebhookError> {
    let envelope: Envelope = crate::json::from_slice(body)?;
    let timestamp = envelope
        .timestamp()
        .ok_or_else(|| invalid("`timestamp` must be a string or a number"))?;
    let oa_id = envelope
        .oa_id()
        .ok_or_else(|| invalid("no OA id (`oa_id` or `recipient.id`)"))?
        .to_owned();
    Ok((timestamp, oa_id))
}

/// `POST /webhooks/zalo`
pub async fn receive(req: impl Request, hooks: &Webhooks) -> Result<Ingested, WebhookError> {
    let stats = &hooks.stats;
    let Some(header) = header(&req, "x-zevent-signature") else {
        return Err(stats.refused(PROVIDER, SignatureError::Missing));
    };
    let body = req.body(hooks.max_body_bytes).await?;
    let (timestamp, oa_id) = cpu_bound(stats, PROVIDER, &body, |body| envelope(&body)).await?;

    let integration = hooks
        .store
        .run(move |conn| integrations::find_enabled(conn, PROVIDER.as_str(), &oa_id))
        .await?
        .ok_or(WebhookError::UnknownIntegration)?;
    let app_id = integration.app_id.clone().unwrap_or_default();
    let secret = integration.secret.clone();
    let items = cpu_bound(stats, PROVIDER, &body, move |body| {
        if !signature::verify_zalo(&app_id, &body, &timestamp, &secret, &header) {
            return Err(WebhookError::Signature(SignatureError::Mismatch));
        }
        let event: Event = crate::json::from_slice(&body)?;
        let at = millis(timestamp.parse().ok())?;
        Ok(parse(event, at)?.into_iter().collect::<Vec<Inbound>>())
    })
    .await?;
    ingest(&hooks.commits, integration, items).await
}
