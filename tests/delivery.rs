//! What is published arrives: at every session of the account, or at every tab of one user, in
//! sequence order — and events for an account with no sessions are kept.

use std::time::Duration;

use serde_json::json;

use crate::common::{token, unique, TestServer};
use crate::on_each_backend;

const QUIET: Duration = Duration::from_millis(300);

on_each_backend! {
    async fn account_events_reach_every_session(db) {
        let server = TestServer::on(&db);
        let account = unique("acct");
        let (mut alice, welcome) = server.connect(&token(&account, "alice")).await;
        let (mut alice_tab, _) = server.connect(&token(&account, "alice")).await;
        let (mut bob, _) = server.connect(&token(&account, "bob")).await;
        assert_eq!(welcome["seq"], 0);

        let data = json!({"conversation": 9, "text": "hi there", "nested": [1, {"a": null}]});
        let seq = server.publish(&account, None, "new-message", data.clone()).await;
        assert_eq!(seq, 1);
        for client in [&mut alice, &mut alice_tab, &mut bob] {
            assert_eq!(client.next_event().await, (1, "new-message".to_owned(), data.clone()));
        }
    }

    async fn user_events_reach_every_tab_of_that_user_only(db) {
        let server = TestServer::on(&db);
        let account = unique("acct");
        let other = unique("other");
        let (mut tab1, _) = server.connect(&token(&account, "alice")).await;
        let (mut tab2, _) = server.connect(&token(&account, "alice")).await;
        let (mut bob, _) = server.connect(&token(&account, "bob")).await;
        // The same user id in another account is another person.
        let (mut namesake, _) = server.connect(&token(&other, "alice")).await;

        let seq = server.publish(&account, Some("alice"), "notification", json!({"n": 1})).await;
        for tab in [&mut tab1, &mut tab2] {
            assert_eq!(tab.next_event().await.0, seq);
        }
        bob.expect_silence(QUIET).await;
        namesake.expect_silence(QUIET).await;

        // Account-wide events still reach everyone in the account, after the targeted one.
        let next = server.publish(&account, None, "announcement", json!(null)).await;
        assert_eq!(next, seq + 1);
        for client in [&mut tab1, &mut tab2, &mut bob] {
            assert_eq!(client.next_event().await.0, next);
        }
        namesake.expect_silence(QUIET).await;
    }

    async fn events_for_an_account_without_sessions_are_stored(db) {
        let server = TestServer::on(&db);
        let account = unique("acct");
        for expected in 1..=3 {
            assert_eq!(server.publish(&account, None, "queued", json!(expected)).await, expected);
        }
        let (mut client, welcome) = server.connect(&token(&account, "alice")).await;
        assert_eq!(welcome["seq"], 3);
        client.expect_silence(QUIET).await;
        assert_eq!(server.publish(&account, None, "live", json!({})).await, 4);
        assert_eq!(client.next_event().await.0, 4);
    }

    async fn concurrent_publishes_arrive_in_sequence_order(db) {
        let server = std::sync::Arc::new(TestServer::on(&db));
        let account = unique("acct");
        let (mut first, _) = server.connect(&token(&account, "alice")).await;
        let (mut second, _) = server.connect(&token(&account, "bob")).await;

        const TASKS: u64 = 8;
        const EACH: u64 = 25;
        let publishers: Vec<_> = (0..TASKS)
            .map(|task| {
                let server = server.clone();
                let account = account.clone();
                tokio::spawn(async move {
                    for i in 0..EACH {
                        server.publish(&account, None, "tick", json!({"task": task, "i": i})).await;
                    }
                })
            })
            .collect();
        for publisher in publishers {
            publisher.await.unwrap();
        }
        for client in [&mut first, &mut second] {
            for expected in 1..=TASKS * EACH {
                assert_eq!(client.next_event().await.0, expected);
            }
            client.expect_silence(QUIET).await;
        }
    }
}
