//! Identity: verifying the JWTs an application issues to its users, and minting development tokens.
//!
//! A session's account and user come only from a token verified here — never from a query
//! parameter, a header or a frame the client writes. Each way a token can be wrong has its own
//! [`TokenError`], so a client is told exactly why it was refused. Tokens are verified only
//! through [`throttle::Authenticator`], which limits failures per client address.
//!
//! [`signature`] verifies and makes the signatures of webhooks, the other way a caller proves
//! who it is. Base layer: uses `config`, `ids` and `channel` only.

pub mod revoked;
pub mod signature;
pub mod throttle;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::HttpRequest;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::channel::ChannelGrant;
use crate::config::{JwtConfig, JwtKey, Origins};
use crate::ids::{AccountId, UserId};

/// The claim that names the tenant; `sub` names the user.
pub const ACCOUNT_CLAIM: &str = "account_id";

/// The longest token taken. Applications' JWTs are a few hundred bytes to a few KiB (and a
/// header line over 8 KiB does not pass common proxies); a Socket.IO connection keeps its
/// handshake's token until its CONNECT, so this bounds what one holds.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a token was refused. Messages never include the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token: send `Authorization: Bearer <jwt>` or `?token=<jwt>`")]
    Missing,
    #[error("the Authorization header must be `Bearer <jwt>`")]
    BadAuthorizationHeader,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("the token's algorithm is not accepted; this server accepts {expected:?}")]
    UnsupportedAlgorithm { expected: Algorithm },
    /// RFC 7515 §4.1.11: a recipient must refuse a token whose `crit` header names extensions it
    /// does not implement, and this server implements none.
    #[error(
        "the token's header has `crit` (critical extensions), which this server does not implement"
    )]
    CriticalHeader,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired; get a new one from your application")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's audience (aud) is not accepted")]
    WrongAudience,
    #[error("the token's issuer (iss) is not accepted")]
    WrongIssuer,
    #[error("the token lacks the `{0}` claim")]
    MissingClaim(String),
    #[error("the token's `{claim}` claim {reason}")]
    InvalidClaim { claim: String, reason: String },
    /// The application revoked the user at or after the token was issued (control API).
    #[error("this token was revoked; get a new one from your application")]
    Revoked,
}

impl TokenError {
    /// The stable, documented code clients can branch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing-token",
            Self::BadAuthorizationHeader => "bad-authorization-header",
            Self::Malformed => "malformed-token",
            Self::TooLong => "token-too-long",
            Self::UnsupportedAlgorithm { .. } => "unsupported-algorithm",
            Self::CriticalHeader => "unsupported-header",
            Self::BadSignature => "invalid-signature",
            Self::Expired => "token-expired",
            Self::NotYetValid => "token-not-yet-valid",
            Self::WrongAudience => "invalid-audience",
            Self::WrongIssuer => "invalid-issuer",
            Self::MissingClaim(_) => "missing-claim",
            Self::InvalidClaim { .. } => "invalid-claim",
            Self::Revoked => "token-revoked",
        }
    }
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub account: AccountId,
    pub user: UserId,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
    /// When the token was issued (`iat`, seconds since the Unix epoch), if it says: a user's
    /// revocation refuses the tokens issued before it.
    pub issued_at: Option<u64>,
    /// The channels the session may follow (the `channels` claim; none without it).
    pub channels: Arc<ChannelGrant>,
}

