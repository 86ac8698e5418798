//! Which new Engine.IO connections are let in. Opening one takes no credential — the token comes
//! with the CONNECT that follows — so until a connection has a session, it is one of a bounded
//! number: so many per client address, so many in all. Each holds a [`Slot`] until it connects a
//! session or is gone.
//!
//! The address is the TCP peer's: behind a reverse proxy, that is the proxy (as for the
//! failed-authentication allowance). Used by the request handlers; uses nothing of the engine.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::Handshakes;

/// Why a new connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crowded {
    /// Its address has as many unauthenticated connections as allowed.
    Address,
    /// The server has as many unauthenticated connections as allowed.
    Server,
}

pub struct Admission {
    limits: Handshakes,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Only addresses with a connection counted (none at zero).
    by_address: HashMap<IpAddr, usize>,
}

impl Admission {
    pub fn new(limits: Handshakes) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::default(),
        })
    }

    pub fn limits(&self) -> &Handshakes {
        &self.limits
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // Each update is one step: a panic elsewhere leaves the counts consistent.
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot for a new connection from `peer`, if its address and the server have room.
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Slot, Crowded> {
        let mut counts = self.counts();
        if counts.total >= self.limits.max {
            return Err(Crowded::Server);
        }
        if let Some(ip) = peer {
            let count = counts.by_address.entry(ip).or_default();
            if *count >= self.limits.max_per_address {
                return Err(Crowded::Address);
            }
            *count += 1;
        }
        counts.total += 1;
        Ok(Slot {
            admission: self.clone(),
            peer,
        })
    }
}

/// One unauthenticated connection's place; given back when dropped.
pub struct Slot {
    admission: Arc<Admission>,
    peer: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(ip) = self.peer {
            if let Some(count) = counts.by_address.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    counts.by_address.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slots_are_bounded_per_address_and_in_all_and_given_back() {
        let admission = Admission::new(Handshakes {
            timeout: Duration::from_secs(1),
            max_per_address: 2,
            max: 3,
        });
        let [a, b, c] = [1, 2, 3].map(|n| Some(IpAddr::from([10, 0, 0, n])));
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).err(), Some(Crowded::Address));
        let third = admission.admit(b).unwrap();
        assert_eq!(admission.admit(c).err(), Some(Crowded::Server));
        // Given back: room for the same address again, and for no other.
        drop(first);
        let _again = admission.admit(a).unwrap();
        assert_eq!(admission.admit(c).err(), Some(Crowded::Server));
        drop(third);
        assert!(admission.admit(c).is_ok());
        assert_eq!(admission.counts().by_address.len(), 1, "b is forgotten");
    }
}
