//! Property tests of the webhook payload parsers through the real endpoints: bodies shaped like
//! each provider's, with any field replaced by arbitrary JSON, correctly signed — so they pass
//! the signature check and reach the parser. Whatever arrives, the answer is a 2xx or a 4xx with
//! an error code (never a 5xx, a dropped connection or a panic), and the server goes on serving.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

use crate::common::{now, sign, Db, TestServer};

const CASES: u32 = 150;

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Usually `usual`, sometimes anything at all.
fn mostly(usual: Value) -> BoxedStrategy<Value> {
    prop_oneof![3 => Just(usual), 1 => any_json()].boxed()
}

fn facebook_payload(page: &'static str) -> impl Strategy<Value = String> {
    let messaging = (
        mostly(json!({"id": "psid-1"})),
        mostly(json!({"id": page})),
        mostly(json!(now() * 1000)),
        mostly(json!("mid.1")),
        mostly(json!("hello")),
        mostly(Value::Null),
    )
        .prop_map(|(sender, recipient, timestamp, mid, text, attachments)| {
            json!({"sender": sender, "recipient": recipient, "timestamp": timestamp,
                   "message": {"mid": mid, "text": text, "attachments": attachments}})
        });
    (
        mostly(json!("page")),
        mostly(json!(page)),
        prop::collection::vec(mostly_value(messaging), 0..3),
    )
        .prop_map(|(object, id, messaging)| {
            json!({"object": object, "entry": [{"id": id, "time": 1, "messaging": messaging}]})
                .to_string()
        })
}

fn mostly_value(usual: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![3 => usual, 1 => any_json()].boxed()
}

fn zalo_payload(oa: &'static str, timestamp: String) -> impl Strategy<Value = String> {
    (
        mostly(json!("zalo-app-1")),
        mostly(json!("user_send_text")),
        mostly(json!({"id": "zuser-1"})),
        mostly(json!({"id": oa})),
        mostly(json!({"text": "xin chào", "msg_id": "zmsg-1"})),
    )
        .prop_map(move |(app_id, event_name, sender, recipient, message)| {
            json!({"app_id": app_id, "event_name": event_name, "timestamp": timestamp,
                   "sender": sender, "recipient": recipient, "message": message})
            .to_string()
        })
}

fn generic_payload() -> impl Strategy<Value = String> {
    (
        mostly(json!("message")),
        mostly(json!("cust-42")),
        mostly(json!("Where is my order?")),
        mostly(json!("ext-1")),
    )
        .prop_map(|(kind, contact, text, id)| {
            json!({"type": kind, "data": {"contact_id": contact, "text": text, "id": id}})
                .to_string()
        })
}

/// Runs `CASES` bodies from `bodies` through `post`; each answer must be a 2xx or a 4xx with a
/// code.
fn check<S: Strategy<Value = String>>(bodies: S, post: impl Fn(&str) -> (u16, Value)) {
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    runner
        .run(&bodies, |body| {
            let (status, answer) = post(&body);
            prop_assert!(
                (200..300).contains(&status)
                    || ((400..500).contains(&status) && answer["error"]["code"].is_string()),
                "{status} {answer} for {body}"
            );
            Ok(())
        })
        .unwrap();
}

#[test]
fn webhook_parsers_answer_every_signed_payload_with_a_2xx_or_a_4xx() {
    let db = Db::sqlite();
    let server = TestServer::on(&db);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let generic = runtime.block_on(async {
        server
            .integration(json!({"provider": "facebook", "external_id": "page-f", "account_id": "acme", "secret": "fb-secret"}))
            .await;
        server
            .integration(json!({"provider": "zalo", "external_id": "oa-f", "account_id": "acme",
                                "secret": "zalo-secret", "app_id": "zalo-app-1"}))
            .await;
        server
            .integration(json!({"provider": "generic", "external_id": "shop-f", "account_id": "acme"}))
            .await
    });

    check(facebook_payload("page-f"), |body| {
        let headers = [("x-hub-signature-256", sign::facebook("fb-secret", body))];
        runtime.block_on(server.webhook("/webhooks/facebook", &headers, body))
    });

    let timestamp = (now() * 1000).to_string();
    check(zalo_payload("oa-f", timestamp.clone()), |body| {
        let signature = sign::zalo("zalo-app-1", body, &timestamp, "zalo-secret");
        runtime.block_on(server.webhook(
            "/webhooks/zalo",
            &[("x-zevent-signature", signature)],
            body,
        ))
    });

    let secret = generic["secret"].as_str().unwrap().to_owned();
    let path = generic["webhook_path"].as_str().unwrap().to_owned();
    let counter = std::sync::atomic::AtomicU64::new(0);
    check(generic_payload(), |body| {
        let id = format!(
            "wh_{}",
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let ts = now() as i64;
        let headers = [
            ("webhook-id", id.clone()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sign::standard(&secret, &id, ts, body)),
        ];
        runtime.block_on(server.webhook(&path, &headers, body))
    });

    // Still serving: a well-formed message goes through.
    let body =
        json!({"type": "message", "data": {"contact_id": "c-after", "text": "after"}}).to_string();
    let ts = now() as i64;
    let headers = [
        ("webhook-id", "wh_after".to_owned()),
        ("webhook-timestamp", ts.to_string()),
        (
            "webhook-signature",
            sign::standard(&secret, "wh_after", ts, &body),
        ),
    ];
    let (status, answer) = runtime.block_on(server.webhook(&path, &headers, &body));
    assert_eq!((status, answer["stored"].as_u64()), (200, Some(1)));
}
