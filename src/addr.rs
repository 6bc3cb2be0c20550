//! JID parsing and normalization (RFC 7622 via the `jid` crate's stringprep profiles),
//! reduced to the owned parts the router works with.

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Addr {
    pub node: Option<String>,
    pub domain: String,
    pub resource: Option<String>,
}

impl Addr {
    /// Parses and normalizes; `None` if the JID is malformed.
    pub fn parse(s: &str) -> Option<Addr> {
        let addr = Self::parse_once(s)?;
        // The `jid` crate's normalization is not always idempotent on non-ASCII input: in
        // a domain, U+03F9 (Ϲ) becomes Σ, which a second pass lowercases to σ. Such a JID
        // would have two normal forms that compare unequal (one account or domain under
        // two keys), so it is refused. ASCII input is always stable.
        if !s.is_ascii() && Self::parse_once(&addr.full()).as_ref() != Some(&addr) {
            return None;
        }
        Some(addr)
    }

    fn parse_once(s: &str) -> Option<Addr> {
        let jid = jid::Jid::new(s).ok()?;
        Some(Addr {
            node: jid.node().map(|n| n.as_str().to_string()),
            domain: jid.domain().as_str().to_string(),
            resource: jid.resource().map(|r| r.as_str().to_string()),
        })
    }

    /// `node@domain`, or the domain alone.
    pub fn bare(&self) -> String {
        match &self.node {
            Some(n) => format!("{n}@{}", self.domain),
            None => self.domain.clone(),
        }
    }

    pub fn full(&self) -> String {
        match &self.resource {
            Some(r) => format!("{}/{r}", self.bare()),
            None => self.bare(),
        }
    }
}

/// Normalizes a bare JID string; `None` if malformed or if it carries a resource.
pub fn normalize_bare(s: &str) -> Option<String> {
    let a = Addr::parse(s)?;
    if a.resource.is_some() {
        return None;
    }
    Some(a.bare())
}

/// The bare part of an already-normalized JID string.
pub fn bare_of(full: &str) -> &str {
    full.split_once('/').map_or(full, |(b, _)| b)
}

/// The domain of an already-normalized JID string.
pub fn domain_of(jid: &str) -> &str {
    let bare = bare_of(jid);
    bare.split_once('@').map_or(bare, |(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_of_node_and_domain_not_resource() {
        let a = Addr::parse("Juliet@Example.COM/Balcony").unwrap();
        assert_eq!(a.full(), "juliet@example.com/Balcony");
        assert_eq!(a.bare(), "juliet@example.com");
    }

    #[test]
    fn rejects_malformed() {
        assert!(Addr::parse("@example.com").is_none());
        assert!(Addr::parse("a@b@c").is_none());
        assert!(Addr::parse("").is_none());
    }

    #[test]
    fn refuses_jids_whose_normal_form_is_not_stable() {
        // Found by fuzz/ (jid target): "Ϲ" normalizes to "Σ", and that to "σ".
        assert!(Addr::parse("eeeeeep\u{159}\u{3f9}\u{1d8}").is_none());
        assert!(Addr::parse("juliet@\u{3f9}.example/r").is_none());
        assert!(normalize_bare("\u{3f9}.example").is_none());
        // Non-ASCII JIDs that are stable stay accepted.
        let a = Addr::parse("\u{158}ekni@\u{17d}lu\u{165}.cz/\u{2603}").unwrap();
        assert_eq!(a.full(), "\u{159}ekni@\u{17e}lu\u{165}.cz/\u{2603}");
        assert_eq!(
            Addr::parse("x@\u{3c3}.example").unwrap().domain,
            "\u{3c3}.example"
        );
    }

    #[test]
    fn splits_normalized_strings() {
        assert_eq!(bare_of("a@b/c/d"), "a@b");
        assert_eq!(domain_of("a@b/c"), "b");
        assert_eq!(domain_of("b"), "b");
    }
}
