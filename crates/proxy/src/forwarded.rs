//! `X-Forwarded-For/Proto/Host`: off by default; when on, incoming values are believed only
//! from configured proxy addresses.
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Parsed `[forwarded]` settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct Forwarded {
    pub enabled: bool,
    pub trusted: Vec<IpNet>,
}

impl Forwarded {
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the peer, or — when the peer is a trusted proxy — the rightmost
    /// `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all(&XFF)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        hops.into_iter()
            .rev()
            .find(|ip| !self.is_trusted(*ip))
            .unwrap_or(peer)
    }

    /// Rewrites the forwarded headers of an upstream request. `original_host` is the
    /// client's `Host` (or `:authority`).
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        peer: IpAddr,
        tls: bool,
        original_host: Option<HeaderValue>,
    ) {
        if !self.enabled {
            return;
        }
        let trusted = self.is_trusted(peer);
        let prior_for = if trusted {
            let joined: Vec<&str> = headers
                .get_all(&XFF)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!joined.is_empty()).then(|| joined.join(", "))
        } else {
            None
        };
        let xff = match prior_for {
            Some(prior) => format!("{prior}, {peer}"),
            None => peer.to_string(),
        };
        let own_proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        let proto = match (trusted, headers.get(&XFP)) {
            (true, Some(v)) => v.clone(),
            _ => own_proto,
        };
        let host = match (trusted, headers.get(&XFH)) {
            (true, Some(v)) => Some(v.clone()),
            _ => original_host,
        };
        headers.remove(&XFF);
        headers.remove(&XFP);
        headers.remove(&XFH);
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert(XFF, v);
        }
        headers.insert(XFP, proto);
        if let Some(h) = host {
            headers.insert(XFH, h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fw() -> Forwarded {
        Forwarded {
            enabled: true,
            trusted: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    #[test]
    fn untrusted_peer_cannot_spoof() {
        let mut h = HeaderMap::new();
        h.insert(XFF, "1.2.3.4".parse().unwrap());
        h.insert(XFP, "https".parse().unwrap());
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(fw().client_ip(peer, &h), peer);
        fw().apply(&mut h, peer, false, Some("gw.example".parse().unwrap()));
        assert_eq!(h[XFF], "203.0.113.9");
        assert_eq!(h[XFP], "http");
        assert_eq!(h[XFH], "gw.example");
    }

    #[test]
    fn trusted_peer_is_extended() {
        let mut h = HeaderMap::new();
        h.insert(XFF, "198.51.100.1, 10.0.0.2".parse().unwrap());
        h.insert(XFP, "https".parse().unwrap());
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            fw().client_ip(peer, &h),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        fw().apply(&mut h, peer, false, None);
        assert_eq!(h[XFF], "198.51.100.1, 10.0.0.2, 10.0.0.1");
        assert_eq!(h[XFP], "https");
    }

    #[test]
    fn disabled_leaves_headers_alone() {
        let mut h = HeaderMap::new();
        h.insert(XFF, "1.2.3.4".parse().unwrap());
        Forwarded::default().apply(&mut h, "10.0.0.1".parse().unwrap(), true, None);
        assert_eq!(h[XFF], "1.2.3.4");
        assert!(h.get(XFP).is_none());
    }
}
