//! The port-proxy URL `<scheme>://<port>-<capsule-id>.<domain>`, resolved exactly as the SDK's
//! `Capsule.get_url` does (client contract §7.1), so the CLI and the SDK print the same URL.

use reqwest::Url;

/// The production API host, whose proxy domain is `wrenn.dev`.
const PRODUCTION_API_HOST: &str = "app.wrenn.dev";
const PRODUCTION_PROXY_DOMAIN: &str = "wrenn.dev";

/// The proxy domain: an explicit one (flag or `WRENN_PROXY_DOMAIN`) wins; else `wrenn.dev` for
/// the production host; else the base URL's `host[:port]` (the proxy shares the API listener).
pub fn proxy_domain(base: &Url, explicit: Option<&str>) -> String {
    if let Some(domain) = explicit.map(str::trim).filter(|domain| !domain.is_empty()) {
        return domain.to_owned();
    }
    let host = base.host_str().unwrap_or_default();
    if host == PRODUCTION_API_HOST {
        return PRODUCTION_PROXY_DOMAIN.to_owned();
    }
    match base.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// `http` when the API is plain `http` (or `ws`), `https` otherwise; the base path is dropped.
pub fn proxy_url(base: &Url, explicit_domain: Option<&str>, capsule_id: &str, port: u16) -> String {
    let scheme = match base.scheme() {
        "http" | "ws" => "http",
        _ => "https",
    };
    let domain = proxy_domain(base, explicit_domain);
    format!("{scheme}://{port}-{capsule_id}.{domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).expect("valid url")
    }

    #[test]
    fn local_base_url_keeps_host_and_port_and_drops_the_path() {
        assert_eq!(
            proxy_url(&url("http://127.0.0.1:8080/api"), None, "cl-abc", 8000),
            "http://8000-cl-abc.127.0.0.1:8080"
        );
    }

    #[test]
    fn production_host_maps_to_wrenn_dev() {
        assert_eq!(
            proxy_url(&url("https://app.wrenn.dev/api"), None, "cl-abc", 3000),
            "https://3000-cl-abc.wrenn.dev"
        );
    }

    #[test]
    fn explicit_domain_wins_and_default_port_is_dropped() {
        assert_eq!(
            proxy_url(
                &url("https://api.example.com:443"),
                Some("box.example.com"),
                "cl-x",
                80
            ),
            "https://80-cl-x.box.example.com"
        );
        assert_eq!(
            proxy_url(&url("https://api.example.com"), Some("  "), "cl-x", 80),
            "https://80-cl-x.api.example.com"
        );
    }
}
