//! One round of the consumer: claim the accounts with the oldest publishable rows, publish their
//! rows in order through the publisher, delete what was published and move refused rows aside —
//! all in one transaction of the outbox database, so a node that dies mid-round leaves its rows
//! to the next (whose publishes of them are answered from their idempotency keys).
//!
//! Order. A row is publishable once no transaction older than its own is still running
//! (`xid < pg_snapshot_xmin(pg_current_snapshot())`): a row committed by a later transaction
//! never overtakes one an earlier transaction has yet to commit. Rows go out in (xid, id) order.
//! One account's rows are never split between two nodes: a node takes an account only with its
//! transaction-scoped advisory lock, skipping accounts another node holds (the account-level
//! `SKIP LOCKED`), and reads that account's rows after taking it.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Text};
use diesel::PgConnection;

use super::row::{Refusal, Row};
use crate::config::TableName;
use crate::publisher::{PublishError, Published, Publisher};

/// What a round did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Round {
    /// Rows published (or answered from their idempotency key) and deleted.
    pub published: usize,
    /// Rows moved aside.
    pub refused: usize,
    /// Rows claimed but left for a later round (the publisher refused or failed one of their
    /// account's).
    pub left: usize,
    /// Publishable rows were seen whose accounts other nodes hold.
    pub contended: bool,
}

/// The consumer's view of one outbox table.
pub struct Claimer {
    pub table: TableName,
    pub batch: i64,
    pub max_data: usize,
}

