//! The token's lifetime on a live connection. Connections last for days, so the token checked at
//! the handshake must not keep working after it expires: the session warns the client shortly
//! before (`token-expiring`), takes a fresh token in place (`auth`) when it names the same
//! account and user (its `channels` claim then replaces the old one, and channels it no longer
//! allows are left), and closes with 4002 when none came in time.

use serde_json::Value;

use super::{Session, Wire};
use crate::auth::Identity;
use crate::config::Secret;
use crate::protocol::{Close, ServerFrame};

/// Why a fresh token for another account or user is refused (`token-mismatch`).
pub const TOKEN_MISMATCH: &str =
    "the new token names another account or user; a session keeps its identity";

/// Where the current token is in its life. Checked on every heartbeat tick rather than by timers
/// of its own: a session's timers are polled each time it wakes — for every event it delivers —
/// so two more per session cost every delivery. The warning and the close therefore come within
/// one heartbeat interval of when they are due.
#[derive(Default)]
pub(super) struct Lifetime {
    /// The welcome went out: nothing about the token may come before it.
    pub(super) welcomed: bool,
    /// `token-expiring` was sent for the current token.
    warned: bool,
}

impl<W: Wire> Session<W> {
    /// On each heartbeat tick (and once after the welcome): warns when the token is within the
    /// refresh lead of expiring, closes with 4002 once it has expired (past the JWT leeway, as
    /// at the handshake).
    pub(super) fn check_token(&mut self, ctx: &mut W::Context) {
        if !self.lifetime.welcomed || self.closing() {
            return;
        }
        let expires_at = self.identity.expires_at;
        let tokens = &self.shared.tokens;
        let now = crate::auth::unix_now();
        if now >= expires_at.saturating_add(tokens.leeway.as_secs()) {
            self.close(ctx, Close::TokenExpired);
        } else if !self.lifetime.warned
            && now.saturating_add(tokens.refresh_lead.as_secs()) >= expires_at
        {
            self.lifetime.warned = true;
            self.write(ctx, &ServerFrame::TokenExpiring { expires_at });
        }
    }

    /// A fresh token, verified: the session goes on under it, and tells its client
    /// (`authenticated`), if it names the session's account and user; otherwise nothing changes
    /// and the answer is `false`.
    pub(crate) fn refresh(
        &mut self,
        fresh: &Identity,
        reference: Option<Value>,
        ctx: &mut W::Context,
    ) -> bool {
        if fresh.account != self.identity.account || fresh.user != self.identity.user {
            return false;
        }
        self.identity = fresh.clone();
        self.lifetime.warned = false;
        let answer = ServerFrame::Authenticated {
            reference,
            expires_at: fresh.expires_at,
        };
        self.write(ctx, &answer);
        // The new token's grant is the one that holds from now on.
        self.narrow_channels(ctx);
        true
    }

    /// An `auth` frame: the session goes on under the new token, or closes. The token counts
    /// against the client's address like any other: from an address over its allowance of
    /// failures it is refused unverified.
    pub(super) fn on_auth(
        &mut self,
        token: &Secret,
        reference: Option<Value>,
        ctx: &mut W::Context,
    ) {
        let authenticator = &self.shared.tokens.authenticator;
        let (code, message, retry_after) = match authenticator.verify(self.peer, token.expose()) {
            Err(refused) => (refused.code(), refused.to_string(), refused.retry_after()),
            Ok(identity) => match self.refresh(&identity, reference.clone(), ctx) {
                true => return,
                false => ("token-mismatch", TOKEN_MISMATCH.to_owned(), None),
            },
        };
        log::info!(
            "token refused account={} user={} session={} code={code}",
            self.identity.account,
            self.identity.user,
            self.id
        );
        let error = ServerFrame::Error {
            code,
            message,
            reference,
            retry_after_ms: retry_after.map(|wait| wait.as_millis() as u64),
        };
        self.write(ctx, &error);
        self.close(ctx, Close::TokenRefused);
    }
}
