//! The token's lifetime on a live connection. Connections last for days, so the token checked at
//! the handshake must not keep working after it expires: the session warns the client shortly
//! before (`token-expiring`), takes a fresh token in place (`auth`) when it names the same
//! account and user, and closes with 4002 when none came in time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::{AsyncContext, SpawnHandle};
use actix_web_actors::ws;
use serde_json::Value;

use super::Session;
use crate::config::Secret;
use crate::protocol::{Close, ServerFrame};

/// The timers of the current token.
#[derive(Default)]
pub(super) struct Lifetime {
    warn: Option<SpawnHandle>,
    expire: Option<SpawnHandle>,
}

/// From now until `unix_seconds` (zero when it has passed).
fn until(unix_seconds: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(unix_seconds).saturating_sub(now)
}

impl Session {
    /// Sets the warning and the expiry for the current token, replacing those of an earlier one.
    pub(super) fn schedule_expiry(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        for timer in [self.lifetime.warn.take(), self.lifetime.expire.take()]
            .into_iter()
            .flatten()
        {
            ctx.cancel_future(timer);
        }
        let expires_at = self.identity.expires_at;
        // The handshake accepted the token within the leeway; so does the live session.
        let left = until(expires_at) + self.shared.tokens.leeway;
        let warn_in = left.saturating_sub(self.shared.tokens.refresh_lead);
        self.lifetime.warn = Some(ctx.run_later(warn_in, move |session, ctx| {
            session.write(ctx, ServerFrame::TokenExpiring { expires_at }.to_text());
        }));
        self.lifetime.expire = Some(ctx.run_later(left, |session, ctx| {
            session.close(ctx, Close::TokenExpired);
        }));
    }

    /// An `auth` frame: the session goes on under the new token, or closes.
    pub(super) fn on_auth(
        &mut self,
        token: &Secret,
        reference: Option<Value>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let (code, message) = match self.shared.tokens.verifier.verify(token.expose()) {
            Err(e) => (e.code(), e.to_string()),
            Ok(identity)
                if identity.account != self.identity.account
                    || identity.user != self.identity.user =>
            {
                (
                    "token-mismatch",
                    "the new token names another account or user; a session keeps its identity"
                        .to_owned(),
                )
            }
            Ok(identity) => {
                self.identity.expires_at = identity.expires_at;
                self.schedule_expiry(ctx);
                let answer = ServerFrame::Authenticated {
                    reference,
                    expires_at: identity.expires_at,
                };
                return self.write(ctx, answer.to_text());
            }
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
            retry_after_ms: None,
        };
        self.write(ctx, error.to_text());
        self.close(ctx, Close::TokenRefused);
    }
}
