//! Newtype identifiers, so an account id can never be passed where a user id belongs.
//!
//! Account and user ids are the application's own strings (taken only from verified token claims or
//! from the server API); they are reference-counted because every session and room member holds one.

use std::fmt;
use std::sync::Arc;

/// The longest account or user id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Why a string cannot be an account or user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("must not contain control characters")]
    ControlCharacter,
}

/// Checks the shape every id has (non-empty, short, no control characters); also used for other
/// names the API takes, such as a provider's page id.
pub fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        Err(IdError::Empty)
    } else if s.len() > MAX_ID_LEN {
        Err(IdError::TooLong)
    } else if s.chars().any(char::is_control) {
        Err(IdError::ControlCharacter)
    } else {
        Ok(())
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Checks the id's shape; the content is the application's business.
            pub fn new(s: &str) -> Result<Self, IdError> {
                check_id(s)?;
                Ok(Self(Arc::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        /// A stored id read back (`#[diesel(deserialize_as = String)]`): checked as any is.
        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(&s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

string_id!(
    /// A tenant: the unit of isolation. Events of one account never reach another's sessions.
    AccountId
);
string_id!(
    /// A user within an account; one user may have many sessions (tabs).
    UserId
);

/// A fresh random id for a stored record, e.g. `conv_3f9a…`: unguessable, so an id says nothing
/// about another account's records.
pub fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_{hex}")
}

/// One WebSocket connection. Random, so ids stay unique across restarts and nodes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(u64);

impl SessionId {
    pub fn random() -> Self {
        // The OS random source failing is not something a server can carry on from.
        Self(getrandom::u64().expect("the OS random number generator failed"))
    }

    /// A session id as [`fmt::Display`] writes it (16 hexadecimal digits), or `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit());
        hex.then(|| u64::from_str_radix(text, 16).ok().map(Self))
            .flatten()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert_eq!(AccountId::new("").unwrap_err(), IdError::Empty);
        assert_eq!(
            UserId::new(&"x".repeat(MAX_ID_LEN + 1)).unwrap_err(),
            IdError::TooLong
        );
        assert_eq!(UserId::new("a\nb").unwrap_err(), IdError::ControlCharacter);
        assert_eq!(AccountId::new("acme").unwrap().as_str(), "acme");
    }
}
