//! The PostgreSQL outbox (docs/outbox.md): rows an application inserts in its own transactions
//! are published once each, in (transaction, insert) order, and reach live clients; rolled-back
//! rows never; bad rows are moved aside without holding up the rows behind them; a node killed
//! mid-batch, and three nodes sharing a table, lose and duplicate nothing.
//!
//! The outbox lives in the tests' PostgreSQL database (Switchboard's own), a table per test, so
//! that no other test's server consumes it.

use std::collections::HashMap;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use serde_json::{json, Value};

use switchboard::config::{OutboxConfig, Secret, TableName};

use crate::common::process::{Process, Switchboard};
use crate::common::{config, eventually, token, unique, Db, TestServer, WAIT};

/// How long a test waits for rows to be published.
const PUBLISHED_WITHIN: Duration = Duration::from_secs(60);

/// The application's side: a connection to the database holding the outbox table.
struct App {
    conn: PgConnection,
    url: String,
    table: String,
}

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    event: String,
    #[diesel(sql_type = Text)]
    data: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Refused {
    #[diesel(sql_type = Text)]
    event: String,
    #[diesel(sql_type = Nullable<Text>)]
    channel: Option<String>,
    #[diesel(sql_type = Text)]
    error: String,
}

impl App {
    /// A table name of this test's own (the tests share one database).
    fn new(db: &Db) -> Self {
        let table = unique("outbox").replace('-', "_");
        Self {
            conn: PgConnection::establish(db.url()).expect("connect to PostgreSQL"),
            url: db.url().to_owned(),
            table,
        }
    }

    /// Creates the table as an operator would, from the documented DDL.
    fn create_table(&mut self) {
        let ddl = switchboard::outbox::ddl::statements(&TableName::parse(&self.table).unwrap());
        self.conn.batch_execute(&ddl).expect("outbox DDL");
    }

    fn connection(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connect to PostgreSQL")
    }

    fn config(&self, db: &Db) -> switchboard::config::Config {
        let mut config = config(db);
        config.outbox = Some(OutboxConfig {
            url: Secret::new(self.url.clone()),
            table: TableName::parse(&self.table).unwrap(),
            poll_interval: Duration::from_secs(1),
            batch: 1000,
        });
        config
    }

    /// A `switchboard` process consuming this table; niced, so that its bursts of work leave
    /// the machine to the timing-sensitive tests running beside it.
    fn node(&self) -> (Process, crate::common::Api) {
        Switchboard::new()
            .under("nice", &["-n", "10"])
            .keys()
            .database(&self.url)
            .env("SWITCHBOARD_OUTBOX", "true")
            .env("SWITCHBOARD_OUTBOX_TABLE", &self.table)
            .env("SWITCHBOARD_OUTBOX_BATCH", "200")
            .serve()
    }

    async fn table_exists(&mut self) {
        let table = self.table.clone();
        let conn = &mut self.conn;
        eventually("the server creates the outbox table", WAIT, || {
            let found = diesel::sql_query(format!(
                "SELECT count(*) AS n FROM pg_tables WHERE tablename IN ('{table}', '{table}_refused')"
            ))
            .get_result::<Count>(conn)
            .unwrap()
            .n;
            std::future::ready(if found == 2 { Ok(()) } else { Err(found) })
        })
        .await;
    }

    fn insert(conn: &mut PgConnection, table: &str, account: &str, event: &str, data: &Value) {
        diesel::sql_query(format!(
            "INSERT INTO {table} (account_id, event, data) VALUES ($1, $2, $3::jsonb)"
        ))
        .bind::<Text, _>(account)
        .bind::<Text, _>(event)
        .bind::<Text, _>(data.to_string())
        .execute(conn)
        .expect("insert into the outbox");
    }

    fn left(&mut self) -> i64 {
        diesel::sql_query(format!("SELECT count(*) AS n FROM {}", self.table))
            .get_result::<Count>(&mut self.conn)
            .unwrap()
            .n
    }

