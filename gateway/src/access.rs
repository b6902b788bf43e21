//! Internal vs external connections (spec "Internal vs External"): pm3 and
//! admin routes are served only to peers on loopback or private networks
//! that are not relaying a public client.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

/// Routes anyone may call; everything else is internal-only. `/rstmdb`
/// has rstmdb's own bearer tokens instead.
pub(crate) const PUBLIC_ROUTES: [&str; 5] = ["/health", "/ready", "/ping", "/version", "/rstmdb"];

pub(crate) fn is_public_route(path: &str) -> bool {
    PUBLIC_ROUTES.contains(&path)
}

/// Loopback or private (10/8, 172.16/12, 192.168/16, fc00::/7). IPv4-mapped
/// IPv6 addresses (a dual-stack listener) are judged as IPv4.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// One `X-Forwarded-For` element: a bare address, `addr:port`, or `[v6]:port`.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })
}

/// Decides whether a request is internal. Fails closed: no known peer
/// address (served without connect info), a public peer, a public address
/// anywhere in `X-Forwarded-For`, or an element that cannot be parsed (we
/// cannot tell it is private) all make the request external.
pub(crate) fn is_internal(peer: Option<SocketAddr>, headers: &HeaderMap) -> bool {
    let Some(peer) = peer else { return false };
    if !is_private(peer.ip()) {
        return false;
    }
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return false;
        };
        for entry in value.split(',').filter(|e| !e.trim().is_empty()) {
            match parse_forwarded(entry) {
                Some(ip) if is_private(ip) => {}
                _ => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "::1",
            "fd00::1",
            "fc00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "2001:db8::1",
            "fe80::1",
            "::ffff:1.1.1.1",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn forwarded_for_decides_for_private_peers() {
        let none = HeaderMap::new();
        assert!(is_internal(addr("10.0.0.2:5000"), &none));
        assert!(!is_internal(addr("1.2.3.4:5000"), &none));
        assert!(!is_internal(None, &none));

        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("10.0.0.9, [::1]:80"),
        );
        assert!(is_internal(addr("127.0.0.1:1"), &h));
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("10.0.0.9, 203.0.113.7:443"),
        );
        assert!(!is_internal(addr("127.0.0.1:1"), &h));
        h.insert("x-forwarded-for", HeaderValue::from_static("unknown"));
        assert!(!is_internal(addr("127.0.0.1:1"), &h));
    }
}
