//! Events: appending with the next sequence number of the account, and reading them back — as
//! one user following some channels sees them, or all of them (the control API).

use diesel::backend::Backend;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, HasSqlType, Text};

use super::schema::{account_sequences, events};
use super::{DbConnection, StoreError};
use crate::channel::Channel;
use crate::ids::{AccountId, UserId};

/// An event about to be stored.
pub struct NewEvent<'a> {
    pub account: &'a AccountId,
    pub user: Option<&'a UserId>,
    /// When set, only the sessions following this channel receive it.
    pub channel: Option<&'a Channel>,
    pub event: &'a str,
    /// JSON text.
    pub data: &'a str,
}

/// An event as stored.
#[derive(Debug, Clone, Queryable)]
pub struct StoredEvent {
    pub account_id: String,
    pub seq: i64,
    pub user_id: Option<String>,
    pub event: String,
    pub data: String,
    pub created_at: i64,
    pub channel: Option<String>,
}

/// Whose view of the account's events a read takes: a user's, following some channels.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    pub user: &'a UserId,
    /// Channel events are read for these channels only.
    pub channels: &'a [Channel],
    /// Whether events published to no channel are read too (not for one channel's history).
    pub unchanneled: bool,
}

/// Most rows in one multi-row insert: SQLite binds at most 32,766 parameters in one statement
/// (999 before 3.32), and an event row binds six.
pub const INSERT_CHUNK: usize = 150;

/// Takes the account's next sequence number. Call inside [`super::write`] for the account, whose
/// row lock makes the numbers gap-free and strictly increasing.
pub fn next_seq(conn: &mut DbConnection, account: &AccountId) -> Result<u64, StoreError> {
    take_seqs(conn, account, 1)
}

/// Takes the account's next `n` sequence numbers in one statement and returns the first (the
/// others follow it). Call inside [`super::write`] for the account, as [`next_seq`].
pub fn take_seqs(conn: &mut DbConnection, account: &AccountId, n: u64) -> Result<u64, StoreError> {
    let last: i64 = TakeSeq {
        account: account.as_str(),
        n: n as i64,
    }
    .get_result(conn)?;
    Ok(last as u64 + 1 - n)
}

/// `UPDATE account_sequences SET last_seq = last_seq + ? WHERE account_id = ? RETURNING
/// last_seq`, as a statement of its own. Diesel never keeps the statements of its `update`
/// builder prepared (their SQL varies with the changeset), so written with it this was parsed
/// and prepared afresh for every event — a tenth of the publish path. This one is prepared once
/// per connection and kept.
struct TakeSeq<'a> {
    account: &'a str,
    n: i64,
}

impl QueryId for TakeSeq<'_> {
    type QueryId = TakeSeq<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<DB> QueryFragment<DB> for TakeSeq<'_>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<BigInt>,
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE account_sequences SET last_seq = last_seq + ");
        out.push_bind_param::<BigInt, i64>(&self.n)?;
        out.push_sql(" WHERE account_id = ");
        out.push_bind_param::<Text, str>(self.account)?;
        out.push_sql(" RETURNING last_seq");
        Ok(())
    }
}

impl Query for TakeSeq<'_> {
    type SqlType = BigInt;
}

impl<Conn> RunQueryDsl<Conn> for TakeSeq<'_> {}

/// Stores the event under the account's next sequence number and returns that number. Call
/// inside [`super::write`] for the event's account.
pub fn append(conn: &mut DbConnection, new: &NewEvent<'_>) -> Result<u64, StoreError> {
    Ok(append_many(conn, std::slice::from_ref(new))?[0])
}