    /// Waits until no row is left: a round deletes its rows once their publishes are answered,
    /// which may be just after their events are stored.
    async fn until_empty(&mut self) {
        eventually("the table emptied", WAIT, || {
            std::future::ready(match self.left() {
                0 => Ok(()),
                n => Err(n),
            })
        })
        .await;
    }

    /// The events stored for `account`, in sequence order.
    fn stored(conn: &mut PgConnection, account: &str) -> Vec<(i64, String, Value)> {
        diesel::sql_query("SELECT seq, event, data FROM events WHERE account_id = $1 ORDER BY seq")
            .bind::<Text, _>(account)
            .load::<Stored>(conn)
            .unwrap()
            .into_iter()
            .map(|s| (s.seq, s.event, serde_json::from_str(&s.data).unwrap()))
            .collect()
    }

    /// Waits until `account` has `n` stored events; fails on more.
    async fn until_stored(&mut self, account: &str, n: usize) -> Vec<(i64, String, Value)> {
        let conn = &mut self.conn;
        let stored = eventually("the rows are published", PUBLISHED_WITHIN, || {
            let stored = Self::stored(conn, account);
            std::future::ready(if stored.len() >= n {
                Ok(stored)
            } else {
                Err(stored.len())
            })
        })
        .await;
        assert_eq!(stored.len(), n, "published more than once: {stored:?}");
        stored
    }
}

