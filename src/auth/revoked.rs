//! Users the application revoked: their tokens issued at or before the revocation (`iat`, and
//! every token without one) are refused wherever a token is verified — the handshakes, the REST
//! API, a session's `auth`. This is the node's copy; the revocation service keeps it in step
//! with the database, where revocations are stored.

use std::collections::HashMap;
use std::sync::RwLock;

use super::{Identity, TokenError};
use crate::ids::{AccountId, UserId};

/// When each revoked user was revoked (seconds since the Unix epoch). One entry per revoked
/// user, as stored: it grows with revocations, not with traffic.
#[derive(Default)]
pub struct Revoked {
    users: RwLock<HashMap<(AccountId, UserId), u64>>,
}

impl Revoked {
    /// Records a revocation; answers whether it is new or later than the one known (its
    /// sessions then have to close).
    pub fn record(&self, account: AccountId, user: UserId, at: u64) -> bool {
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        let known = users.entry((account, user)).or_insert(0);
        let later = at > *known;
        *known = (*known).max(at);
        later
    }

    /// Refuses a token its user's revocation covers.
    pub fn check(&self, identity: &Identity) -> Result<(), TokenError> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let key = (identity.account.clone(), identity.user.clone());
        match (users.get(&key), identity.issued_at) {
            (Some(&at), Some(issued)) if issued <= at => Err(TokenError::Revoked),
            (Some(_), None) => Err(TokenError::Revoked),
            _ => Ok(()),
        }
    }
}
