//! JIDs (RFC 7622): the `jid` crate's typed [`Jid`], [`BareJid`] and [`FullJid`],
//! normalized once where a JID enters (a stanza's `to`, a payload's `jid` attribute, the
//! CLI, config) and passed typed from there on, so no layer re-parses or compares
//! unnormalized strings.

pub use jid::{BareJid, DomainPart, DomainRef, FullJid, Jid};

/// Parses and normalizes; `None` if the JID is malformed.
pub fn parse(s: &str) -> Option<Jid> {
    let jid = Jid::new(s).ok()?;
    // The `jid` crate's normalization is not always idempotent on non-ASCII input: in a
    // domain, U+03F9 (Ϲ) becomes Σ, which a second pass lowercases to σ. Such a JID
    // would have two normal forms that compare unequal (one account or domain under two
    // keys), so it is refused. ASCII input is always stable.
    if !s.is_ascii() && Jid::new(jid.as_str()).ok().as_ref() != Some(&jid) {
        return None;
    }
    Some(jid)
}

/// A bare JID (`node@domain` or a domain); `None` if malformed or if it has a resource.
pub fn parse_bare(s: &str) -> Option<BareJid> {
    parse(s)?.try_into().ok()
}

/// A full JID; `None` if malformed or without a resource.
pub fn parse_full(s: &str) -> Option<FullJid> {
    parse(s)?.try_into().ok()
}

/// A domain (a JID with neither node nor resource).
pub fn parse_domain(s: &str) -> Option<DomainPart> {
    let jid = parse_bare(s)?;
    match jid.node() {
        None => Some(jid.domain().to_owned()),
        Some(_) => None,
    }
}

/// The JID of a domain.
pub fn domain_jid(domain: &DomainRef) -> BareJid {
    BareJid::from(domain)
}

/// The bare part of `jid` as a slice of its normalized form (no allocation, for hot-path
/// lookups keyed by bare JID).
pub fn bare_str(jid: &Jid) -> &str {
    let s = jid.as_str();
    match jid.resource() {
        Some(r) => &s[..s.len() - r.as_str().len() - 1],
        None => s,
    }
}

/// Whether `jid` is an account's JID (has a node) or its full JID.
pub fn is_account(jid: &Jid) -> bool {
    jid.node().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_of_node_and_domain_not_resource() {
        let a = parse("Juliet@Example.COM/Balcony").unwrap();
        assert_eq!(a.as_str(), "juliet@example.com/Balcony");
        assert_eq!(a.to_bare().as_str(), "juliet@example.com");
        assert!(parse_bare("juliet@example.com/balcony").is_none());
        assert!(parse_full("juliet@example.com").is_none());
        assert_eq!(parse_domain("Example.COM").unwrap().as_str(), "example.com");
        assert!(parse_domain("a@example.com").is_none());
    }

    #[test]
    fn bare_str_is_the_bare_part_of_the_normal_form() {
        assert_eq!(bare_str(&parse("A@B.example/r/x").unwrap()), "a@b.example");
        assert_eq!(bare_str(&parse("a@b.example").unwrap()), "a@b.example");
        assert_eq!(bare_str(&parse("b.example/r@x").unwrap()), "b.example");
    }

    #[test]
    fn rejects_malformed() {
        assert!(parse("@example.com").is_none());
        assert!(parse("a@b@c").is_none());
        assert!(parse("").is_none());
    }

    #[test]
    fn refuses_jids_whose_normal_form_is_not_stable() {
        // Found by fuzz/ (jid target): "Ϲ" normalizes to "Σ", and that to "σ".
        assert!(parse("eeeeeep\u{159}\u{3f9}\u{1d8}").is_none());
        assert!(parse("juliet@\u{3f9}.example/r").is_none());
        assert!(parse_bare("\u{3f9}.example").is_none());
        // Non-ASCII JIDs that are stable stay accepted.
        let a = parse("\u{158}ekni@\u{17d}lu\u{165}.cz/\u{2603}").unwrap();
        assert_eq!(a.as_str(), "\u{159}ekni@\u{17e}lu\u{165}.cz/\u{2603}");
        assert_eq!(
            parse("x@\u{3c3}.example").unwrap().domain().as_str(),
            "\u{3c3}.example"
        );
    }
}
