//! Which addresses outbound webhooks may reach. An `outbound_url` is given by whoever holds the
//! server API key, and Switchboard itself makes the request, from inside its own network: left
//! open, it would reach the database's port, a cloud's metadata service or an admin page on
//! loopback (server-side request forgery). So, by default, only public addresses are reached;
//! `SWITCHBOARD_OUTBOUND_ALLOW_PRIVATE` adds loopback and private networks for a backend on
//! premises. Link-local addresses and the cloud metadata services are never reached.
//!
//! Checked twice: when an integration is created, on the URL as written ([`Policy::check_url`]);
//! and on every request, on the addresses actually connected to — an IP literal before the
//! request ([`Policy::check_literal`]), a name by the HTTP client's resolver ([`Resolver`]),
//! which hands the connector only the addresses allowed. A name that resolves to a public
//! address when checked and to loopback when used (DNS rebinding) therefore gains nothing.
//!
//! Uses nothing of Switchboard's; the dispatcher and the integrations API use it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Longest `outbound_url` accepted.
const MAX_URL_BYTES: usize = 2048;

/// Cloud metadata services on addresses that are not link-local: Alibaba's (in the shared
/// address space) and AWS's IPv6 one (a unique local address). 169.254.169.254 is link-local.
const METADATA: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// Where an address is, as far as reaching it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// The internet.
    Public,
    /// This machine or its private networks: reached only when allowed.
    Private,
    /// Link-local, metadata, unspecified, multicast, broadcast, reserved, documentation:
    /// never a webhook receiver.
    Never,
}

fn reach(ip: IpAddr) -> Reach {
    if METADATA.contains(&ip) {
        return Reach::Never;
    }
    match ip {
        IpAddr::V4(ip) => reach_v4(ip),
        IpAddr::V6(ip) => reach_v6(ip),
    }
}

fn reach_v4(ip: Ipv4Addr) -> Reach {
    let [a, b, c, _] = ip.octets();
    let shared = a == 100 && (b & 0xc0) == 64; // 100.64.0.0/10, carrier-grade NAT
    let this_network = a == 0; // 0.0.0.0/8
    let protocol_assignments = a == 192 && b == 0 && c == 0; // 192.0.0.0/24
    let benchmarking = a == 198 && (b & 0xfe) == 18; // 198.18.0.0/15
    let reserved = a >= 240; // 240.0.0.0/4 and the broadcast address
    if ip.is_loopback() || ip.is_private() || shared {
        Reach::Private
    } else if this_network
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_documentation()
        || protocol_assignments
        || benchmarking
        || reserved
    {
        Reach::Never
    } else {
        Reach::Public
    }
}

