//! Retention: events are kept for a configured age and count per account, then deleted by the
//! [`Pruner`], which runs on an interval. A client resuming (or long-polling) from before what is
//! kept is told so (`resume-failed`) rather than silently given a partial history.

use actix::prelude::*;

use crate::config::Retention;
use crate::store::{events, now_ms, publish_keys, Store, StoreError};

pub struct Pruner {
    store: Store,
    retention: Retention,
}

impl Pruner {
    pub fn new(store: Store, retention: Retention) -> Self {
        Self { store, retention }
    }

    fn prune(&mut self, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let before = now_ms() - self.retention.max_age.as_millis() as i64;
        let keep = self.retention.max_events;
        let keys_before = now_ms() - self.retention.idempotency_window.as_millis() as i64;
        let work = async move {
            store
                .run(move |conn| {
                    publish_keys::prune(conn, keys_before)?;
                    events::prune(conn, before, keep)
                })
                .await
        };
        ctx.spawn(work.into_actor(self).map(
            |result: Result<usize, StoreError>, _, _| match result {
                Ok(0) => {}
                Ok(n) => log::debug!("retention: deleted {n} event(s)"),
                Err(e) => log::error!("retention: {e}"),
            },
        ));
    }
}

impl Actor for Pruner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.prune(ctx);
        ctx.run_interval(self.retention.interval, Self::prune);
    }
}
