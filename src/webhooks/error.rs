//! Why a webhook is refused: the adapter's own error, with no HTTP in it; the HTTP layer answers
//! each as the API's error. Uses the base layer and the store's error only.

use crate::auth::signature::SignatureError;
use crate::json::JsonError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A query parameter or a payload field is missing or wrong.
    #[error("invalid `{field}`: {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// The payload is not what the provider sends.
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error(transparent)]
    Signature(SignatureError),
    /// Facebook's subscription handshake did not give the configured token.
    #[error("{0}")]
    VerifyToken(&'static str),
    #[error("no enabled integration matches this webhook")]
    UnknownIntegration,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<JsonError> for WebhookError {
    fn from(error: JsonError) -> Self {
        Self::InvalidBody(error.to_string())
    }
}
