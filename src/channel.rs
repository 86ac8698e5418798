//! Channels: names inside an account (`order:1042`, `team:support`) that a session follows, and
//! the token's grant of which it may follow.
//!
//! A channel name is 1–[`MAX_CHANNEL_LEN`] characters of letters, digits, `.`, `_`, `:`, `-`, `@`
//! and `/`. The same name in two accounts is two channels: a channel is always looked up in its
//! account's room. Who may subscribe comes only from the verified token's `channels` claim
//! ([`ChannelGrant`]): exact names, and prefix patterns ending in `*` (`order:*`; `*` alone is
//! every channel). Nothing a client sends widens it.
//!
//! Base layer: uses nothing of the crate.

use std::fmt;
use std::sync::Arc;

/// The longest channel name, in characters (all ASCII, so bytes too).
pub const MAX_CHANNEL_LEN: usize = 128;

/// Channels one session may follow at once; one more is refused with `too-many-channels`.
pub const MAX_CHANNELS_PER_SESSION: usize = 64;

/// Entries a token's `channels` claim may hold; a token with more is refused (`invalid-claim`).
pub const MAX_GRANT_PATTERNS: usize = 256;

/// A channel's name, checked.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(Arc<str>);

/// Why a string is not a channel name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a channel name is 1 to 128 characters of letters, digits, '.', '_', ':', '-', '@' or '/'")]
pub struct InvalidChannel;

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-' | '@' | '/')
}

impl Channel {
    pub fn new(name: &str) -> Result<Self, InvalidChannel> {
        if name.is_empty() || name.len() > MAX_CHANNEL_LEN || !name.chars().all(allowed) {
            return Err(InvalidChannel);
        }
        Ok(Self(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Channel({:?})", &*self.0)
    }
}

/// Why a list of channels (a query parameter, an `auth` field) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelsError {
    #[error("{0}")]
    Invalid(InvalidChannel),
    #[error("at most {MAX_CHANNELS_PER_SESSION} channels per session")]
    TooMany,
    #[error("the token does not allow the channel `{0}`")]
    Forbidden(Channel),
}

impl ChannelsError {
    /// The documented code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid-channel",
            Self::TooMany => "too-many-channels",
            Self::Forbidden(_) => "channel-forbidden",
        }
    }
}

/// Which channels a token allows its session to follow: the `channels` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelGrant {
    exact: Vec<Channel>,
    /// Prefixes of `prefix*` patterns; the empty prefix (`*`) allows every channel.
    prefixes: Vec<String>,
}

impl ChannelGrant {
    /// The claim's entries: exact names, or a name's prefix followed by `*`. `Err` says why one
    /// is not.
    pub fn from_claim<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut grant = Self::default();
        for (i, entry) in entries.into_iter().enumerate() {
            if i >= MAX_GRANT_PATTERNS {
                return Err(format!("has more than {MAX_GRANT_PATTERNS} entries"));
            }
            match entry.strip_suffix('*') {
                Some(prefix) if prefix.is_empty() || Channel::new(prefix).is_ok() => {
                    grant.prefixes.push(prefix.to_owned())
                }
                _ => grant.exact.push(Channel::new(entry).map_err(|_| {
                    "must list channel names, or prefixes ending in `*`".to_owned()
                })?),
            }
        }
        Ok(grant)
    }

    pub fn allows(&self, channel: &Channel) -> bool {
        self.exact.contains(channel)
            || self
                .prefixes
                .iter()
                .any(|prefix| channel.as_str().starts_with(prefix.as_str()))
    }

    /// A list a client asked for on connecting (`a,b` in a query parameter, or already split):
    /// each checked, deduplicated, bounded and allowed — or the first reason not.
    pub fn admit<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Channel>, ChannelsError> {
        let mut channels: Vec<Channel> = Vec::new();
        for name in names {
            let channel = Channel::new(name).map_err(ChannelsError::Invalid)?;
            if channels.contains(&channel) {
                continue;
            }
            if channels.len() >= MAX_CHANNELS_PER_SESSION {
                return Err(ChannelsError::TooMany);
            }
            if !self.allows(&channel) {
                return Err(ChannelsError::Forbidden(channel));
            }
            channels.push(channel);
        }
        Ok(channels)
    }
}

/// The names in a `channels=a,b` query parameter: none for a wholly empty one; otherwise every
/// entry, an empty one (`a,,b`) included, for [`ChannelGrant::admit`] to refuse.
pub fn split_list(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').filter(move |_| !list.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(Channel::new("order:1042").is_ok());
        assert!(Channel::new("a/b@c.d-e_f").is_ok());
        for bad in ["", "a b", "a*", "a,b", "é", &"x".repeat(129)] {
            assert_eq!(Channel::new(bad), Err(InvalidChannel), "{bad:?}");
        }
    }

    #[test]
    fn grants_allow_exact_names_and_prefixes() {
        let grant = ChannelGrant::from_claim(["team:support", "order:*"]).unwrap();
        let allows = |name| grant.allows(&Channel::new(name).unwrap());
        assert!(allows("team:support") && allows("order:7") && allows("order:"));
        assert!(!allows("team:sales") && !allows("orders") && !allows("team:support2"));
        let all = ChannelGrant::from_claim(["*"]).unwrap();
        assert!(all.allows(&Channel::new("anything").unwrap()));
        assert!(!ChannelGrant::default().allows(&Channel::new("a").unwrap()));
        assert!(ChannelGrant::from_claim(["a b"]).is_err());
        assert!(ChannelGrant::from_claim(["a*b"]).is_err());
    }

    #[test]
    fn lists_are_admitted_or_refused_with_a_code() {
        let grant = ChannelGrant::from_claim(["order:*"]).unwrap();
        let admitted = grant.admit(split_list("order:1,order:2,order:1")).unwrap();
        assert_eq!(admitted.len(), 2);
        assert!(grant.admit(split_list("")).unwrap().is_empty());
        let code = |list| grant.admit(split_list(list)).unwrap_err().code();
        assert_eq!(code("order:1,"), "invalid-channel");
        assert_eq!(code("order:1,,order:2"), "invalid-channel");
        assert_eq!(code("order:1,doc:1"), "channel-forbidden");
        assert_eq!(code("order 1"), "invalid-channel");
        let many: Vec<String> = (0..=MAX_CHANNELS_PER_SESSION)
            .map(|i| format!("order:{i}"))
            .collect();
        assert_eq!(code(&many.join(",")), "too-many-channels");
    }
}