#[derive(QueryableByName)]
struct Account {
    #[diesel(sql_type = Text)]
    account_id: String,
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

/// A publish's answer, awaited on the consumer's thread.
pub type PublishFuture = Pin<Box<dyn Future<Output = Result<Published, PublishError>>>>;

/// What becomes of one claimed row.
enum Outcome<T> {
    /// Handed to the publisher (`T`: its answer's place, then its answer).
    Submitted(T),
    Refused(Refusal),
    /// An earlier row of its account could not be published: it waits for a later round.
    Left,
}

impl Claimer {
    /// Runs one round; `block_on` runs the publishes' answers to completion on this thread.
    pub fn round(
        &self,
        conn: &mut PgConnection,
        publisher: &Publisher,
        block_on: impl FnOnce(Vec<PublishFuture>) -> Vec<Result<Published, PublishError>>,
    ) -> QueryResult<Round> {
        let table = &self.table;
        conn.batch_execute("BEGIN")?;
        let result = (|| {
            // The accounts of the oldest publishable rows, oldest first.
            let oldest = diesel::sql_query(format!(
                "SELECT account_id FROM {table} \
                 WHERE xid < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY xid, id LIMIT $1"
            ))
            .bind::<BigInt, _>(self.batch)
            .load::<Account>(conn)?;
            let mut seen = HashSet::new();
            let candidates: Vec<String> = oldest
                .into_iter()
                .map(|a| a.account_id)
                .filter(|account| seen.insert(account.clone()))
                .collect();
            if candidates.is_empty() {
                return Ok(Round::default());
            }
            let taken: Vec<String> = diesel::sql_query(
                "SELECT account_id FROM unnest($1::text[]) WITH ORDINALITY AS a(account_id, n) \
                 WHERE pg_try_advisory_xact_lock(hashtextextended($2 || ':' || account_id, 0)) \
                 ORDER BY n",
            )
            .bind::<Array<Text>, _>(&candidates)
            .bind::<Text, _>(table.as_str())
            .load::<Account>(conn)?
            .into_iter()
            .map(|a| a.account_id)
            .collect();
            let contended = taken.len() < candidates.len();
            if taken.is_empty() {
                return Ok(Round {
                    contended,
                    ..Round::default()
                });
            }
            // Read after the locks are held: every row of these accounts that a node which held
            // them before has not deleted.
            let rows: Vec<Row> = diesel::sql_query(format!(
                "SELECT id, account_id, user_id, channel, event, \
                        CASE WHEN octet_length(d.text) > $3 THEN NULL ELSE d.text END AS data, \
                        octet_length(d.text)::bigint AS size, idempotency_key \
                 FROM {table}, LATERAL (SELECT data::text AS text) d \
                 WHERE account_id = ANY($1) \
                   AND xid < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY xid, id LIMIT $2"
            ))
            .bind::<Array<Text>, _>(&taken)
            .bind::<BigInt, _>(self.batch)
            // The size is checked here so that an oversized row's data is never read.
            .bind::<BigInt, _>(i64::try_from(self.max_data).unwrap_or(i64::MAX))
            .load(conn)?;
            let outcomes = self.publish(&rows, publisher, block_on);
            let round = self.settle(conn, &rows, outcomes)?;
            Ok(Round { contended, ..round })
        })();
        match result {
            Ok(round) => {
                conn.batch_execute("COMMIT")?;
                Ok(round)
            }
            Err(e) => {
                // The error to report is the first one; a failed rollback leaves a broken
                // connection, which the consumer replaces.
                let _ = conn.batch_execute("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Submits the rows in order (so the publisher stores them in order), then awaits every
    /// answer at once. The first row of an account that cannot be published leaves the rest of
    /// that account for a later round.
    fn publish(
        &self,
        rows: &[Row],
        publisher: &Publisher,
        block_on: impl FnOnce(Vec<PublishFuture>) -> Vec<Result<Published, PublishError>>,
    ) -> Vec<Outcome<Result<Published, PublishError>>> {
        let mut stopped: HashSet<&str> = HashSet::new();
        let mut futures: Vec<PublishFuture> = Vec::new();
        let mut submitted = Vec::with_capacity(rows.len());
        for row in rows {
            if stopped.contains(row.account_id.as_str()) {
                submitted.push(Outcome::Left);
                continue;
            }
            let outcome = match row.request(&self.table, self.max_data) {
                Err(refusal) => Outcome::Refused(refusal),
                Ok(request) => match publisher.submit(request) {
                    Ok(answer) => {
                        futures.push(Box::pin(answer));
                        Outcome::Submitted(futures.len() - 1)
                    }
                    Err(e) => {
                        log::warn!(
                            "outbox: row id={} account={} left for later: {e}",
                            row.id,
                            row.account_id
                        );
                        stopped.insert(&row.account_id);
                        Outcome::Left
                    }
                },
            };
            submitted.push(outcome);
        }
        let mut answers: Vec<Option<Result<Published, PublishError>>> =
            block_on(futures).into_iter().map(Some).collect();
        let mut failed: HashSet<&str> = HashSet::new();
        submitted
            .into_iter()
            .zip(rows)
            .map(|(outcome, row)| {
                if failed.contains(row.account_id.as_str()) {
                    return Outcome::Left;
                }
                match outcome {
                    Outcome::Submitted(i) => match answers.get_mut(i).and_then(Option::take) {
                        Some(Ok(published)) => Outcome::Submitted(Ok(published)),
                        Some(Err(e)) => {
                            log::warn!(
                                "outbox: row id={} account={} left for later: {e}",
                                row.id,
                                row.account_id
                            );
                            failed.insert(&row.account_id);
                            Outcome::Left
                        }
                        None => Outcome::Left,
                    },
                    Outcome::Refused(refusal) => Outcome::Refused(refusal),
                    Outcome::Left => Outcome::Left,
                }
            })
            .collect()
    }

    /// Deletes the published rows and moves the refused ones aside, with their errors.
    fn settle(
        &self,
        conn: &mut PgConnection,
        rows: &[Row],
        outcomes: Vec<Outcome<Result<Published, PublishError>>>,
    ) -> QueryResult<Round> {
        let table = &self.table;
        let mut done = Vec::new();
        let (mut refused, mut errors) = (Vec::new(), Vec::new());
        let mut left = 0;
        for (row, outcome) in rows.iter().zip(outcomes) {
            match outcome {
                Outcome::Submitted(_) => done.push(row.id),
                Outcome::Refused(refusal) => {
                    log::warn!(
                        "outbox: row id={} account={} refused, moved to {table}_refused: {refusal}",
                        row.id,
                        row.account_id
                    );
                    refused.push(row.id);
                    errors.push(refusal.to_string());
                }
                Outcome::Left => left += 1,
            }
        }
        if !done.is_empty() {
            diesel::sql_query(format!("DELETE FROM {table} WHERE id = ANY($1)"))
                .bind::<Array<BigInt>, _>(&done)
                .execute(conn)?;
        }
        if !refused.is_empty() {
            diesel::sql_query(format!(
                "WITH refusal AS ( \
                   SELECT * FROM unnest($1::bigint[], $2::text[]) AS r(id, error)), \
                 moved AS ( \
                   DELETE FROM {table} t USING refusal r WHERE t.id = r.id \
                   RETURNING t.id, t.xid, t.account_id, t.user_id, t.channel, t.event, t.data, \
                             t.idempotency_key, t.created_at, r.error) \
                 INSERT INTO {table}_refused \
                   (id, xid, account_id, user_id, channel, event, data, idempotency_key, \
                    created_at, error) \
                 SELECT * FROM moved"
            ))
            .bind::<Array<BigInt>, _>(&refused)
            .bind::<Array<Text>, _>(&errors)
            .execute(conn)?;
        }
        Ok(Round {
            published: done.len(),
            refused: refused.len(),
            left,
            contended: false,
        })
    }

    /// Whether committed rows wait behind an older transaction that is still running (they
    /// become publishable when it ends, which sends no notification).
    pub fn held_back(&self, conn: &mut PgConnection) -> QueryResult<bool> {
        let table = &self.table;
        diesel::sql_query(format!(
            "SELECT EXISTS (SELECT 1 FROM {table} \
               WHERE xid >= pg_snapshot_xmin(pg_current_snapshot())) AS exists"
        ))
        .get_result::<Exists>(conn)
        .map(|e| e.exists)
    }
}