/// Stores the events, each under its account's next sequence number in the order given, and
/// returns their numbers in that order: one sequence step per account and one insert per
/// [`INSERT_CHUNK`] events, however many events. Call inside [`super::write_accounts`] for
/// every account among them.
pub fn append_many(conn: &mut DbConnection, new: &[NewEvent<'_>]) -> Result<Vec<u64>, StoreError> {
    let mut counts: Vec<(&AccountId, u64)> = Vec::new();
    for event in new {
        match counts.iter_mut().find(|(a, _)| *a == event.account) {
            Some((_, n)) => *n += 1,
            None => counts.push((event.account, 1)),
        }
    }
    let mut next: Vec<(&AccountId, u64)> = Vec::with_capacity(counts.len());
    for (account, n) in counts {
        next.push((account, take_seqs(conn, account, n)?));
    }
    let seqs: Vec<u64> = new
        .iter()
        .map(|event| {
            let (_, seq) = next
                .iter_mut()
                .find(|(a, _)| *a == event.account)
                .expect("every account was counted");
            *seq += 1;
            *seq - 1
        })
        .collect();
    let now = super::now_ms();
    for (events, seqs) in new.chunks(INSERT_CHUNK).zip(seqs.chunks(INSERT_CHUNK)) {
        let rows: Vec<_> = events
            .iter()
            .zip(seqs)
            .map(|(e, seq)| {
                (
                    events::account_id.eq(e.account.as_str()),
                    events::seq.eq(*seq as i64),
                    events::user_id.eq(e.user.map(UserId::as_str)),
                    events::event.eq(e.event),
                    events::data.eq(e.data),
                    events::created_at.eq(now),
                    events::channel.eq(e.channel.map(Channel::as_str)),
                )
            })
            .collect();
        let insert = diesel::insert_into(events::table).values(rows);
        // Diesel's multi-backend connection cannot batch inserts; each backend can.
        match conn {
            DbConnection::Postgres(c) => insert.execute(c)?,
            DbConnection::Sqlite(c) => insert.execute(c)?,
        };
    }
    Ok(seqs)
}

/// The account's last sequence number; 0 before its first event.
pub fn current_seq(conn: &mut DbConnection, account: &AccountId) -> Result<u64, StoreError> {
    let seq = account_sequences::table
        .filter(account_sequences::account_id.eq(account.as_str()))
        .select(account_sequences::last_seq)
        .first::<i64>(conn)
        .optional()?;
    Ok(seq.unwrap_or(0) as u64)
}

/// Accounts whose heads one query reads.
const HEADS_PER_QUERY: usize = 500;

/// The last sequence number of each of `accounts` that has stored any event.
pub fn heads(
    conn: &mut DbConnection,
    accounts: &[AccountId],
) -> Result<Vec<(AccountId, u64)>, StoreError> {
    let mut heads = Vec::with_capacity(accounts.len());
    for chunk in accounts.chunks(HEADS_PER_QUERY) {
        let ids: Vec<&str> = chunk.iter().map(AccountId::as_str).collect();
        let rows: Vec<(String, i64)> = account_sequences::table
            .filter(account_sequences::account_id.eq_any(ids))
            .select((account_sequences::account_id, account_sequences::last_seq))
            .load(conn)?;
        heads.extend(
            rows.into_iter()
                .filter_map(|(id, seq)| Some((AccountId::new(&id).ok()?, seq as u64))),
        );
    }
    Ok(heads)
}

/// Up to `limit` of the account's events after `after`, in sequence order.
pub fn after(
    conn: &mut DbConnection,
    account: &AccountId,
    after: u64,
    limit: i64,
) -> Result<Vec<StoredEvent>, StoreError> {
    Ok(events::table
        .filter(events::account_id.eq(account.as_str()))
        .filter(events::seq.gt(after as i64))
        .order(events::seq.asc())
        .limit(limit)
        .load(conn)?)
}

type DbBackend = <DbConnection as Connection>::Backend;

/// The account's events after `after` (up to `up_to`) that `reader` may see: the account's, and
/// those addressed to them, of the channels they follow; in sequence order.
fn visible_query<'a>(
    account: &'a AccountId,
    reader: Reader<'a>,
    after: u64,
    up_to: Option<u64>,
) -> events::BoxedQuery<'a, DbBackend> {
    let mut query = events::table
        .filter(events::account_id.eq(account.as_str()))
        .filter(events::seq.gt(after as i64))
        .filter(
            events::user_id
                .is_null()
                .or(events::user_id.eq(reader.user.as_str())),
        )
        .order(events::seq.asc())
        .into_boxed();
    let names: Vec<&str> = reader.channels.iter().map(Channel::as_str).collect();
    query = match (reader.unchanneled, names.is_empty()) {
        (true, true) => query.filter(events::channel.is_null()),
        (true, false) => query.filter(events::channel.is_null().or(events::channel.eq_any(names))),
        (false, _) => query.filter(events::channel.eq_any(names)),
    };
    if let Some(up_to) = up_to {
        query = query.filter(events::seq.le(up_to as i64));
    }
    query
}

