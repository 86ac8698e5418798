//! JSON taken in from outside — request bodies, WebSocket and Socket.IO frames, webhook payloads —
//! under one nesting limit, [`MAX_DEPTH`]. Depends on nothing else of ours.
//!
//! Why a limit of our own: serde_json refuses nesting past 128 levels only when it builds a
//! `Value`; as a `RawValue` (how attachments and publish `data` are taken) any depth passes, to
//! be stored and sent on to every client and node that parses it again. A document within
//! [`MAX_DEPTH`] stays within serde_json's limit with room for the envelopes we wrap it in (an
//! event frame, a Socket.IO packet, an outbound webhook).

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Most levels of arrays and objects, one inside another, in a document taken in from outside.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("JSON nested deeper than {MAX_DEPTH} levels of arrays and objects")]
    TooDeep,
    #[error(transparent)]
    Invalid(#[from] serde_json::Error),
}

/// Parses a document taken in from outside, refusing one nested deeper than [`MAX_DEPTH`].
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    check_depth(bytes)?;
    Ok(serde_json::from_slice(bytes)?)
}

/// Whether the text nests arrays and objects at most [`MAX_DEPTH`] deep. A scan of the bytes, with
/// no parsing: brackets inside strings do not count. Text that is not JSON passes, for the parser
/// to refuse with its own message.
pub fn check_depth(bytes: &[u8]) -> Result<(), JsonError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in bytes {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(JsonError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// [`check_depth`] for a document already parsed (a Socket.IO packet's arguments, which serde_json
/// parsed up to its own limit of 128).
pub fn check_value_depth(value: &Value) -> Result<(), JsonError> {
    // Stops descending past the limit, so the recursion is bounded by it too.
    fn within(value: &Value, levels: usize) -> bool {
        match value {
            Value::Array(items) => levels > 0 && items.iter().all(|v| within(v, levels - 1)),
            Value::Object(fields) => levels > 0 && fields.values().all(|v| within(v, levels - 1)),
            _ => true,
        }
    }
    if within(value, MAX_DEPTH) {
        Ok(())
    } else {
        Err(JsonError::TooDeep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
        assert!(check_depth(nested(MAX_DEPTH).as_bytes()).is_ok());
        assert!(check_depth(nested(MAX_DEPTH + 1).as_bytes()).is_err());
        let object = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert!(check_depth(object.as_bytes()).is_err());
        let quoted = format!(r#"["{}\"{}"]"#, "[".repeat(100), "{".repeat(100));
        assert!(check_depth(quoted.as_bytes()).is_ok());
        // Siblings do not add up.
        let wide = format!("[{}]", vec![nested(MAX_DEPTH - 1); 50].join(","));
        assert!(check_depth(wide.as_bytes()).is_ok());
    }

    #[test]
    fn a_parsed_value_is_held_to_the_same_limit() {
        let at_limit: Value = serde_json::from_str(&nested(MAX_DEPTH)).unwrap();
        let over: Value = serde_json::from_str(&nested(MAX_DEPTH + 1)).unwrap();
        assert!(check_value_depth(&at_limit).is_ok());
        assert!(check_value_depth(&over).is_err());
        assert!(check_value_depth(&Value::Null).is_ok());
    }

    #[test]
    fn too_deep_is_refused_before_parsing() {
        let body = format!(r#"{{"a":{}}}"#, nested(200));
        let parsed = from_slice::<serde_json::Map<String, Value>>(body.as_bytes());
        assert!(matches!(parsed, Err(JsonError::TooDeep)));
    }
}
