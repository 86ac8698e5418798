//! Failed authentications per client address. Guessing tokens or API keys costs the guesser a
//! request each, and us a signature check each; past the allowance an address is answered 429
//! with `Retry-After` before any key work, until its allowance refills.
//!
//! The address is the TCP peer's: behind a reverse proxy, that is the proxy, so the allowance
//! should then be raised (or this be enforced at the proxy).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::error::ApiError;

/// How many failures pass between sweeps of addresses that have been quiet long enough.
const SWEEP_EVERY: u32 = 1024;

pub struct AuthFailures {
    allowance: RateLimiter<IpAddr, HashMapStateStore<IpAddr>, DefaultClock>,
    /// Addresses over their allowance, and until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    since_sweep: AtomicU32,
}

impl AuthFailures {
    pub fn new(per_minute: NonZeroU32) -> Self {
        Self {
            allowance: RateLimiter::hashmap(Quota::per_minute(per_minute)),
            blocked: Mutex::default(),
            since_sweep: AtomicU32::new(0),
        }
    }

    /// Before any token or key is looked at: refused while the client's address is blocked.
    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let Some(ip) = address(req) else {
            return Ok(());
        };
        let now = Instant::now();
        let mut blocked = self.blocked.lock().expect("not poisoned");
        match blocked.get(&ip) {
            Some(until) if *until > now => Err(ApiError::TooManyAuthFailures {
                retry_after: *until - now,
            }),
            Some(_) => {
                blocked.remove(&ip);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A token or key from the client did not verify.
    pub fn failed(&self, req: &HttpRequest) {
        if let Some(ip) = address(req) {
            self.failed_from(ip);
        }
    }

    /// A token from the client at `ip` did not verify (after its request, on its connection).
    pub fn failed_from(&self, ip: IpAddr) {
        if let Err(not_until) = self.allowance.check_key(&ip) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let until = Instant::now() + wait.max(Duration::from_secs(1));
            self.blocked.lock().expect("not poisoned").insert(ip, until);
            log::info!("authentication failures over the allowance from {ip}");
        }
        if self.since_sweep.fetch_add(1, Ordering::Relaxed) >= SWEEP_EVERY {
            self.since_sweep.store(0, Ordering::Relaxed);
            self.allowance.retain_recent();
            let now = Instant::now();
            self.blocked
                .lock()
                .expect("not poisoned")
                .retain(|_, until| *until > now);
        }
    }
}

fn address(req: &HttpRequest) -> Option<IpAddr> {
    req.peer_addr().map(|peer| peer.ip())
}
