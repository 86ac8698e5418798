//! Webhook signatures: HMAC-SHA256 (Facebook, Standard Webhooks), Zalo's SHA-256 MAC, and the
//! `whsec_` secrets of the Standard Webhooks scheme. Every comparison is constant-time, and each
//! request costs at most one MAC over its body: a signature that cannot be one (wrong length,
//! not hex or base64, too many of them) is refused before any.
//!
//! Base layer: the webhooks adapter verifies with it, the outbound service signs with it. Uses
//! nothing of the crate; its refusals are its own [`SignatureError`], which `error` maps to HTTP.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Mac, SimpleHmac};
use sha2::{Digest, Sha256};

type HmacSha256 = SimpleHmac<Sha256>;

/// Why a webhook's signature was refused. Never carries the signature or the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the webhook signature headers are missing")]
    Missing,
    #[error("the webhook signature does not match")]
    Mismatch,
    #[error("the webhook timestamp is outside the replay window")]
    Stale,
    /// Refused before any MAC is computed: no sender needs more.
    #[error(
        "the webhook-signature header lists more than {signatures} signatures or is longer than {bytes} bytes"
    )]
    TooMany { signatures: usize, bytes: usize },
    /// A Facebook webhook naming pages whose integrations hold different app secrets: one app
    /// signs a webhook, so it cannot verify for all of them.
    #[error("the pages of this webhook are registered with different app secrets")]
    SecretsDiffer,
}

impl SignatureError {
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing-signature",
            Self::Mismatch | Self::TooMany { .. } | Self::SecretsDiffer => "invalid-signature",
            Self::Stale => "timestamp-out-of-window",
        }
    }
}

/// Prefix of Standard Webhooks secrets; the rest is the base64 of the key bytes.
const SECRET_PREFIX: &str = "whsec_";

fn hmac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Bytes of a SHA-256 digest or HMAC-SHA256 tag.
const TAG_BYTES: usize = 32;

/// The 32 bytes of a hex-encoded tag; `None` for anything else.
fn hex_tag(text: &str) -> Option<[u8; TAG_BYTES]> {
    let mut tag = [0u8; TAG_BYTES];
    hex::decode_to_slice(text, &mut tag).ok()?;
    Some(tag)
}

/// Facebook: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, body)>`.
pub fn verify_facebook(app_secret: &str, body: &[u8], header: &str) -> bool {
    let Some(given) = header.strip_prefix("sha256=").and_then(hex_tag) else {
        return false;
    };
    hmac(app_secret.as_bytes(), &[body])
        .verify_slice(&given)
        .is_ok()
}

/// Zalo: `X-ZEvent-Signature: mac=<hex SHA-256(app id + body + timestamp + OA secret key)>`
/// (the `mac=` prefix is optional).
pub fn verify_zalo(app_id: &str, body: &[u8], timestamp: &str, secret: &str, header: &str) -> bool {
    let Some(given) = hex_tag(header.strip_prefix("mac=").unwrap_or(header).trim()) else {
        return false;
    };
    let digest = Sha256::new()
        .chain_update(app_id)
        .chain_update(body)
        .chain_update(timestamp)
        .chain_update(secret)
        .finalize();
    constant_time_eq::constant_time_eq_32(&digest.into(), &given)
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

/// Most signatures a `webhook-signature` header may list. A sender lists one per secret it signs
/// with — two while it rotates keys; a longer list is refused before any HMAC is computed.
pub const MAX_STANDARD_SIGNATURES: usize = 8;
/// Longest `webhook-signature` header accepted: room for [`MAX_STANDARD_SIGNATURES`] of the
/// longest kind the scheme defines (`v1a,` and an 88-character Ed25519 signature).
pub const MAX_STANDARD_HEADER_BYTES: usize = 1024;

/// The `v1` signatures of a `webhook-signature` header, decoded: read once, before the body, and
/// checked against one HMAC of the body. Entries of other versions, or that are not base64 of
/// 32 bytes, are kept out (they can never match) but count against the limit.
#[derive(Debug)]
pub struct StandardSignatures(Vec<[u8; TAG_BYTES]>);

impl StandardSignatures {
    pub fn parse(header: &str) -> Result<Self, SignatureError> {
        if header.len() > MAX_STANDARD_HEADER_BYTES
            || header
                .split_whitespace()
                .nth(MAX_STANDARD_SIGNATURES)
                .is_some()
        {
            return Err(SignatureError::TooMany {
                signatures: MAX_STANDARD_SIGNATURES,
                bytes: MAX_STANDARD_HEADER_BYTES,
            });
        }
        let tags = header
            .split_whitespace()
            .filter_map(|sig| sig.strip_prefix("v1,"))
            .filter_map(|b64| {
                let mut tag = [0u8; TAG_BYTES];
                // Over-long input fails here rather than being cut to the first 32 bytes.
                match BASE64.decode_slice(b64, &mut tag) {
                    Ok(TAG_BYTES) => Some(tag),
                    _ => None,
                }
            })
            .collect();
        Ok(Self(tags))
    }

    /// Whether one of them is the HMAC of `id.timestamp.body` under `secret` (senders list
    /// several while they rotate keys). The HMAC is computed once, and not at all when no entry
    /// could match.
    pub fn verify(&self, secret: &str, id: &str, timestamp: &str, body: &[u8]) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let expected: [u8; TAG_BYTES] = hmac(
            &standard_key(secret),
            &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
        )
        .finalize()
        .into_bytes()
        .into();
        self.0
            .iter()
            .any(|given| constant_time_eq::constant_time_eq_32(given, &expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(secret: &str, id: &str, body: &[u8], header: &str) -> bool {
        StandardSignatures::parse(header)
            .unwrap()
            .verify(secret, id, "1700000000", body)
    }

    #[test]
    fn standard_signatures_round_trip_and_rotate() {
        let old = generate_secret();
        let new = generate_secret();
        let body = br#"{"type":"message"}"#;
        let sig_old = sign_standard(&old, "msg_1", 1700000000, body);
        let sig_new = sign_standard(&new, "msg_1", 1700000000, body);
        let both = format!("{sig_old} {sig_new}");
        assert!(verify(&new, "msg_1", body, &both));
        assert!(!verify(&new, "msg_1", body, &sig_old));
        assert!(!verify(&new, "msg_2", body, &sig_new));
        assert!(!verify(&new, "msg_1", b"{}", &sig_new));
        // Not a 32-byte tag: never a match, whatever the prefix of the real one it holds.
        let long = format!("{sig_new}AAAA");
        assert!(!verify(&new, "msg_1", body, &long));
        assert!(!verify(&new, "msg_1", body, "v1,AAAA v1a,AAAA v2,x"));
    }

    #[test]
    fn a_long_list_of_signatures_is_refused_before_any_hmac() {
        let secret = generate_secret();
        let good = sign_standard(&secret, "msg_1", 1700000000, b"{}");
        let eight = [good.as_str(); MAX_STANDARD_SIGNATURES].join(" ");
        assert!(verify(&secret, "msg_1", b"{}", &eight));
        let nine = format!("{eight} v1,AAAA");
        assert!(matches!(
            StandardSignatures::parse(&nine),
            Err(SignatureError::TooMany { .. })
        ));
        let padded = format!("{good}{}", " ".repeat(MAX_STANDARD_HEADER_BYTES));
        assert!(matches!(
            StandardSignatures::parse(&padded),
            Err(SignatureError::TooMany { .. })
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
