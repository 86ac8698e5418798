//! The inbox as events: storing messages of conversations and emitting the persisted, sequenced
//! events that tell an account's sessions about them. Shared by the webhooks (inbound), the
//! conversations API (replies) and the outbound dispatcher (delivery status).
//!
//! Everything here runs inside [`store::write`] for the account, so the events it appends get
//! the account's next sequence numbers in the same transaction as the change they describe;
//! [`hand_off`] passes them to the broker once that transaction has committed.

use actix::Addr;
use serde_json::json;
use serde_json::value::RawValue;

use crate::actors::broker::{Broker, Publish};
use crate::actors::room::RoomEvent;
use crate::ids::{AccountId, UserId};
use crate::protocol::event_frame;
use crate::store::conversations::{self, Conversation, Message, NewMessage};
use crate::store::events::{self, NewEvent};
use crate::store::{DbConnection, StoreError};

/// Appends an event (JSON `data`) for the account, or for one user of it; returns it ready to
/// deliver, serialized once.
pub fn emit(
    conn: &mut DbConnection,
    account: &AccountId,
    user: Option<&UserId>,
    event: &str,
    data: &RawValue,
) -> Result<RoomEvent, StoreError> {
    let seq = events::append(
        conn,
        &NewEvent {
            account,
            user,
            event,
            data: data.get(),
        },
    )?;
    Ok(RoomEvent {
        seq,
        user: user.cloned(),
        frame: event_frame(seq, event, data),
    })
}

fn emit_json(
    conn: &mut DbConnection,
    account: &AccountId,
    event: &str,
    data: String,
) -> Result<RoomEvent, StoreError> {
    let data = RawValue::from_string(data).expect("our own serialization is JSON");
    emit(conn, account, None, event, &data)
}

/// Stores a message and emits `new-message` and `update-conversation`.
pub fn add_message(
    conn: &mut DbConnection,
    account: &AccountId,
    new: &NewMessage<'_>,
) -> Result<(Message, Vec<RoomEvent>), StoreError> {
    let (message, conversation) = conversations::add_message(conn, new)?;
    let events = vec![
        emit_json(conn, account, "new-message", message.to_json())?,
        conversation_updated(conn, account, &conversation)?,
    ];
    Ok((message, events))
}

/// `update-conversation`: the conversation with its last message, time and unread count.
pub fn conversation_updated(
    conn: &mut DbConnection,
    account: &AccountId,
    conversation: &Conversation,
) -> Result<RoomEvent, StoreError> {
    let data = serde_json::to_string(conversation).expect("conversations serialize");
    emit_json(conn, account, "update-conversation", data)
}

/// `message-status`: an outbound message (or several, up to a watermark) changed status.
pub fn message_status(
    conn: &mut DbConnection,
    account: &AccountId,
    data: serde_json::Value,
) -> Result<RoomEvent, StoreError> {
    emit_json(conn, account, "message-status", data.to_string())
}

/// `message-status` for one message.
pub fn one_message_status(
    conn: &mut DbConnection,
    account: &AccountId,
    message: &Message,
) -> Result<RoomEvent, StoreError> {
    let data = json!({
        "conversation_id": message.conversation_id,
        "message_id": message.id,
        "status": message.status,
        "provider_message_id": message.provider_message_id,
    });
    message_status(conn, account, data)
}

/// Hands committed events to the broker. Called on the blocking thread right after the commit,
/// not from a request future that a departing client could drop.
pub fn hand_off(broker: &Addr<Broker>, account: &AccountId, events: Vec<RoomEvent>) {
    for event in events {
        broker.do_send(Publish {
            account: account.clone(),
            event,
        });
    }
}
