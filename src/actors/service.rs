//! The port through which a session asks the services for what its user sends over the socket:
//! a message, a read receipt, who should see a typing indicator. The engine defines it; the
//! services implement it (the `requests` module), and the server wires one in. A session carries
//! frames; what a request means is decided behind this trait, exactly as for the REST API.
//!
//! Engine layer: names only `auth::Identity` and `ids`.

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::auth::Identity;
use crate::ids::UserId;

/// A `send` frame's content, owned so that it can move to the blocking pool.
pub struct SendRequest {
    pub conversation_id: String,
    pub text: Option<String>,
    /// JSON array.
    pub attachments: Option<String>,
    pub client_msg_id: Option<String>,
}

/// A message stored (or found again by its `client_msg_id`): what the `ack` says.
pub struct Sent {
    pub conversation_id: String,
    pub message_id: String,
    /// The sequence number of the sender's `new-message`.
    pub seq: u64,
    /// Nothing new was stored: the `client_msg_id` had been sent before.
    pub duplicate: bool,
}

/// Why a request was refused, as the client is told (a fault's cause is logged where it
/// happened, and the client told only to try again).
#[derive(Debug)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
}

/// What a session asks on its user's behalf. Every call returns at once; the work runs on the
/// blocking pool and the answer comes back as a future the session spawns.
pub trait Service: Send + Sync {
    /// Takes one send from the user's allowance (shared with the REST API); when it is spent,
    /// how long until the next.
    fn admit_send(&self, who: &Identity) -> Result<(), Duration>;

    /// The checks of a send that need no database, answered at once.
    fn check_send(&self, send: &SendRequest) -> Result<(), Refused>;

    /// Stores a message: its events reach the sessions, its outbound webhook is dispatched.
    fn send(&self, who: &Identity, send: SendRequest) -> BoxFuture<'static, Result<Sent, Refused>>;

    /// Marks a conversation read up to a message (the latest when `None`).
    fn read(
        &self,
        who: &Identity,
        conversation_id: String,
        up_to: Option<String>,
    ) -> BoxFuture<'static, Result<(), Refused>>;

    /// Who should see the user typing in a conversation: its participants, or `None` for the
    /// whole account (an external conversation).
    fn typing_audience(
        &self,
        who: &Identity,
        conversation_id: String,
    ) -> BoxFuture<'static, Result<Option<Vec<UserId>>, Refused>>;
}
