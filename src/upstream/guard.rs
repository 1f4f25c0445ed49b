//! Keeps a public upstream from steering the proxy into the network it runs in (SSRF).
//!
//! An upstream whose configured host is public may send us elsewhere: a redirect (`Location`)
//! or a token realm (`WWW-Authenticate`). For such an upstream every host we connect to must be
//! public too: host names are resolved through [`PublicOnlyResolver`], which drops internal
//! addresses, and IP literals (which bypass resolvers) are checked by [`check_url`]. An upstream
//! configured with an internal address (a LAN registry, tests) is trusted to point anywhere.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Loopback, private, link-local, shared (CGNAT), unspecified, multicast, documentation and other
/// non-global ranges, for IPv4 and IPv6 (including IPv4-mapped IPv6).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg0 & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (seg0 & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || seg0 == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
                || seg0 == 0x0064 && v6.segments()[1] == 0xff9b // NAT64 64:ff9b::/96
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240 // reserved
}

/// Whether an upstream configured at `url` counts as public (and so gets the guard).
pub fn is_public_upstream(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => !is_internal(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => !is_internal(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            !(d == "localhost" || d.ends_with(".localhost") || d.ends_with(".internal"))
        }
        None => false,
    }
}

/// A URL a public upstream sent us to that names an internal host.
#[derive(Debug, thiserror::Error)]
#[error("refused to follow a public upstream to the internal address {host}")]
pub struct InternalAddress {
    pub host: String,
}

/// Refuses a URL a public upstream sent us to when it names an internal host outright.
pub fn check_url(url: &Url) -> Result<(), InternalAddress> {
    let internal = match url.host() {
        Some(url::Host::Ipv4(ip)) => is_internal(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_internal(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        None => true,
    };
    if internal {
        Err(InternalAddress {
            host: url.host_str().unwrap_or("").to_owned(),
        })
    } else {
        Ok(())
    }
}

/// Resolves with the system resolver and keeps only public addresses.
pub struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_internal(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(Refused(format!(
                    "refused to connect a public upstream to {host}: it resolves only to internal addresses"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The error of [`PublicOnlyResolver`] for a name with only internal addresses. It reaches the
/// caller wrapped in reqwest's connect error; [`refusal`] finds it there, so that the refusal is
/// reported as such (and not retried) instead of as a failed connection.
#[derive(Debug)]
pub struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The guard's refusal somewhere in the source chain of `err`, if that is why it failed.
pub fn refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_ranges_are_recognised() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "198.18.0.1",
            "240.0.0.1",
        ] {
            assert!(is_internal(ip(s)), "{s} should be internal");
        }
        for s in [
            "1.1.1.1",
            "52.95.110.1",
            "2606:4700::1111",
            "100.128.0.1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(ip(s)), "{s} should be public");
        }
    }

    #[test]
    fn public_upstreams_and_redirect_targets() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(is_public_upstream(&u("https://registry-1.docker.io")));
        assert!(!is_public_upstream(&u("http://127.0.0.1:5001")));
        assert!(!is_public_upstream(&u("http://registry.localhost")));
        assert!(!is_public_upstream(&u("http://10.0.0.5:5000")));
        assert!(check_url(&u("https://production.cloudflare.docker.com/x")).is_ok());
        for bad in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:2375/",
            "http://[::1]/",
            "http://localhost/",
            "http://10.0.0.1/",
            "http://[::ffff:a9fe:a9fe]/",
        ] {
            assert!(check_url(&u(bad)).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_resolver_drops_internal_addresses() {
        let r = PublicOnlyResolver;
        let name: Name = "localhost".parse().unwrap();
        let err = r.resolve(name).await;
        assert!(
            err.is_err(),
            "localhost must not resolve for a public upstream"
        );
    }

    #[tokio::test]
    async fn the_refusal_is_found_in_a_client_error() {
        let client = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(PublicOnlyResolver))
            .build()
            .unwrap();
        let err = client.get("http://localhost:9/").send().await.unwrap_err();
        let refused = refusal(&err).expect("the resolver's refusal in the error chain");
        assert!(
            refused
                .to_string()
                .contains("localhost: it resolves only to internal addresses"),
            "{refused}"
        );
        let other = std::io::Error::other("connection refused");
        assert!(refusal(&other).is_none());
    }
}