/// Verifies tokens with the configured key, algorithm, issuer and audience. Private to `auth`:
/// outside it, tokens are verified through [`throttle::Authenticator`].
struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    fn new(config: &JwtConfig) -> Self {
        let (key, algorithm) = match &config.key {
            JwtKey::Secret(secret) => (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
            ),
            JwtKey::PublicKey { algorithm, pem } => {
                let key = match algorithm {
                    Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
                    _ => DecodingKey::from_ec_pem(pem),
                };
                // Config::load parsed this very PEM already.
                (key.expect("public key was validated at load"), *algorithm)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = &config.audience {
            validation.set_audience(&[audience]);
            required.push("aud");
        } else {
            // Without a configured audience, a token's `aud` is the app's business, not ours.
            validation.validate_aud = false;
        }
        validation.set_required_spec_claims(&required);
        Self { key, validation }
    }

    fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        self.check_header(token)?;
        let data =
            jsonwebtoken::decode::<HashMap<String, Value>>(token, &self.key, &self.validation)
                .map_err(|e| token_error(e.kind(), self.validation.algorithms[0]))?;
        let claims = data.claims;
        let account = id_claim(&claims, ACCOUNT_CLAIM, AccountId::new)?;
        let user = id_claim(&claims, "sub", UserId::new)?;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| TokenError::MissingClaim("exp".into()))?;
        let issued_at = claims.get("iat").and_then(Value::as_u64);
        Ok(Identity {
            account,
            user,
            expires_at,
            issued_at,
            channels: Arc::new(channels_claim(&claims)?),
        })
    }

    /// Refuses any algorithm but the configured one — `none` included — with its own error,
    /// before the library would report it as a generic parse failure; and any `crit` header,
    /// which the library parses but does not enforce.
    fn check_header(&self, token: &str) -> Result<(), TokenError> {
        let expected = self.validation.algorithms[0];
        let header = token.split('.').next().ok_or(TokenError::Malformed)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Malformed)?;
        let header: serde_json::Map<String, Value> =
            serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(TokenError::Malformed)?;
        if alg != format!("{expected:?}") {
            Err(TokenError::UnsupportedAlgorithm { expected })
        } else if header.contains_key("crit") {
            // Present at all, even `null` or empty: refused.
            Err(TokenError::CriticalHeader)
        } else {
            Ok(())
        }
    }
}

fn token_error(kind: &ErrorKind, expected: Algorithm) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
        ErrorKind::InvalidClaimFormat(claim) => TokenError::InvalidClaim {
            claim: claim.clone(),
            reason: "has the wrong type".into(),
        },
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::UnsupportedAlgorithm { expected }
        }
        _ => TokenError::Malformed,
    }
}

/// The claim that lists the channels a session may follow.
pub const CHANNELS_CLAIM: &str = "channels";

/// The `channels` claim: an array of names and `prefix*` patterns (see [`ChannelGrant`]).
fn channels_claim(claims: &HashMap<String, Value>) -> Result<ChannelGrant, TokenError> {
    let invalid = |reason: String| TokenError::InvalidClaim {
        claim: CHANNELS_CLAIM.into(),
        reason,
    };
    let entries = match claims.get(CHANNELS_CLAIM) {
        None | Some(Value::Null) => return Ok(ChannelGrant::default()),
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(invalid("must be an array of strings".into())),
    };
    let names: Option<Vec<&str>> = entries.iter().map(Value::as_str).collect();
    let names = names.ok_or_else(|| invalid("must be an array of strings".into()))?;
    ChannelGrant::from_claim(names).map_err(invalid)
}

/// Ids may be JSON strings or integers (many apps number their accounts).
fn id_claim<T, E: std::fmt::Display>(
    claims: &HashMap<String, Value>,
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, TokenError> {
    let invalid = |reason: String| TokenError::InvalidClaim {
        claim: name.into(),
        reason,
    };
    let text = match claims.get(name) {
        None | Some(Value::Null) => return Err(TokenError::MissingClaim(name.into())),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(_) => return Err(invalid("must be a string or an integer".into())),
    };
    parse(&text).map_err(|e| invalid(e.to_string()))
}

/// Before any token work on a WebSocket or Socket.IO handshake: a page on another site must not
/// open a connection with the user's credentials (cross-site WebSocket hijacking). A request
/// without an `Origin` is not from a browser and goes on.
pub fn origin_allowed(req: &HttpRequest, origins: &Origins) -> bool {
    use actix_web::http::header;
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    origin
        .to_str()
        .is_ok_and(|origin| origins.allow(origin, host))
}

/// The token a WebSocket handshake carries: the `Authorization` header, else `?token=`.
pub fn token_from_request(req: &HttpRequest) -> Result<String, TokenError> {
    if let Some(token) = subprotocol_token(req) {
        return Ok(token.to_owned());
    }
    if let Some(value) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        return bearer(
            value
                .to_str()
                .map_err(|_| TokenError::BadAuthorizationHeader)?,
        )
        .map(str::to_owned)
        .ok_or(TokenError::BadAuthorizationHeader);
    }
    #[derive(Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    let query = actix_web::web::Query::<TokenQuery>::from_query(req.query_string())
        .map_err(|_| TokenError::Malformed)?;
    match query.into_inner().token {
        Some(token) if !token.is_empty() => Ok(token),
        _ => Err(TokenError::Missing),
    }
}

