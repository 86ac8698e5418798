//! Isolation under load: many accounts, several sessions each (some users with several tabs),
//! many concurrent publishes, some for one user — every session receives exactly the events
//! addressed to it, in sequence order, and nothing from any other account.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::json;

use crate::common::{token, unique, Client, TestServer};
use crate::on_each_backend;

const ACCOUNTS: usize = 6;
/// (user, tabs) in every account.
const USERS: &[(&str, usize)] = &[("alice", 3), ("bob", 1), ("carol", 2)];
const PUBLISHERS: usize = 4;
const PUBLISHES_EACH: usize = 60;

struct Tab {
    account: String,
    user: &'static str,
    client: Client,
}

on_each_backend! {
    async fn every_session_gets_exactly_its_events(db) {
        let server = Arc::new(TestServer::on(&db));
        let accounts: Vec<String> = (0..ACCOUNTS).map(|i| unique(&format!("iso{i}"))).collect();

        let mut tabs = Vec::new();
        for account in &accounts {
            for &(user, count) in USERS {
                for _ in 0..count {
                    let (client, _) = server.connect(&token(account, user)).await;
                    tabs.push(Tab { account: account.clone(), user, client });
                }
            }
        }

        // Publish concurrently; each publisher picks accounts and targets deterministically.
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let server = server.clone();
                let accounts = accounts.clone();
                tokio::spawn(async move {
                    let mut sent = Vec::new();
                    for i in 0..PUBLISHES_EACH {
                        let account = &accounts[(p * 7 + i * 5) % ACCOUNTS];
                        let user = match (p + i) % 4 {
                            0 => Some(USERS[(p + i) % USERS.len()].0),
                            _ => None,
                        };
                        let data = json!({"account": account, "user": user, "from": p, "i": i});
                        let seq = server.publish(account, user, "e", data).await;
                        sent.push((account.clone(), user, seq));
                    }
                    sent
                })
            })
            .collect();
        let mut sent = Vec::new();
        for publisher in publishers {
            sent.extend(publisher.await.unwrap());
        }

        // What each (account, user) is entitled to, in order.
        let mut expected: HashMap<(String, &str), BTreeMap<u64, ()>> = HashMap::new();
        for (account, target, seq) in &sent {
            for &(user, _) in USERS {
                if target.is_none_or(|t| t == user) {
                    expected.entry((account.clone(), user)).or_default().insert(*seq, ());
                }
            }
        }

        // Published after everything else: the frame that must come next.
        let mut sentinels = HashMap::new();
        for account in &accounts {
            for &(user, _) in USERS {
                sentinels.insert((account.clone(), user), server.sentinel(account, Some(user)).await);
            }
        }

        let mut deliveries = 0;
        for tab in &mut tabs {
            let want: Vec<u64> = expected
                .get(&(tab.account.clone(), tab.user))
                .map(|m| m.keys().copied().collect())
                .unwrap_or_default();
            let mut got = Vec::new();
            while got.len() < want.len() {
                let frame = tab.client.next_json().await;
                assert_eq!(frame["type"], "event");
                assert_eq!(frame["data"]["account"], tab.account.as_str(), "cross-account frame: {frame}");
                let target = &frame["data"]["user"];
                assert!(target.is_null() || target == tab.user, "frame for another user: {frame}");
                got.push(frame["seq"].as_u64().unwrap());
            }
            assert_eq!(got, want, "account={} user={}", tab.account, tab.user);
            let sentinel = sentinels[&(tab.account.clone(), tab.user)];
            tab.client.expect_sentinel(sentinel).await;
            deliveries += got.len();
        }
        assert!(deliveries > PUBLISHERS * PUBLISHES_EACH, "the test exercised fan-out");
    }
}
