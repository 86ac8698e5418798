//! Node-to-node authentication: every message a node publishes on the cluster channel carries an
//! HMAC-SHA256 tag under a key derived from the cluster secret, and the listener accepts only
//! messages whose tag verifies — whoever can publish to the Redis but does not hold the secret
//! cannot inject events or frames into any account.
//!
//! A signed message is `sb1.<tag, 64 hex digits>.<JSON>`, the tag computed over the JSON bytes.
//! Presence changes are the one exception: the Lua scripts inside Redis publish them (that is
//! what orders them), and Redis cannot hold the key; they carry ids only, and the presence
//! records they announce live in Redis anyway (see docs/operations.md, "Running several nodes").
//!
//! Uses only `hmac`/`sha2`; knows nothing of what the JSON says.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// What a signed message starts with: the scheme's version, so a later one can be told apart.
const PREFIX: &[u8] = b"sb1.";
/// The tag's length in hex digits.
const TAG_HEX: usize = 64;
/// Binds the derived key to this one use of the secret.
const KEY_LABEL: &[u8] = b"switchboard cluster messages v1";

/// Why a message's signature is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsigned {
    /// No signature at all (a presence change, or something foreign).
    Missing,
    /// A signature that does not verify under this cluster's key.
    Invalid,
}

/// The key messages are signed with; derived from the cluster secret, so the secret itself is
/// used for nothing else.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl Key {
    pub fn derive(secret: &Secret) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(KEY_LABEL);
        Self(mac.finalize().into_bytes().into())
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length")
    }

    /// The message as sent: `sb1.<tag>.<json>`.
    pub fn sign(&self, json: &str) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(json.as_bytes());
        let tag = hex::encode(mac.finalize().into_bytes());
        let mut signed = Vec::with_capacity(PREFIX.len() + TAG_HEX + 1 + json.len());
        signed.extend_from_slice(PREFIX);
        signed.extend_from_slice(tag.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(json.as_bytes());
        signed
    }

    /// The JSON of a message whose tag verifies (compared in constant time).
    pub fn verify<'a>(&self, payload: &'a [u8]) -> Result<&'a [u8], Unsigned> {
        let Some(rest) = payload.strip_prefix(PREFIX) else {
            return Err(Unsigned::Missing);
        };
        if rest.len() <= TAG_HEX || rest[TAG_HEX] != b'.' {
            return Err(Unsigned::Invalid);
        }
        let (tag, json) = (&rest[..TAG_HEX], &rest[TAG_HEX + 1..]);
        let tag = hex::decode(tag).map_err(|_| Unsigned::Invalid)?;
        let mut mac = self.mac();
        mac.update(json);
        mac.verify_slice(&tag).map_err(|_| Unsigned::Invalid)?;
        Ok(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> Key {
        Key::derive(&Secret::new(secret.into()))
    }

    #[test]
    fn a_signed_message_verifies_under_the_same_secret_only() {
        let json = r#"{"catch-up":{"node":"n1","account":"acme"}}"#;
        let signed = key("a secret of at least thirty-two bytes").sign(json);
        assert_eq!(
            key("a secret of at least thirty-two bytes").verify(&signed),
            Ok(json.as_bytes())
        );
        assert_eq!(
            key("another secret of thirty-two bytes").verify(&signed),
            Err(Unsigned::Invalid)
        );
    }

    #[test]
    fn tampered_truncated_and_unsigned_messages_are_refused() {
        let key = key("a secret of at least thirty-two bytes");
        let mut signed = key.sign(r#"{"x":1}"#);
        let last = signed.len() - 2;
        signed[last] = b'2';
        assert_eq!(key.verify(&signed), Err(Unsigned::Invalid));
        assert_eq!(key.verify(&signed[..40]), Err(Unsigned::Invalid));
        assert_eq!(key.verify(b"sb1."), Err(Unsigned::Invalid));
        assert_eq!(key.verify(br#"{"x":1}"#), Err(Unsigned::Missing));
        let mut not_hex = key.sign("{}");
        not_hex[5] = b'z';
        assert_eq!(key.verify(&not_hex), Err(Unsigned::Invalid));
    }
}
