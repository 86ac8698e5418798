//! The conversations API and outbound replies: users read and answer their own account's
//! conversations only; messages are paged in the order they were stored, also those stored before
//! they were numbered; replies reach the application by signed, retried webhooks whose fate is
//! visible; integrations are managed with the server API key and never show their secrets.

use reqwest::Method;
use serde_json::{json, Value};

use diesel::connection::SimpleConnection;
use diesel::Connection;
use diesel_migrations::{FileBasedMigrations, MigrationHarness};

use crate::common::{now, sign, token, Db, Receiver, TestServer};
use crate::on_each_backend;

/// A generic integration for `account` and one inbound message from each of `contacts`; returns
/// the integration and the conversation ids, oldest activity first.
async fn inbox(
    server: &TestServer,
    account: &str,
    contacts: &[&str],
    outbound_url: Option<&str>,
) -> (Value, Vec<String>) {
    let created = server
        .integration(
            json!({"provider": "generic", "external_id": format!("src-{account}"),
                            "account_id": account, "outbound_url": outbound_url}),
        )
        .await;
    let mut ids = Vec::new();
    for (i, contact) in contacts.iter().enumerate() {
        let text = format!("hi from {contact}");
        let sent_at = now() * 1000 + i as u64;
        server
            .message_from(&created, contact, json!({"text": text, "sent_at": sent_at}))
            .await;
        ids.push(server.newest_conversation(account).await);
    }
    (created, ids)
}

#[tokio::test]
async fn conversations_are_listed_paginated_and_marked_read() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let (_, ids) = inbox(&server, "acme", &["c1", "c2", "c3"], None).await;
    let alice = token("acme", "alice");

    let (status, first) = server
        .as_user(&alice, Method::GET, "/api/v1/conversations?limit=2", None)
        .await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = first["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [ids[2].as_str(), ids[1].as_str()],
        "newest activity first"
    );
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = server
        .as_user(
            &alice,
            Method::GET,
            &format!("/api/v1/conversations?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(second["conversations"][0]["id"], ids[0].as_str());
    assert_eq!(second["next_cursor"], Value::Null);
    let (status, bad) = server
        .as_user(&alice, Method::GET, "/api/v1/conversations?limit=0", None)
        .await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("invalid-field"))
    );
    let (status, _) = server
        .admin(Method::GET, "/api/v1/conversations", None)
        .await;
    assert_eq!(status, 401, "the API key is not a user");

    let (mut tab, _) = server.connect(&alice).await;
    let (status, read) = server
        .as_user(
            &alice,
            Method::POST,
            &format!("/api/v1/conversations/{}/read", ids[0]),
            None,
        )
        .await;
    assert_eq!((status, &read["unread_count"]), (200, &json!(0)));
    let (_, event, conversation) = tab.next_event().await;
    assert_eq!(
        (event.as_str(), &conversation["unread_count"]),
        ("update-conversation", &json!(0))
    );
}

#[tokio::test]
async fn another_accounts_conversation_is_not_found_for_reads_and_writes() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let (_, acme_ids) = inbox(&server, "acme", &["c1"], None).await;
    inbox(&server, "globex", &["g1"], None).await;
    let (mut acme_tab, _) = server.connect(&token("acme", "alice")).await;
    let mallory = token("globex", "mallory");
    let id = &acme_ids[0];

    for (method, path, body) in [
        (Method::GET, format!("/api/v1/conversations/{id}"), None),
        (
            Method::GET,
            format!("/api/v1/conversations/{id}/messages"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{id}/messages"),
            Some(json!({"text": "injected"})),
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{id}/read"),
            None,
        ),
    ] {
        let (status, answer) = server.as_user(&mallory, method.clone(), &path, body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (404, Some("not-found")),
            "{method} {path}"
        );
        assert!(
            !answer.to_string().contains("hi from c1"),
            "no data leaks: {answer}"
        );
    }
    let (_, listed) = server
        .as_user(&mallory, Method::GET, "/api/v1/conversations", None)
        .await;
    assert_eq!(
        listed["conversations"].as_array().unwrap().len(),
        1,
        "only globex's own"
    );
    let sentinel = server.sentinel("acme", Some("alice")).await;
    acme_tab.expect_sentinel(sentinel).await;
    let (_, messages) = server
        .as_user(
            &token("acme", "alice"),
            Method::GET,
            &format!("/api/v1/conversations/{id}/messages"),
            None,
        )
        .await;
    assert_eq!(
        messages["messages"].as_array().unwrap().len(),
        1,
        "nothing was injected"
    );
}

