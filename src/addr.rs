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
    fn splits_normalized_strings() {
        assert_eq!(bare_of("a@b/c/d"), "a@b");
        assert_eq!(domain_of("a@b/c"), "b");
        assert_eq!(domain_of("b"), "b");
    }
}