/// Each (writer, i) once, and for every writer its `i`s in increasing order.
fn assert_once_in_writer_order(stored: &[(i64, String, Value)]) {
    let mut last: HashMap<u64, u64> = HashMap::new();
    for (seq, _, data) in stored {
        let (writer, i) = (
            data["writer"].as_u64().unwrap(),
            data["i"].as_u64().unwrap(),
        );
        if let Some(previous) = last.insert(writer, i) {
            assert!(
                i > previous,
                "seq {seq}: writer {writer}'s row {i} after its row {previous}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn a_committed_row_reaches_a_live_client_once_and_a_rolled_back_one_never() {
    let db = Db::postgres();
    let mut app = App::new(&db);
    let server = TestServer::start(app.config(&db));
    app.table_exists().await;
    let account = unique("outbox-commit");
    let (mut client, _) = server.connect(&token(&account, "alice")).await;

    let table = app.table.clone();
    app.conn
        .transaction::<(), diesel::result::Error, _>(|conn| {
            App::insert(conn, &table, &account, "rolled-back", &json!({"n": 0}));
            Err(diesel::result::Error::RollbackTransaction)
        })
        .unwrap_err();
    app.conn
        .transaction::<_, diesel::result::Error, _>(|conn| {
            App::insert(conn, &table, &account, "committed", &json!({"n": 1}));
            Ok(())
        })
        .unwrap();

    let (seq, event, data) = client.next_event().await;
    assert_eq!((event.as_str(), data), ("committed", json!({"n": 1})));
    // The row is deleted in the round that published it; the sentinel then shows nothing else
    // (a second copy, the rolled-back row) came.
    eventually("the published row is deleted", WAIT, || {
        std::future::ready(match app.left() {
            0 => Ok(()),
            n => Err(n),
        })
    })
    .await;
    let sentinel = server.sentinel(&account, None).await;
    assert_eq!(sentinel, seq + 1);
    client.expect_sentinel(sentinel).await;
    let stored = App::stored(&mut app.conn, &account);
    assert_eq!(stored.len(), 2, "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn concurrent_committers_of_one_account_arrive_in_transaction_order() {
    let db = Db::postgres();
    let mut app = App::new(&db);
    let server = TestServer::start(app.config(&db));
    app.table_exists().await;
    let account = unique("outbox-order");
    let (mut client, _) = server.connect(&token(&account, "alice")).await;
    let table = app.table.clone();

    // An older transaction still open holds back a younger one's committed row: publishing in
    // id order as rows commit would send "second" first.
    let mut older = app.connection();
    older.batch_execute("BEGIN").unwrap();
    App::insert(&mut older, &table, &account, "first", &json!({}));
    let mut younger = app.connection();
    App::insert(&mut younger, &table, &account, "second", &json!({}));
    // Past the poll interval: the consumer has looked at the table since "second" committed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(App::stored(&mut app.conn, &account).is_empty());
    older.batch_execute("COMMIT").unwrap();
    assert_eq!(client.next_event().await.1, "first");
    assert_eq!(client.next_event().await.1, "second");

    // Writers that serialize their transactions on the account (a lock taken first): the
    // rows arrive in the order the transactions committed, `n` counting commits.
    app.conn
        .batch_execute(&format!("CREATE SEQUENCE {table}_n"))
        .unwrap();
    const WRITERS: u64 = 6;
    const EACH: u64 = 20;
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (mut conn, table, account) = (app.connection(), table.clone(), account.clone());
            std::thread::spawn(move || {
                for i in 0..EACH {
                    conn.transaction::<_, diesel::result::Error, _>(|conn| {
                        conn.batch_execute("SELECT pg_advisory_xact_lock(4242)")?;
                        diesel::sql_query(format!(
                            "INSERT INTO {table} (account_id, event, data) VALUES ($1, 'n', \
                             jsonb_build_object('n', nextval('{table}_n'), 'writer', $2::bigint, \
                             'i', $3::bigint))"
                        ))
                        .bind::<Text, _>(&account)
                        .bind::<BigInt, _>(writer as i64)
                        .bind::<BigInt, _>(i as i64)
                        .execute(conn)?;
                        Ok(())
                    })
                    .expect("a writer's transaction");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    for n in 1..=WRITERS * EACH {
        let (_, event, data) = client.next_event().await;
        assert_eq!((event.as_str(), &data["n"]), ("n", &json!(n)), "{data}");
    }
    let stored = app
        .until_stored(&account, (2 + WRITERS * EACH) as usize)
        .await;
    assert_once_in_writer_order(&stored[2..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn a_bad_row_is_moved_aside_and_the_rows_behind_it_still_go() {
    let db = Db::postgres();
    let mut app = App::new(&db);
    app.create_table();
    let server = TestServer::start(app.config(&db));
    let account = unique("outbox-bad");
    let (mut client, _) = server.connect(&token(&account, "alice")).await;
    let table = app.table.clone();
    let too_large = "x".repeat(300 * 1024);
    app.conn
        .transaction::<_, diesel::result::Error, _>(|conn| {
            App::insert(conn, &table, &account, "good", &json!({"n": 1}));
            App::insert(conn, &table, &account, "bad name!", &json!({}));
            App::insert(conn, &table, &account, "good", &json!({"n": 2}));
            // A channel this client does not follow: published, and skipped by it.
            diesel::sql_query(format!(
                "INSERT INTO {table} (account_id, channel, event) VALUES ($1, 'order:7', 'chan')"
            ))
            .bind::<Text, _>(&account)
            .execute(conn)?;
            diesel::sql_query(format!(
                "INSERT INTO {table} (account_id, channel, event) VALUES ($1, 'lob by', 'chan')"
            ))
            .bind::<Text, _>(&account)
            .execute(conn)?;
            App::insert(conn, &table, &account, "large", &json!(too_large));
            App::insert(conn, &table, &"a".repeat(300), "no-account", &json!({}));
            App::insert(conn, &table, &account, "good", &json!({"n": 3}));
            Ok(())
        })
        .unwrap();
    for n in 1..=3 {
        let (_, event, data) = client.next_event().await;
        assert_eq!((event.as_str(), data), ("good", json!({"n": n})));
    }
    // Moved in the round that published the good rows, committed once their publishes are
    // answered.
    let conn = &mut app.conn;
    let refused: Vec<Refused> = eventually("the bad rows are moved aside", WAIT, || {
        let refused: Vec<Refused> = diesel::sql_query(format!(
            "SELECT event, channel, error FROM {table}_refused ORDER BY id"
        ))
        .load(conn)
        .unwrap();
        std::future::ready(if refused.len() == 4 {
            Ok(refused)
        } else {
            Err(refused.len())
        })
    })
    .await;
    let refused: Vec<_> = refused
        .iter()
        .map(|r| {
            (
                r.event.as_str(),
                r.channel.as_deref(),
                r.error.split(':').next().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        [
            ("bad name!", None, "event"),
            ("chan", Some("lob by"), "channel"),
            ("large", None, "data"),
            ("no-account", None, "account_id"),
        ]
    );
    app.until_empty().await;
    let sentinel = server.sentinel(&account, None).await;
    client.expect_sentinel(sentinel).await;
}

/// How many of a writer's `rows` go to account `k` of `accounts` (see [`write_rows`]).
fn rows_of(k: usize, rows: usize, accounts: usize) -> usize {
    (rows + accounts - 1 - k) / accounts
}

/// Rows for `accounts`, written by `writers` threads, each a run of transactions of `per_tx`
/// rows: `data` says which writer and which of its rows.
fn write_rows(app: &App, accounts: &[String], writers: u64, transactions: u64, per_tx: u64) {
    let threads: Vec<_> = (0..writers)
        .map(|writer| {
            let (mut conn, table, accounts) =
                (app.connection(), app.table.clone(), accounts.to_vec());
            std::thread::spawn(move || {
                for t in 0..transactions {
                    conn.transaction::<_, diesel::result::Error, _>(|conn| {
                        for r in 0..per_tx {
                            let i = t * per_tx + r;
                            let account = &accounts[(i as usize) % accounts.len()];
                            let data = json!({"writer": writer, "i": i});
                            App::insert(conn, &table, account, "row", &data);
                        }
                        Ok(())
                    })
                    .expect("a writer's transaction");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn a_node_killed_mid_batch_loses_and_duplicates_nothing() {
    let db = Db::postgres();
    let mut app = App::new(&db);
    app.create_table();
    let accounts: Vec<String> = (0..3).map(|_| unique("outbox-kill")).collect();
    // Written before any node runs, so the first node is mid-way through them when killed.
    const WRITERS: u64 = 2;
    const ROWS: u64 = 1000;
    write_rows(&app, &accounts, WRITERS, ROWS / 100, 100);
    let (mut first, _) = app.node();
    let conn = &mut app.conn;
    eventually(
        "the first node publishes some rows",
        PUBLISHED_WITHIN,
        || {
            let n = App::stored(conn, &accounts[0]).len();
            std::future::ready(if n > 0 { Ok(()) } else { Err(n) })
        },
    )
    .await;
    first.signal("KILL");
    first.exits_within(WAIT);
    let taken = App::stored(&mut app.conn, &accounts[0]).len();
    assert!(
        (taken as u64) < WRITERS * ROWS / 3,
        "killed after the last row: {taken}"
    );

    let (_second, _) = app.node();
    let mut total = 0;
    for (k, account) in accounts.iter().enumerate() {
        let n = WRITERS as usize * rows_of(k, ROWS as usize, accounts.len());
        let stored = app.until_stored(account, n).await;
        assert_once_in_writer_order(&stored);
        total += stored.len();
    }
    assert_eq!(total as u64, WRITERS * ROWS);
    app.until_empty().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(switchboard_postgres),
    ignore = "needs PostgreSQL: set SWITCHBOARD_TEST_DATABASE_URL"
)]
async fn three_nodes_consuming_one_table_publish_each_row_once_in_order() {
    let db = Db::postgres();
    let mut app = App::new(&db);
    app.create_table();
    let _nodes = [app.node(), app.node(), app.node()];
    let accounts: Vec<String> = (0..5).map(|_| unique("outbox-three")).collect();
    const WRITERS: u64 = 4;
    const ROWS: u64 = 250;
    write_rows(&app, &accounts, WRITERS, ROWS / 10, 10);
    let mut total = 0;
    for account in &accounts {
        let stored = app
            .until_stored(account, (WRITERS * ROWS) as usize / accounts.len())
            .await;
        assert_once_in_writer_order(&stored);
        total += stored.len();
    }
    assert_eq!(total as u64, WRITERS * ROWS);
    eventually("the table is emptied", WAIT, || {
        std::future::ready(match app.left() {
            0 => Ok(()),
            n => Err(n),
        })
    })
    .await;
}