#[tokio::test]
async fn replies_are_delivered_signed_and_retried() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    // The app's backend fails twice, then accepts.
    let receiver = Receiver::start(vec![500, 503, 200]);
    let (integration, ids) = inbox(&server, "acme", &["c1"], Some(&receiver.url)).await;
    let (mut tab, _) = server.connect(&token("acme", "alice")).await;
    let path = format!("/api/v1/conversations/{}/messages", ids[0]);

    let (status, reply) = server
        .as_user(
            &token("acme", "alice"),
            Method::POST,
            &path,
            Some(json!({"text": "On its way"})),
        )
        .await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(
        (
            reply["direction"].as_str(),
            reply["status"].as_str(),
            reply["sender_id"].as_str()
        ),
        (Some("outbound"), Some("pending"), Some("alice"))
    );
    let (_, event, shown) = tab.next_event().await;
    assert_eq!(
        (event.as_str(), &shown["id"]),
        ("new-message", &reply["id"])
    );
    tab.next_event().await; // update-conversation

    let requests = receiver.wait_for(3).await;
    let secret = integration["outbound_secret"].as_str().unwrap();
    for (headers, body) in &requests {
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        let ts: i64 = header("webhook-timestamp").parse().unwrap();
        assert_eq!(
            header("webhook-signature"),
            sign::standard(secret, &header("webhook-id"), ts, body)
        );
        let payload: Value = serde_json::from_str(body).unwrap();
        assert_eq!(payload["type"], "message.outbound");
        assert_eq!(payload["data"]["text"], "On its way");
        assert_eq!(payload["data"]["contact_id"], "c1");
    }
    let id = |(headers, _): &(actix_web::http::header::HeaderMap, String)| {
        headers.get("webhook-id").unwrap().clone()
    };
    assert!(
        requests.iter().all(|r| id(r) == id(&requests[0])),
        "retries keep the webhook-id"
    );

    let (_, event, status) = tab.next_event().await;
    assert_eq!(
        (event.as_str(), &status["status"], &status["message_id"]),
        ("message-status", &json!("forwarded"), &reply["id"])
    );
    let (_, deliveries) = server
        .admin(
            Method::GET,
            &format!(
                "/api/v1/integrations/{}/deliveries",
                integration["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(deliveries["deliveries"][0]["status"], "delivered");
    assert_eq!(deliveries["deliveries"][0]["attempts"], 3);
}

#[tokio::test]
async fn a_reply_that_cannot_be_delivered_is_marked_failed_visibly() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let receiver = Receiver::start(vec![500]);
    let (integration, ids) = inbox(&server, "acme", &["c1"], Some(&receiver.url)).await;
    let (mut tab, _) = server.connect(&token("acme", "alice")).await;
    let path = format!("/api/v1/conversations/{}/messages", ids[0]);
    let (_, reply) = server
        .as_user(
            &token("acme", "alice"),
            Method::POST,
            &path,
            Some(json!({"text": "lost"})),
        )
        .await;
    tab.next_event().await;
    tab.next_event().await;

    let (_, event, status) = tab.next_event().await;
    assert_eq!(
        (event.as_str(), &status["status"], &status["message_id"]),
        ("message-status", &json!("failed"), &reply["id"])
    );
    assert_eq!(
        receiver.wait_for(3).await.len(),
        3,
        "max attempts (3 in tests)"
    );
    let (_, deliveries) = server
        .admin(
            Method::GET,
            &format!(
                "/api/v1/integrations/{}/deliveries",
                integration["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    let delivery = &deliveries["deliveries"][0];
    assert_eq!(
        (delivery["status"].as_str(), delivery["attempts"].as_i64()),
        (Some("failed"), Some(3))
    );
    assert!(
        delivery["last_error"].as_str().unwrap().contains("500"),
        "{delivery}"
    );
    let (_, messages) = server
        .as_user(&token("acme", "alice"), Method::GET, &path, None)
        .await;
    assert_eq!(messages["messages"][0]["status"], "failed");
}

#[tokio::test]
async fn integrations_are_admin_only_and_keep_their_secrets() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let body = json!({"provider": "facebook", "external_id": "page-9", "account_id": "acme", "secret": "fb-app-secret"});

    let (status, _) = server
        .as_user(
            &token("acme", "alice"),
            Method::POST,
            "/api/v1/integrations",
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 403, "a user token cannot create integrations");
    let created = server.integration(body.clone()).await;
    assert!(
        created.get("secret").is_none(),
        "a provider's secret is not echoed: {created}"
    );
    let (status, dup) = server
        .admin(Method::POST, "/api/v1/integrations", Some(body))
        .await;
    assert_eq!(
        (status, dup["error"]["code"].as_str()),
        (409, Some("integration-exists"))
    );
    for (bad, field) in [
        (
            json!({"provider": "slack", "external_id": "x", "account_id": "acme"}),
            "provider",
        ),
        (
            json!({"provider": "zalo", "external_id": "x", "account_id": "acme", "secret": "zalo-secret"}),
            "app_id",
        ),
        (
            json!({"provider": "facebook", "external_id": "x", "account_id": "acme"}),
            "secret",
        ),
        (
            json!({"provider": "generic", "external_id": "x", "account_id": "acme", "outbound_url": "ftp://x"}),
            "outbound_url",
        ),
    ] {
        let (status, error) = server
            .admin(Method::POST, "/api/v1/integrations", Some(bad))
            .await;
        assert_eq!(status, 400);
        assert!(
            error["error"]["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }

    let (status, listed) = server
        .admin(Method::GET, "/api/v1/integrations?account_id=acme", None)
        .await;
    assert_eq!(status, 200);
    let text = listed.to_string();
    assert!(
        !text.contains("fb-app-secret") && !text.contains("whsec_"),
        "no secrets listed: {text}"
    );
    assert_eq!(listed["integrations"][0]["enabled"], true);
    let id = created["id"].as_str().unwrap();
    let (status, _) = server
        .admin(
            Method::POST,
            &format!("/api/v1/integrations/{id}/rotate-secret"),
            Some(json!({"secret": "fb-new-secret"})),
        )
        .await;
    assert_eq!(status, 200);
    // A misspelt body is refused, not taken for the defaults.
    let misspelt = Some(json!({"whch": "outbound"}));
    let rotate = format!("/api/v1/integrations/{id}/rotate-secret");
    assert_eq!(server.admin(Method::POST, &rotate, misspelt).await.0, 400);
    let (status, shown) = server
        .admin(Method::GET, &format!("/api/v1/integrations/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert!(!shown.to_string().contains("fb-new-secret"));
    let (status, disabled) = server
        .admin(
            Method::POST,
            &format!("/api/v1/integrations/{id}/disable"),
            None,
        )
        .await;
    assert_eq!((status, &disabled["enabled"]), (200, &json!(false)));
    let (status, _) = server
        .admin(Method::GET, "/api/v1/integrations/int_missing", None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn message_cursors_page_in_order_and_a_cursor_of_the_old_kind_is_refused() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let alice = token("acme", "alice");
    let (_, dm) = server
        .as_user(
            &alice,
            Method::POST,
            "/api/v1/conversations",
            Some(json!({"participants": ["bob"]})),
        )
        .await;
    let dm = dm["id"].as_str().unwrap();
    let path = format!("/api/v1/conversations/{dm}/messages");
    let mut sent = Vec::new();
    for text in ["one", "two", "three"] {
        let (_, message) = server
            .as_user(&alice, Method::POST, &path, Some(json!({"text": text})))
            .await;
        sent.insert(0, message["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(server.message_ids(&alice, dm, 2).await, sent);

    // Messages were once paged by time (`<ms>.<id>`): such a cursor now says so, not a wrong page.
    let old = format!("{}.{}", now() * 1000, sent[1]);
    for (cursor, says) in [
        (old.as_str(), "list again from the first page"),
        ("0", "not a cursor"),
        ("x", "not a cursor"),
    ] {
        let (status, refused) = server
            .as_user(
                &alice,
                Method::GET,
                &format!("{path}?cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(
            (status, refused["error"]["code"].as_str()),
            (400, Some("invalid-field")),
            "{cursor}: {refused}"
        );
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{cursor}: {message}");
    }
}

#[tokio::test]
async fn messages_are_listed_in_the_order_they_were_stored_whatever_their_time() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let (integration, ids) = inbox(&server, "acme", &["c1"], None).await;
    let conversation = &ids[0];
    let agent = token("acme", "agent");
    let path = format!("/api/v1/conversations/{conversation}/messages");
    let mut stored = vec!["hi from c1".to_owned()];

    // Providers give times (`sent_at`) in seconds, so a burst shares one; and one may deliver late.
    let second = now() - 60;
    for i in 0..8 {
        let text = format!("same second {i}");
        let fields = json!({"text": text, "sent_at": second});
        server.message_from(&integration, "c1", fields).await;
        stored.push(text);
        if i % 4 == 3 {
            let reply = format!("reply {i}");
            let (status, _) = server
                .as_user(&agent, Method::POST, &path, Some(json!({"text": reply})))
                .await;
            assert_eq!(status, 201);
            stored.push(reply);
        }
    }
    let late = json!({"text": "late", "sent_at": second - 3600});
    server.message_from(&integration, "c1", late).await;
    stored.push("late".to_owned());

    let (_, listed) = server.as_user(&agent, Method::GET, &path, None).await;
    let texts: Vec<&str> = listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, stored);
    let (_, late) = server
        .as_user(&agent, Method::GET, &format!("{path}?limit=1"), None)
        .await;
    assert_eq!(
        late["messages"][0]["created_at"],
        (second - 3600) * 1000,
        "the provider's time is kept"
    );
}

/// A database as it was at migration 4, before messages were numbered: a fresh SQLite file, or a
/// fresh schema of the test's PostgreSQL database (dropped afterwards).
struct Unnumbered {
    db: Db,
    /// The PostgreSQL database and the schema made in it.
    schema: Option<(String, String)>,
}

impl Unnumbered {
    fn new(db: Db) -> Self {
        if db.url().starts_with("postgres") {
            let schema = format!(
                "unnumbered_{}",
                crate::common::unique("m").replace('-', "_")
            );
            let mut conn = diesel::PgConnection::establish(db.url()).unwrap();
            conn.batch_execute(&format!("CREATE SCHEMA {schema}"))
                .unwrap();
            let separator = if db.url().contains('?') { '&' } else { '?' };
            let url = format!("{}{separator}options=-csearch_path%3D{schema}", db.url());
            let mut conn = diesel::PgConnection::establish(&url).unwrap();
            Self::migrate_to_4(&mut conn, "postgres");
            Self {
                db: Db::with_url(&url),
                schema: Some((db.url().to_owned(), schema)),
            }
        } else {
            let mut conn = diesel::SqliteConnection::establish(db.url()).unwrap();
            Self::migrate_to_4(&mut conn, "sqlite");
            Self { db, schema: None }
        }
    }

    fn migrate_to_4<C: MigrationHarness<C::Backend> + Connection>(conn: &mut C, backend: &str) {
        let dir = format!("{}/migrations/{backend}", env!("CARGO_MANIFEST_DIR"));
        let migrations = FileBasedMigrations::from_path(dir).unwrap();
        for _ in 0..4 {
            conn.run_next_migration(migrations.clone()).unwrap();
        }
    }

    fn execute(&self, sql: &str) {
        if self.schema.is_some() {
            diesel::PgConnection::establish(self.db.url())
                .unwrap()
                .batch_execute(sql)
                .unwrap();
        } else {
            diesel::SqliteConnection::establish(self.db.url())
                .unwrap()
                .batch_execute(sql)
                .unwrap();
        }
    }
}

impl Drop for Unnumbered {
    fn drop(&mut self) {
        if let Some((url, schema)) = &self.schema {
            if let Ok(mut conn) = diesel::PgConnection::establish(url) {
                let _ = conn.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
            }
        }
    }
}

on_each_backend! {
    async fn messages_stored_before_they_were_numbered_keep_their_order(db) {
        let old = Unnumbered::new(db);
        // Inserted out of order; listed until now by (created_at, id): y z a b c 0.
        old.execute(
            "INSERT INTO conversations (id, account_id, kind, title, last_message_at, unread_count, created_at)
                 VALUES ('conv_old', 'acme', 'group', 'old', 3000, 0, 1000), ('conv_other', 'acme', 'group', 'other', 2000, 0, 1000);
             INSERT INTO participants (conversation_id, user_id, unread_count, joined_at)
                 VALUES ('conv_old', 'alice', 0, 1000), ('conv_old', 'bob', 3, 1000), ('conv_other', 'alice', 0, 1000);
             INSERT INTO messages (id, conversation_id, account_id, direction, sender_id, text, status, created_at) VALUES
                 ('msg_c', 'conv_old', 'acme', 'internal', 'alice', 'c', 'sent', 2000),
                 ('msg_a', 'conv_old', 'acme', 'internal', 'bob', 'a', 'sent', 2000),
                 ('msg_q', 'conv_other', 'acme', 'internal', 'alice', 'q', 'sent', 2000),
                 ('msg_z', 'conv_old', 'acme', 'internal', 'alice', 'z', 'sent', 1000),
                 ('msg_0', 'conv_old', 'acme', 'internal', 'bob', '0', 'sent', 3000),
                 ('msg_b', 'conv_old', 'acme', 'internal', 'alice', 'b', 'sent', 2000),
                 ('msg_y', 'conv_old', 'acme', 'internal', 'bob', 'y', 'sent', 1000);",
        );
        let server = TestServer::on(&old.db);
        let alice = token("acme", "alice");
        let path = "/api/v1/conversations/conv_old/messages";
        let (status, new) = server.as_user(&alice, Method::POST, path, Some(json!({"text": "new"}))).await;
        assert_eq!(status, 201, "{new}");
        let expected = [new["id"].as_str().unwrap(), "msg_0", "msg_c", "msg_b", "msg_a", "msg_z", "msg_y"];
        for limit in [1, 3, 50] {
            assert_eq!(server.message_ids(&alice, "conv_old", limit).await, expected);
        }
        assert_eq!(server.message_ids(&alice, "conv_other", 1).await, ["msg_q"]);

        if old.schema.is_some() {
            // A node of the previous version, during a rolling deploy, stores a message without a
            // number: it gets the next.
            old.execute(
                "INSERT INTO messages (id, conversation_id, account_id, direction, sender_id, text, status, created_at)
                     VALUES ('msg_from_old_node', 'conv_other', 'acme', 'internal', 'alice', 'o', 'sent', 1);",
            );
            let listed = server.message_ids(&alice, "conv_other", 1).await;
            assert_eq!(listed, ["msg_from_old_node", "msg_q"]);
        }

        // Bob has read up to b: c and the new one are alice's and after it.
        let (status, view) = server
            .as_user(&token("acme", "bob"), Method::POST, "/api/v1/conversations/conv_old/read",
                     Some(json!({"up_to": "msg_b"})))
            .await;
        assert_eq!((status, &view["unread_count"]), (200, &json!(2)), "{view}");
    }
}
