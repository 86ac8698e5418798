//! Logging set-up: `env_logger` (filtered by `RUST_LOG`, `info` by default) and the request log,
//! which writes the request line with credentials in the query string redacted — browsers send
//! `?token=<jwt>` on WebSocket URLs, and a token in a log file is a stolen session.

use std::borrow::Cow;

use actix_web::middleware::Logger;

/// Query parameters whose values never reach a log line.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "jwt",
    "api_key",
    "apikey",
    "key",
    "secret",
    "password",
    // An Engine.IO connection id: whoever has it can poll the connection's packets.
    "sid",
];

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

/// `?a=1&token=abc` → `?a=1&token=[redacted]`; empty for no query.
pub fn redact_query(query: &str) -> Cow<'static, str> {
    if query.is_empty() {
        return Cow::Borrowed("");
    }
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            // A percent-escaped name could spell `token` in disguise: redact those too.
            if name.contains('%') || SECRET_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                format!("{name}=[redacted]")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    Cow::Owned(format!("?{}", parts.join("&")))
}

#[cfg(test)]
mod tests {
    use super::redact_query;

    #[test]
    fn tokens_are_redacted() {
        assert_eq!(redact_query(""), "");
        assert_eq!(
            redact_query("since=3&token=eyJabc&TOKEN=x"),
            "?since=3&token=[redacted]&TOKEN=[redacted]"
        );
        assert_eq!(redact_query("%74oken=eyJ"), "?%74oken=[redacted]");
    }
}