/// The WebSocket subprotocol a client names to speak Switchboard's protocol; the only one the
/// server ever answers with.
pub const SUBPROTOCOL: &str = "switchboard.v1";
/// Prefix of the subprotocol entry that carries the token: browsers cannot set headers on a
/// WebSocket, and a token in the URL ends up in proxies' logs; this keeps it in a header.
pub const SUBPROTOCOL_TOKEN_PREFIX: &str = "bearer.";

/// The token in `Sec-WebSocket-Protocol: switchboard.v1, bearer.<jwt>`, if there is one.
fn subprotocol_token(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get_all(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|entry| entry.trim().strip_prefix(SUBPROTOCOL_TOKEN_PREFIX))
        .filter(|token| !token.is_empty())
}

/// Seconds since the Unix epoch: the unit of a token's `exp`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The credential of an `Authorization: Bearer …` header value, if it is one.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, credential) = header.split_once(' ')?;
    let credential = credential.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    account_id: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    channels: &'a [String],
}

/// Why a development token cannot be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("tokens can only be minted with an HS256 secret; with RS256/ES256 your application issues them")]
    NoSecret,
    #[error("signing failed: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
}

/// A signed HS256 token for trying Switchboard out; production tokens come from the application.
pub fn mint(
    config: &JwtConfig,
    account: &AccountId,
    user: &UserId,
    ttl: Duration,
) -> Result<String, MintError> {
    mint_with_channels(config, account, user, ttl, &[])
}

/// [`mint`], with a `channels` claim: the channel names and `prefix*` patterns it allows.
pub fn mint_with_channels(
    config: &JwtConfig,
    account: &AccountId,
    user: &UserId,
    ttl: Duration,
    channels: &[String],
) -> Result<String, MintError> {
    let JwtKey::Secret(secret) = &config.key else {
        return Err(MintError::NoSecret);
    };
    let now = unix_now();
    let claims = MintedClaims {
        sub: user.as_str(),
        account_id: account.as_str(),
        iat: now,
        exp: now + ttl.as_secs(),
        iss: config.issuer.as_deref(),
        aud: config.audience.as_deref(),
        channels,
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn config() -> JwtConfig {
        JwtConfig {
            key: JwtKey::Secret(Secret::new("s".repeat(32))),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(0),
        }
    }

    #[test]
    fn minted_tokens_verify() {
        let config = config();
        let account = AccountId::new("acme").unwrap();
        let user = UserId::new("alice").unwrap();
        let token = mint(&config, &account, &user, Duration::from_secs(60)).unwrap();
        let identity = Verifier::new(&config).verify(&token).unwrap();
        assert_eq!((identity.account, identity.user), (account, user));
    }

    #[test]
    fn bearer_is_case_insensitive() {
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn a_crit_header_is_refused_whatever_it_lists() {
        let config = config();
        let key = EncodingKey::from_secret("s".repeat(32).as_bytes());
        let claims =
            serde_json::json!({"sub": "alice", "account_id": "acme", "exp": unix_now() + 60});
        let verifier = Verifier::new(&config);
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp".into()]);
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        assert_eq!(verifier.verify(&token), Err(TokenError::CriticalHeader));
        header.crit = Some(vec![]);
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        assert_eq!(verifier.verify(&token), Err(TokenError::CriticalHeader));
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        assert!(verifier.verify(&token).is_ok());
    }

    #[test]
    fn garbage_is_malformed() {
        let v = Verifier::new(&config());
        assert_eq!(v.verify("abc").unwrap_err(), TokenError::Malformed);
        assert_eq!(v.verify("").unwrap_err(), TokenError::Malformed);
        let long = format!("{}.e30.", "e".repeat(MAX_TOKEN_BYTES));
        assert_eq!(v.verify(&long).unwrap_err(), TokenError::TooLong);
    }
}
