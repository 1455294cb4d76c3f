//! Header handling for reverse proxies: hop-by-hop removal, `X-Forwarded-*`, and `Location`
//! rewriting (into a path prefix on the agent, out of it again on the control plane).

use crate::server::ConnectionInfo;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::SocketAddr;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

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
/// (`Connection: upgrade` plus `Upgrade: <protocol>`, e.g. a WebSocket handshake).
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
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
/// given (from [`requested_upgrade`], or the `Upgrade` of a 101 response), the upgrade
/// handshake headers are put back: they are hop-by-hop too, but a proxy that passes an upgrade
/// through must repeat them on the next hop. Use on requests before sending them on and on
/// responses before returning them.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
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

/// Prepares the headers of a request for the next hop.
///
/// Strips hop-by-hop headers (keeping an `upgrade` handshake), sets `Host` to `host` (the next
/// hop's authority, e.g. the guest's `ip:port`), and passes the client's view on in
/// `X-Forwarded-*`: `X-Forwarded-Host` and `-Proto` already present are kept (a trusted proxy in
/// front set them: the user-facing host and scheme), otherwise they become the incoming `Host`
/// and the connection's scheme; the peer address from `conn` is appended to `X-Forwarded-For`.
/// A proxy facing untrusted clients should remove incoming `X-Forwarded-*` first.
pub fn forward_request_headers(
    headers: &mut HeaderMap,
    upgrade: Option<&HeaderValue>,
    host: &str,
    conn: Option<&ConnectionInfo>,
) {
    let original_host = headers.get(header::HOST).cloned();
    strip_hop_by_hop(headers, upgrade);
    if let Ok(host) = HeaderValue::from_str(host) {
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

/// Applies `rewrite` to the `Location` and `Content-Location` of a response; `None` leaves the
/// header as it is. See [`location_under_prefix`] and [`location_without_prefix`].
pub fn rewrite_locations(headers: &mut HeaderMap, rewrite: impl Fn(&str) -> Option<String>) {
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some(rewritten) = rewrite(value)
            && let Ok(v) = HeaderValue::from_str(&rewritten)
        {
            headers.insert(name, v);
        }
    }
}

/// The agent's rewrite: a redirect to the guest itself (`http://<target>/p`) or root-relative
/// (`/p`) becomes `<prefix>/p` (the agent's prefix is `/proxy/<id>/<port>`), so it keeps going
/// through the proxy. Anything else (other hosts, relative paths, which already resolve under
/// the prefix) is left alone.
pub fn location_under_prefix(value: &str, target: SocketAddr, prefix: &str) -> Option<String> {
    let prefix = prefix.trim_end_matches('/');
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

/// The control plane's rewrite for subdomain-proxied traffic: the agent answers with locations
/// under its `/proxy/<id>/<port>` prefix, which mean nothing on `{port}-{id}.{domain}`.
/// `<prefix>/p` becomes `/p` and `<prefix>` alone becomes `/`; anything else is left alone.
pub fn location_without_prefix(value: &str, prefix: &str) -> Option<String> {
    let prefix = prefix.trim_end_matches('/');
    let rest = value.strip_prefix(prefix)?;
    match rest {
        "" => Some("/".to_owned()),
        r if r.starts_with('/') => Some(r.to_owned()),
        r if r.starts_with(['?', '#']) => Some(format!("/{r}")),
        // `/proxy/sb1/80801`: another port, not ours.
        _ => None,
    }
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
    fn locations_into_the_prefix() {
        let t = target();
        let r = |v: &str| location_under_prefix(v, t, "/proxy/sb1/8080");
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
            location_under_prefix("http://10.11.0.2/a", t80, "/proxy/sb1/80").as_deref(),
            Some("/proxy/sb1/80/a")
        );
    }

    #[test]
    fn locations_out_of_the_prefix() {
        let r = |v: &str| location_without_prefix(v, "/proxy/sb1/8080");
        assert_eq!(r("/proxy/sb1/8080/login?x").as_deref(), Some("/login?x"));
        assert_eq!(r("/proxy/sb1/8080").as_deref(), Some("/"));
        assert_eq!(r("/proxy/sb1/8080?x").as_deref(), Some("/?x"));
        assert_eq!(r("/proxy/sb1/80801/x"), None);
        assert_eq!(r("https://example.com/x"), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("/proxy/sb1/8080/a"),
        );
        h.insert(
            header::CONTENT_LOCATION,
            HeaderValue::from_static("https://elsewhere/"),
        );
        rewrite_locations(&mut h, |v| location_without_prefix(v, "/proxy/sb1/8080"));
        assert_eq!(h[header::LOCATION], "/a");
        assert_eq!(h[header::CONTENT_LOCATION], "https://elsewhere/");
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
        forward_request_headers(&mut h, None, "10.11.0.2:8080", Some(&conn));
        assert_eq!(h[header::HOST], "10.11.0.2:8080");
        assert_eq!(h["x-forwarded-host"], "agent.example:50051");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 192.0.2.1");
    }
}
