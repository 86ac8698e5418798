//! Events are persisted with sequence numbers that survive restarts and are shared by every
//! server process on one database.

use serde_json::json;

use std::os::unix::fs::PermissionsExt;

use crate::common::{token, unique, Db, TestServer};
use crate::on_each_backend;

on_each_backend! {
    async fn sequence_numbers_continue_after_a_restart(db) {
        let account = unique("restart");
        {
            let server = TestServer::on(&db);
            assert_eq!(server.publish(&account, None, "before", json!(1)).await, 1);
            assert_eq!(server.publish(&account, Some("alice"), "before", json!(2)).await, 2);
        }
        let server = TestServer::on(&db);
        let (mut client, welcome) = server.connect(&token(&account, "alice")).await;
        assert_eq!(welcome["seq"], 2);
        assert_eq!(server.publish(&account, None, "after", json!(3)).await, 3);
        assert_eq!(client.next_event().await, (3, "after".to_owned(), json!(3)));
    }

    async fn two_servers_on_one_database_share_one_sequence(db) {
        let account = unique("pair");
        let a = TestServer::on(&db);
        let b = TestServer::on(&db);
        let (mut client, _) = a.connect(&token(&account, "alice")).await;

        // Stored through the other process: no hand-off reaches this one's room, so it learns
        // of the event from the gap the next local event opens, and reads it from the database.
        assert_eq!(b.publish(&account, None, "via-b", json!("b")).await, 1);
        assert_eq!(a.publish(&account, None, "via-a", json!("a")).await, 2);
        assert_eq!(client.next_event().await, (1, "via-b".to_owned(), json!("b")));
        assert_eq!(client.next_event().await, (2, "via-a".to_owned(), json!("a")));
    }
}

#[tokio::test]
async fn a_new_sqlite_file_is_readable_by_its_owner_only() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    // A write, so that the write-ahead log has been written to as well.
    server.publish("acme", None, "stored", json!(1)).await;
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", db.url());
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{path} is readable by others");
    }
}