/// The events after `after`, up to `up_to`, that `reader` may see (the account's, those
/// addressed to them, those of the channels they follow), in sequence order; at most `limit`.
pub fn visible(
    conn: &mut DbConnection,
    account: &AccountId,
    reader: Reader<'_>,
    after: u64,
    up_to: Option<u64>,
    limit: i64,
) -> Result<Vec<StoredEvent>, StoreError> {
    Ok(visible_query(account, reader, after, up_to)
        .limit(limit)
        .load(conn)?)
}

diesel::define_sql_function! {
    /// The bytes of a text (PostgreSQL; SQLite since 3.43, and ours is bundled).
    fn octet_length(text: Text) -> Integer;
}

/// A page of a user's events, read for a replay.
pub struct Page {
    pub rows: Vec<StoredEvent>,
    /// Every event the user may see up to here is in `rows` (or before them).
    pub covered: u64,
    /// The account's oldest event still kept, when it has any.
    pub oldest: Option<u64>,
}

/// The events after `after`, up to `up_to`, that `reader` may see: at most `max_rows`, and only
/// as many as fit in `max_bytes` of data (but at least one). Their sizes are read first, so that
/// a replay never holds more than that in memory, however large the events.
pub fn page(
    conn: &mut DbConnection,
    account: &AccountId,
    reader: Reader<'_>,
    (after, up_to): (u64, u64),
    max_rows: i64,
    max_bytes: usize,
) -> Result<Page, StoreError> {
    let sizes: Vec<(i64, i32)> = visible_query(account, reader, after, Some(up_to))
        .select((events::seq, octet_length(events::data)))
        .limit(max_rows)
        .load(conn)?;
    let (mut bytes, mut fitting) = (0, 0);
    for (_, size) in &sizes {
        bytes += (*size).max(0) as usize;
        if fitting > 0 && bytes > max_bytes {
            break;
        }
        fitting += 1;
    }
    let complete = fitting == sizes.len() && (sizes.len() as i64) < max_rows;
    let covered = match fitting.checked_sub(1).map(|last| sizes[last].0 as u64) {
        Some(last) if !complete => last,
        _ => up_to,
    };
    let rows = match fitting {
        0 => Vec::new(),
        n => visible(conn, account, reader, after, Some(covered), n as i64)?,
    };
    let oldest: Option<i64> = events::table
        .filter(events::account_id.eq(account.as_str()))
        .select(diesel::dsl::min(events::seq))
        .first(conn)?;
    Ok(Page {
        rows,
        covered,
        oldest: oldest.map(|seq| seq as u64),
    })
}

/// Where the account's history stands: (oldest event still kept, last sequence number). With
/// nothing kept, the oldest is `last + 1`.
pub fn history(conn: &mut DbConnection, account: &AccountId) -> Result<(u64, u64), StoreError> {
    let last = current_seq(conn, account)?;
    let oldest: Option<i64> = events::table
        .filter(events::account_id.eq(account.as_str()))
        .select(diesel::dsl::min(events::seq))
        .first(conn)?;
    Ok((oldest.map_or(last + 1, |s| s as u64), last))
}

/// Deletes events older than `before_ms`, and each account's events beyond its newest
/// `keep`; returns how many went.
pub fn prune(conn: &mut DbConnection, before_ms: i64, keep: u64) -> Result<usize, StoreError> {
    let mut deleted =
        diesel::delete(events::table.filter(events::created_at.lt(before_ms))).execute(conn)?;
    let accounts: Vec<(String, i64)> = account_sequences::table
        .select((account_sequences::account_id, account_sequences::last_seq))
        .filter(account_sequences::last_seq.gt(keep as i64))
        .load(conn)?;
    for (account, last) in accounts {
        deleted += diesel::delete(
            events::table
                .filter(events::account_id.eq(&account))
                .filter(events::seq.le(last - keep as i64)),
        )
        .execute(conn)?;
    }
    Ok(deleted)
}
