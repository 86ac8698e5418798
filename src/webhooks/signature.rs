//! Webhook signatures: HMAC-SHA256 (Facebook, Standard Webhooks), Zalo's SHA-256 MAC, and the
//! `whsec_` secrets of the Standard Webhooks scheme. Every comparison is constant-time.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Mac, SimpleHmac};
use sha2::{Digest, Sha256};

type HmacSha256 = SimpleHmac<Sha256>;

/// Prefix of Standard Webhooks secrets; the rest is the base64 of the key bytes.
const SECRET_PREFIX: &str = "whsec_";

fn hmac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Facebook: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, body)>`.
pub fn verify_facebook(app_secret: &str, body: &[u8], header: &str) -> bool {
    let Some(expected) = header
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    hmac(app_secret.as_bytes(), &[body])
        .verify_slice(&expected)
        .is_ok()
}

/// Zalo: `X-ZEvent-Signature: mac=<hex SHA-256(app id + body + timestamp + OA secret key)>`
/// (the `mac=` prefix is optional).
pub fn verify_zalo(app_id: &str, body: &[u8], timestamp: &str, secret: &str, header: &str) -> bool {
    let given = header.strip_prefix("mac=").unwrap_or(header).trim();
    let Ok(given) = hex::decode(given) else {
        return false;
    };
    let digest = Sha256::new()
        .chain_update(app_id)
        .chain_update(body)
        .chain_update(timestamp)
        .chain_update(secret)
        .finalize();
    constant_time_eq::constant_time_eq(&digest, &given)
}

/// A new Standard Webhooks secret: `whsec_` and 32 random bytes in base64.
pub fn generate_secret() -> String {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("the OS random number generator failed");
    format!("{SECRET_PREFIX}{}", BASE64.encode(key))
}

/// The key bytes of a `whsec_…` secret (a secret without the prefix is used as it is).
fn standard_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix(SECRET_PREFIX)
        .and_then(|b64| BASE64.decode(b64).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// Standard Webhooks: `v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`.
pub fn sign_standard(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac(
        &standard_key(secret),
        &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
    );
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// Whether any of the space-separated `v1,<base64>` signatures in `header` is valid (senders
/// list several while they rotate keys).
pub fn verify_standard(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let key = standard_key(secret);
    header
        .split_whitespace()
        .filter_map(|sig| sig.strip_prefix("v1,"))
        .filter_map(|b64| BASE64.decode(b64).ok())
        .any(|given| {
            hmac(
                &key,
                &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
            )
            .verify_slice(&given)
            .is_ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_signatures_round_trip_and_rotate() {
        let old = generate_secret();
        let new = generate_secret();
        let body = br#"{"type":"message"}"#;
        let sig_old = sign_standard(&old, "msg_1", 1700000000, body);
        let sig_new = sign_standard(&new, "msg_1", 1700000000, body);
        let both = format!("{sig_old} {sig_new}");
        assert!(verify_standard(&new, "msg_1", "1700000000", body, &both));
        assert!(!verify_standard(
            &new,
            "msg_1",
            "1700000000",
            body,
            &sig_old
        ));
        assert!(!verify_standard(
            &new,
            "msg_2",
            "1700000000",
            body,
            &sig_new
        ));
        assert!(!verify_standard(
            &new,
            "msg_1",
            "1700000000",
            b"{}",
            &sig_new
        ));
    }

    #[test]
    fn facebook_signature_matches_a_known_value() {
        // echo -n 'hello' | openssl dgst -sha256 -hmac secret
        let header = "sha256=88aab3ede8d3adf94d26ab90d3bafd4a2083070c3bcce9c014ee04a443847c0b";
        assert!(verify_facebook("secret", b"hello", header));
        assert!(!verify_facebook("secret", b"hello!", header));
        assert!(!verify_facebook("secret", b"hello", "sha1=abc"));
    }
}