fn reach_v6(ip: Ipv6Addr) -> Reach {
    let segments = ip.segments();
    if ip.is_loopback() {
        return Reach::Private;
    }
    if let Some(v4) = embedded_v4(ip) {
        return reach_v4(v4);
    }
    let site_local = (segments[0] & 0xffc0) == 0xfec0; // fec0::/10, deprecated
    let documentation = segments[0] == 0x2001 && segments[1] == 0xdb8; // 2001:db8::/32
    let teredo = segments[0] == 0x2001 && segments[1] == 0; // 2001::/32 hides an IPv4 address
    let discard = segments[..4] == [0x100, 0, 0, 0]; // 100::/64
    if ip.is_unique_local() {
        Reach::Private
    } else if ip.is_unspecified()
        || ip.is_unicast_link_local()
        || ip.is_multicast()
        || site_local
        || documentation
        || teredo
        || discard
    {
        Reach::Never
    } else {
        Reach::Public
    }
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:127.0.0.1`),
/// IPv4-compatible (`::127.0.0.1`), NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let last = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(mapped) = ip.to_ipv4_mapped() {
        Some(mapped)
    } else if s[..6] == [0; 6] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(last)
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ))
    } else {
        None
    }
}

/// Why a URL or an address may not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    #[error("must be at most {MAX_URL_BYTES} bytes")]
    TooLong,
    #[error("not a URL: {0}")]
    NotUrl(String),
    #[error("must be an http:// or https:// URL")]
    Scheme,
    #[error(
        "{0} is a loopback or private address; set SWITCHBOARD_OUTBOUND_ALLOW_PRIVATE=true for a \
         receiver on premises"
    )]
    Private(String),
    #[error("{0} is a link-local, metadata or reserved address, never reached")]
    Never(String),
    #[error(
        "{0} resolves only to addresses that may not be reached (loopback, private, link-local, \
         metadata or reserved)"
    )]
    Resolved(String),
}

/// What outbound webhooks may reach.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Loopback and private networks too.
    pub allow_private: bool,
}

impl Policy {
    fn check_ip(self, ip: IpAddr) -> Result<(), Refused> {
        match reach(ip) {
            Reach::Public => Ok(()),
            Reach::Private if self.allow_private => Ok(()),
            Reach::Private => Err(Refused::Private(ip.to_string())),
            Reach::Never => Err(Refused::Never(ip.to_string())),
        }
    }

    /// An `outbound_url` as given to the API: http or https, and not to an address (or a name
    /// that always means loopback) that may not be reached. The URL parser reads every form of
    /// an IPv4 address browsers read (`0x7f000001`, `2130706433`, `127.1`), so each is checked
    /// as the address it is.
    pub fn check_url(self, url: &str) -> Result<Url, Refused> {
        let url = self.check_literal(url)?;
        if let Host::Name(name) = host(&url)? {
            let name = name.trim_end_matches('.');
            let loopback = name == "localhost"
                || name.ends_with(".localhost")
                || name == "localhost.localdomain";
            if loopback && !self.allow_private {
                return Err(Refused::Private(name.to_owned()));
            }
        }
        Ok(url)
    }

    /// A URL about to be requested: http or https, and an IP literal host (which the HTTP
    /// client connects to without resolving it) allowed. Names are the [`Resolver`]'s.
    pub fn check_literal(self, url: &str) -> Result<Url, Refused> {
        if url.len() > MAX_URL_BYTES {
            return Err(Refused::TooLong);
        }
        let url = Url::parse(url).map_err(|e| Refused::NotUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused::Scheme);
        }
        if let Host::Ip(ip) = host(&url)? {
            self.check_ip(ip)?;
        }
        Ok(url)
    }
}

/// A URL's host, as the HTTP client will take it.
enum Host<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

/// The parser has already rewritten an IPv4 host in any spelling as dotted decimal.
fn host(url: &Url) -> Result<Host<'_>, Refused> {
    match url.host_str() {
        None | Some("") => Err(Refused::NotUrl("no host".into())),
        Some(host) => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            Ok(bare.parse().map_or(Host::Name(host), Host::Ip))
        }
    }
}

/// The HTTP client's resolver: the system's (getaddrinfo), less the addresses the policy
/// refuses. What it answers is what the client connects to.
pub struct Resolver {
    policy: Policy,
}

impl Resolver {
    pub fn new(policy: Policy) -> Arc<Self> {
        Arc::new(Self { policy })
    }
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = found
                .filter(|addr| policy.check_ip(addr.ip()).is_ok())
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(Refused::Resolved(host)) as _);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Policy = Policy {
        allow_private: false,
    };
    const ON_PREMISES: Policy = Policy {
        allow_private: true,
    };

    #[test]
    fn internal_addresses_in_any_spelling_are_refused() {
        for url in [
            "http://127.0.0.1:8080/x",
            "http://localhost/x",
            "http://LOCALHOST./x",
            "http://api.localhost/x",
            "http://[::1]/x",
            "http://0x7f000001/x",
            "http://2130706433/x",
            "http://127.1/x",
            "http://0177.0.0.1/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://[::ffff:7f00:1]/x",
            "http://[64:ff9b::7f00:1]/x",
            "http://[2002:7f00:1::]/x",
            "http://10.1.2.3/x",
            "http://172.16.0.1/x",
            "http://192.168.1.1/x",
            "http://100.64.0.1/x",
            "http://[fd12::1]/x",
        ] {
            assert!(
                matches!(STRICT.check_url(url), Err(Refused::Private(_))),
                "{url}"
            );
            assert!(ON_PREMISES.check_url(url).is_ok(), "{url}");
        }
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/x",
            "http://[::ffff:169.254.169.254]/x",
            "http://100.100.100.200/x",
            "http://[fd00:ec2::254]/x",
            "http://0.0.0.0/x",
            "http://0/x",
            "http://[::]/x",
            "http://224.0.0.1/x",
            "http://255.255.255.255/x",
            "http://[2001::1]/x",
        ] {
            assert!(
                matches!(ON_PREMISES.check_url(url), Err(Refused::Never(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn public_http_urls_pass() {
        for url in [
            "https://hooks.example.com/switchboard?key=abc",
            "http://93.184.216.34:8080/x",
            "https://[2606:2800:220:1:248:1893:25c8:1946]/x",
            "https://user:pass@app.example/hooks",
        ] {
            assert!(STRICT.check_url(url).is_ok(), "{url}");
        }
        for url in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "example.com",
            "",
        ] {
            assert!(STRICT.check_url(url).is_err(), "{url}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(matches!(STRICT.check_url(&long), Err(Refused::TooLong)));
    }

    #[test]
    fn names_are_left_to_the_resolver_at_request_time() {
        assert!(STRICT.check_literal("http://localhost:9/x").is_ok());
        assert!(STRICT.check_literal("http://127.0.0.1:9/x").is_err());
    }
}
