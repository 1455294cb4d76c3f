//! Header handling for the port proxy: hop-by-hop removal, `X-Forwarded-*`, and `Location`
//! rewriting so redirects issued by a guest app stay under its `/proxy/{id}/{port}` prefix.

use crate::server::ConnectionInfo;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::SocketAddr;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one connection and must not be forwarded (RFC 9110 §7.6.1), plus the
/// de-facto `Keep-Alive` and `Proxy-Connection`.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The protocol a request asks to switch to, when it is an upgrade request
/// (`Connection: upgrade` plus `Upgrade: <protocol>`).
pub(super) fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    if connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade")) {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers, including any the `Connection` header names. When `upgrade` is
/// given, the upgrade handshake headers are put back: they are hop-by-hop too, but a proxy
/// that passes an upgrade through must repeat them on the next hop.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
}

/// Prepares the headers of a request for the guest.
///
/// `Host` becomes the target (`ip:port`), as the guest app would see it when called directly.
/// The client's view is passed in `X-Forwarded-*`. The only client of the agent is the control
/// plane (mTLS), which is trusted: `X-Forwarded-Host`/`-Proto` it already set (the user-facing
/// host and scheme) are kept, and its address is appended to `X-Forwarded-For`.
pub(super) fn forward_request_headers(
    headers: &mut HeaderMap,
    upgrade: Option<&HeaderValue>,
    target: SocketAddr,
    conn: Option<&ConnectionInfo>,
) {
    let original_host = headers.get(header::HOST).cloned();
    strip_hop_by_hop(headers, upgrade);
    if let Ok(host) = HeaderValue::from_str(&target.to_string()) {
        headers.insert(header::HOST, host);
    }
    if !headers.contains_key(&X_FORWARDED_HOST)
        && let Some(host) = original_host
    {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        let proto = match conn {
            Some(c) if c.tls => "https",
            _ => "http",
        };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if let Some(conn) = conn {
        let peer = conn.peer.ip().to_string();
        let joined = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prior) if !prior.trim().is_empty() => format!("{prior}, {peer}"),
            _ => peer,
        };
        if let Ok(v) = HeaderValue::from_str(&joined) {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
    }
}

/// Rewrites `Location` and `Content-Location` of a guest response so they point back through
/// the proxy. The control plane strips the prefix again for subdomain-proxied requests.
pub(super) fn rewrite_locations(headers: &mut HeaderMap, id: &str, target: SocketAddr) {
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some(rewritten) = rewrite_location(value, id, target)
            && let Ok(v) = HeaderValue::from_str(&rewritten)
        {
            headers.insert(name, v);
        }
    }
}

/// `http://<ip>:<port>/p` and root-relative `/p` become `/proxy/<id>/<port>/p`; anything else
/// (other hosts, relative paths, which already resolve under the prefix) is left alone.
pub(super) fn rewrite_location(value: &str, id: &str, target: SocketAddr) -> Option<String> {
    let prefix = format!("/proxy/{id}/{}", target.port());
    let authority = target.to_string();
    // Apps commonly drop the default port when they echo the Host back.
    let bare_host = (target.port() == 80).then(|| match target {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    });
    let after_scheme = ["http://", "https://", "//"]
        .iter()
        .find_map(|scheme| strip_prefix_ignore_case(value, scheme));
    if let Some(rest) = after_scheme {
        let path = [Some(authority.as_str()), bare_host.as_deref()]
            .into_iter()
            .flatten()
            .find_map(|a| {
                strip_prefix_ignore_case(rest, a)
                    .filter(|p| p.is_empty() || p.starts_with(['/', '?', '#']))
            })?;
        return Some(match path {
            "" => format!("{prefix}/"),
            p if p.starts_with('/') => format!("{prefix}{p}"),
            p => format!("{prefix}/{p}"),
        });
    }
    if value.starts_with('/') {
        return Some(format!("{prefix}{value}"));
    }
    None
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> SocketAddr {
        "10.11.0.2:8080".parse().expect("addr")
    }

    #[test]
    fn locations() {
        let t = target();
        let r = |v: &str| rewrite_location(v, "sb1", t);
        assert_eq!(
            r("http://10.11.0.2:8080/p?q=1").as_deref(),
            Some("/proxy/sb1/8080/p?q=1")
        );
        assert_eq!(
            r("HTTP://10.11.0.2:8080").as_deref(),
            Some("/proxy/sb1/8080/")
        );
        assert_eq!(
            r("http://10.11.0.2:8080?x").as_deref(),
            Some("/proxy/sb1/8080/?x")
        );
        assert_eq!(r("/login").as_deref(), Some("/proxy/sb1/8080/login"));
        assert_eq!(r("/").as_deref(), Some("/proxy/sb1/8080/"));
        assert_eq!(r("https://example.com/x"), None);
        assert_eq!(r("http://10.11.0.2:80801/x"), None);
        assert_eq!(r("//example.com/x"), None);
        assert_eq!(r("relative/x"), None);
        let t80: SocketAddr = "10.11.0.2:80".parse().expect("addr");
        assert_eq!(
            rewrite_location("http://10.11.0.2/a", "sb1", t80).as_deref(),
            Some("/proxy/sb1/80/a")
        );
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn upgrade_survives() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let up = requested_upgrade(&h).expect("upgrade");
        strip_hop_by_hop(&mut h, Some(&up));
        assert_eq!(
            h.get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
        assert_eq!(
            h.get(header::UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("agent.example:50051"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        let conn = ConnectionInfo {
            peer: "192.0.2.1:5555".parse().expect("addr"),
            tls: true,
        };
        forward_request_headers(&mut h, None, target(), Some(&conn));
        assert_eq!(h[header::HOST], "10.11.0.2:8080");
        assert_eq!(h["x-forwarded-host"], "agent.example:50051");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 192.0.2.1");
    }
}
