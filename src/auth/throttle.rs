//! Failed authentications per client address, and the one way a credential from a client is
//! checked ([`Authenticator`]). Guessing tokens or API keys costs the guesser a try each, and us
//! a signature check each; past the allowance an address is refused before any key work, until
//! its allowance refills — whichever way the token came: an HTTP request, a WebSocket handshake,
//! a Socket.IO CONNECT on either transport, or an `auth` frame on a live session.
//!
//! The address is the TCP peer's: behind a reverse proxy, that is the proxy, so the allowance
//! should then be raised (or this be enforced at the proxy). Used by the HTTP extractors, the
//! Socket.IO handlers and the sessions; uses only [`Verifier`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use super::{Identity, TokenError, Verifier};
use crate::config::JwtConfig;

/// How many failures pass between sweeps of addresses that have been quiet long enough.
const SWEEP_EVERY: u32 = 1024;

/// Why a client's credential was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Its address is over its allowance of failures: nothing was verified.
    #[error("too many failed authentications from this address; retry after {} s", whole_seconds(*.retry_after))]
    TooManyFailures { retry_after: Duration },
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl Refused {
    /// The stable, documented code clients can branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooManyFailures { .. } => "too-many-auth-failures",
            Self::Token(e) => e.code(),
        }
    }

    /// When the address may try again, for a refusal of its address.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::TooManyFailures { retry_after } => Some(*retry_after),
            Self::Token(_) => None,
        }
    }
}

/// A wait in whole seconds, rounded up (as `Retry-After` gives it), at least one.
pub fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The client's address, as the allowance counts it.
pub fn peer(req: &HttpRequest) -> Option<IpAddr> {
    req.peer_addr().map(|peer| peer.ip())
}

/// Verifies what clients present, counting what fails against their address. Every token from
/// a client is verified by [`Authenticator::verify`], so none escapes the allowance.
pub struct Authenticator {
    verifier: Verifier,
    failures: AuthFailures,
    /// Users revoked, whose earlier tokens are refused.
    revoked: std::sync::Arc<super::revoked::Revoked>,
}

impl Authenticator {
    pub fn new(jwt: &JwtConfig, failures_per_minute: NonZeroU32) -> Self {
        Self {
            verifier: Verifier::new(jwt),
            failures: AuthFailures::new(failures_per_minute),
            revoked: Default::default(),
        }
    }

    /// The revoked users this authenticator refuses, for the service that keeps them current.
    pub fn revoked(&self) -> &std::sync::Arc<super::revoked::Revoked> {
        &self.revoked
    }

    /// A token from the client at `peer`: refused unverified while the address is over its
    /// allowance; a token that does not verify counts against it.
    pub fn verify(&self, peer: Option<IpAddr>, token: &str) -> Result<Identity, Refused> {
        self.check(peer)?;
        let identity = self.verifier.verify(token).map_err(|e| {
            self.failed(peer);
            Refused::Token(e)
        })?;
        // A revoked token is the application's own, not a guess: it does not count as a failure.
        self.revoked.check(&identity).map_err(Refused::Token)?;
        Ok(identity)
    }

    /// A credential other than a token (the metrics token) that did not match counts against
    /// the address as a token would.
    pub fn failed(&self, peer: Option<IpAddr>) {
        if let Some(ip) = peer {
            self.failures.failed(ip);
        }
    }

    /// Before any work on what the client at `peer` presents: refused while its address is over
    /// its allowance.
    pub fn check(&self, peer: Option<IpAddr>) -> Result<(), Refused> {
        match peer {
            Some(ip) => self.failures.check(ip),
            None => Ok(()),
        }
    }
}

struct AuthFailures {
    allowance: RateLimiter<IpAddr, HashMapStateStore<IpAddr>, DefaultClock>,
    /// Addresses over their allowance, and until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    since_sweep: AtomicU32,
}

impl AuthFailures {
    fn new(per_minute: NonZeroU32) -> Self {
        Self {
            allowance: RateLimiter::hashmap(Quota::per_minute(per_minute)),
            blocked: Mutex::default(),
            since_sweep: AtomicU32::new(0),
        }
    }

    fn blocked(&self) -> MutexGuard<'_, HashMap<IpAddr, Instant>> {
        // A panic while holding it leaves only a map of deadlines behind: carry on with it.
        self.blocked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let now = Instant::now();
        let mut blocked = self.blocked();
        match blocked.get(&ip) {
            Some(until) if *until > now => Err(Refused::TooManyFailures {
                retry_after: *until - now,
            }),
            Some(_) => {
                blocked.remove(&ip);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn failed(&self, ip: IpAddr) {
        if let Err(not_until) = self.allowance.check_key(&ip) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let until = Instant::now() + wait.max(Duration::from_secs(1));
            self.blocked().insert(ip, until);
            log::info!("authentication failures over the allowance from {ip}");
        }
        if self.since_sweep.fetch_add(1, Ordering::Relaxed) >= SWEEP_EVERY {
            self.since_sweep.store(0, Ordering::Relaxed);
            self.allowance.retain_recent();
            let now = Instant::now();
            self.blocked().retain(|_, until| *until > now);
        }
    }
}
