//! Logging set-up: `env_logger` (filtered by `RUST_LOG`, `info` by default) and the request log,
//! which writes the request line with the query string's values redacted except for parameters
//! known to be harmless. Browsers send `?token=<jwt>` on WebSocket URLs, Facebook its verify
//! token, and whatever the next integration sends cannot be foreseen: a value is shown only when
//! its parameter is listed here.

use std::borrow::Cow;

use actix_web::middleware::Logger;

/// Query parameters whose values may be logged: none is a credential, and each helps to read a
/// log. (An Engine.IO `sid` is not here: whoever has it can poll the connection's packets.)
const HARMLESS_PARAMS: &[&str] = &[
    "since",
    "timeout",
    "limit",
    "cursor",
    "unread",
    "account_id",
    "EIO",
    "transport",
    // Engine.IO's cache buster.
    "t",
    "hub.mode",
];

/// Longest parameter name shown: a longer "name" is more likely a value sent without one.
const MAX_NAME_BYTES: usize = 32;

pub fn init() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

pub fn request_logger() -> Logger {
    Logger::new("%a \"%{request}xi\" %s %b %Dms").custom_request_replace("request", |req| {
        format!(
            "{} {}{}",
            req.method(),
            req.path(),
            redact_query(req.query_string())
        )
    })
}

/// `?since=3&token=abc` → `?since=3&token=[redacted]`; empty for no query.
pub fn redact_query(query: &str) -> Cow<'static, str> {
    if query.is_empty() {
        return Cow::Borrowed("");
    }
    let parts: Vec<String> = query.split('&').map(redact_pair).collect();
    Cow::Owned(format!("?{}", parts.join("&")))
}

/// `name=value` as it may be logged. The name is compared as sent: a percent-escaped one is not
/// on the list, whatever it spells.
fn redact_pair(pair: &str) -> String {
    let name = pair.split_once('=').map_or(pair, |(name, _)| name);
    if HARMLESS_PARAMS.contains(&name) {
        return pair.to_owned();
    }
    let looks_like_a_name = name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if looks_like_a_name {
        format!("{name}=[redacted]")
    } else {
        "[redacted]".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::redact_query;

    #[test]
    fn only_harmless_values_are_shown() {
        assert_eq!(redact_query(""), "");
        assert_eq!(
            redact_query("since=3&token=eyJabc&TOKEN=x&EIO=4&sid=abc"),
            "?since=3&token=[redacted]&TOKEN=[redacted]&EIO=4&sid=[redacted]"
        );
        assert_eq!(
            redact_query("hub.mode=subscribe&hub.verify_token=s3cret&hub.challenge=1"),
            "?hub.mode=subscribe&hub.verify_token=[redacted]&hub.challenge=[redacted]"
        );
        // Unknown parameters, escaped names, and values sent without a name.
        assert_eq!(
            redact_query("next_secret=x&%73ince=4&eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig"),
            "?next_secret=[redacted]&[redacted]&[redacted]"
        );
        assert_eq!(redact_query("since"), "?since");
    }
}
