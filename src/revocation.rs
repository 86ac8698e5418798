//! Revoked users on every node: the revocations stored in the database, copied into this node's
//! [`Revoked`] (which the authenticator consults for every token) when the server starts and
//! again every [`REFRESH`], and the live sessions of a user another node revoked closed here
//! (4005) as soon as this node reads it. The control API revokes on its own node at once.
//!
//! Services layer: uses `store`, `auth` and the broker's messages.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::actors::broker::{Broker, Revoke};
use crate::auth::revoked::Revoked;
use crate::ids::{AccountId, UserId};
use crate::metrics;
use crate::store::revocations::{self, Revocation};
use crate::store::{Store, StoreError};

/// How often each node reads the revocations recorded since it last looked: how long a
/// revocation made on another node may take to close this node's sessions and refuse its tokens.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Rows recorded this long before the newest one seen are read again: another node's clock may
/// be behind this one's, and reading a row twice changes nothing.
const OVERLAP_MS: i64 = 10_000;
/// Rows one read takes; a fuller backlog is read page after page.
const PAGE: i64 = 10_000;

pub struct Revoker {
    store: Store,
    broker: Addr<Broker>,
    revoked: Arc<Revoked>,
    /// The newest `recorded_at` read.
    newest: i64,
    reading: bool,
}

impl Revoker {
    /// Reads every stored revocation into `revoked` — before the node serves anyone, so a token
    /// revoked before a restart stays refused — then starts the refresher.
    pub async fn start(
        store: Store,
        broker: Addr<Broker>,
        revoked: Arc<Revoked>,
    ) -> Result<Addr<Self>, StoreError> {
        let mut newest = 0;
        loop {
            let rows = store
                .run(move |conn| revocations::recorded_after(conn, newest, PAGE))
                .await?;
            let full = rows.len() as i64 == PAGE;
            newest = apply(&revoked, rows, None).unwrap_or(newest);
            if !full {
                break;
            }
        }
        Ok(Self {
            store,
            broker,
            revoked,
            newest,
            reading: false,
        }
        .start())
    }

    fn refresh(&mut self, ctx: &mut Context<Self>) {
        if self.reading {
            return;
        }
        self.reading = true;
        let store = self.store.clone();
        let after = self.newest - OVERLAP_MS;
        let read = async move {
            store
                .run(move |conn| revocations::recorded_after(conn, after, PAGE))
                .await
        };
        ctx.spawn(read.into_actor(self).map(|rows, revoker, ctx| {
            revoker.reading = false;
            match rows {
                Ok(rows) => {
                    let full = rows.len() as i64 == PAGE;
                    let newest = apply(&revoker.revoked, rows, Some(&revoker.broker));
                    revoker.newest = newest.unwrap_or(revoker.newest).max(revoker.newest);
                    if full {
                        // A backlog past the overlap: read on from where this page ended.
                        revoker.newest += OVERLAP_MS;
                        revoker.refresh(ctx);
                    }
                }
                Err(e) => {
                    log::warn!("reading revocations failed: {e}");
                    metrics::database_error();
                }
            }
        }));
    }
}

/// Records `rows` in `revoked`; with `broker`, closes the live sessions of each user whose
/// revocation is new here. Answers the newest `recorded_at` among them.
fn apply(revoked: &Revoked, rows: Vec<Revocation>, broker: Option<&Addr<Broker>>) -> Option<i64> {
    let mut newest = None;
    for row in rows {
        newest = Some(row.recorded_at);
        let (Ok(account), Ok(user)) = (AccountId::new(&row.account_id), UserId::new(&row.user_id))
        else {
            continue;
        };
        let at = row.revoked_at.max(0) as u64;
        if revoked.record(account.clone(), user.clone(), at) {
            if let Some(broker) = broker {
                broker.do_send(Revoke::user(account, user));
            }
        }
    }
    newest
}

impl Actor for Revoker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(REFRESH, Self::refresh);
    }
}
