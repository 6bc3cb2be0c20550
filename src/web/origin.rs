//! Which web pages may use the server's web transports. Browsers always send `Origin`
//! (RFC 6455 §4.1, and on cross-site requests), so a page of another site cannot use a
//! visitor's browser (and its network position) to talk to this server unless allowed.

/// Whether a page at `origin` may use this server's web transports (WebSocket, BOSH),
/// reached as `host` (the request's `Host`): when `allowed` lists it (or `*`, any page),
/// or when it was served by that same host and
/// the host is one of ours (`is_local_domain`, `localhost` or an IP address). Another name
/// could be an attacker's domain pointed at this server (DNS rebinding).
pub fn origin_allowed(
    origin: &str,
    host: Option<&str>,
    allowed: &[String],
    is_local_domain: impl Fn(&str) -> bool,
) -> bool {
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let page_host = origin.split_once("://").and_then(|(scheme, authority)| {
        let web = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
        (web && !authority.contains(['/', '@', '?', '#'])).then(|| host_only(authority))
    });
    let (Some(page_host), Some(host)) = (page_host, host.map(host_only)) else {
        return false;
    };
    if page_host.is_empty() || !page_host.eq_ignore_ascii_case(host) {
        return false;
    }
    let host = host.to_ascii_lowercase();
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok() || is_local_domain(&host)
}

/// `host[:port]` or `[v6]:port` without the port (and brackets).
fn host_only(authority: &str) -> &str {
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map_or(authority, |(ip, _)| ip);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let ours = |d: &str| d == "example.org";
        let ok = |origin: &str, host: &str, allowed: &[&str]| {
            let allowed: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
            origin_allowed(origin, Some(host), &allowed, ours)
        };
        // Same host, any port or scheme, when the host is ours.
        assert!(ok("http://localhost:8080", "localhost:5280", &[]));
        assert!(ok("https://Example.org", "example.org:5281", &[]));
        assert!(ok("http://127.0.0.1", "127.0.0.1:5280", &[]));
        assert!(ok("http://[::1]:3000", "[::1]:5280", &[]));
        // Other hosts, and names that are not ours (DNS rebinding).
        assert!(!ok("https://evil.example", "example.org", &[]));
        assert!(!ok("http://evil.example:5280", "evil.example:5280", &[]));
        assert!(!ok("http://127.0.0.2", "127.0.0.1:5280", &[]));
        assert!(!ok("null", "localhost:5280", &[]));
        assert!(!ok("file://", "localhost:5280", &[]));
        assert!(!ok("http://localhost@evil.example", "localhost", &[]));
        assert!(!ok("http://", "localhost", &[]));
        assert!(!origin_allowed("http://localhost", None, &[], ours));
        // Listed origins, exactly (scheme and port included).
        let listed = ["https://chat.example.net", "null"];
        assert!(ok("https://chat.example.net", "example.org", &listed));
        assert!(ok("HTTPS://CHAT.example.net", "example.org", &listed));
        assert!(ok("null", "example.org", &listed));
        assert!(!ok("http://chat.example.net", "example.org", &listed));
        assert!(!ok("https://chat.example.net:8443", "example.org", &listed));
        assert!(ok("https://evil.example", "example.org", &["*"]));
    }
}
