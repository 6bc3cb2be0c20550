//! Archive logic shared by the backends, so that both page and match in exactly the same
//! way: UID generation, `with` matching and cutting one page out of an ordered scan.

use super::{ArchivePage, ArchiveQuery, ArchivedMessage, Result};

/// A fresh archive UID: 96 random bits, hex. Unpredictable (XEP-0313 §2.1) and, at that
/// size, unique without coordination; stores still refuse to overwrite an existing UID.
pub(crate) fn new_id() -> String {
    use rand::Rng;
    let bytes: [u8; 12] = rand::rng().random();
    let mut s = String::with_capacity(24);
    for b in bytes {
        s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    s
}

/// The bare part of a normalized JID.
pub(crate) fn bare(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(b, _)| b)
}

/// XEP-0313 §4.1.1: a bare `with` matches any resource of it, a full one only itself.
pub fn with_matches(wanted: &str, with: &str) -> bool {
    if wanted.contains('/') {
        wanted == with
    } else {
        wanted == bare(with)
    }
}

/// Collects one page of `q`'s matches offered in the order of the query's direction
/// (newest first when `from_end`): at most `max`, and whether more match.
pub(crate) struct PageBuilder<'q> {
    q: &'q ArchiveQuery,
    messages: Vec<ArchivedMessage>,
    more: bool,
}

impl<'q> PageBuilder<'q> {
    pub(crate) fn new(q: &'q ArchiveQuery) -> Self {
        PageBuilder {
            q,
            messages: Vec::with_capacity(q.max.min(256) + 1),
            more: false,
        }
    }

    /// Takes a candidate; `false` once the page is complete (stop offering).
    pub(crate) fn offer(&mut self, m: ArchivedMessage) -> bool {
        if self
            .q
            .with
            .as_deref()
            .is_some_and(|w| !with_matches(w, &m.with))
        {
            return true;
        }
        if self.messages.len() == self.q.max {
            self.more = true;
            return false;
        }
        self.messages.push(m);
        true
    }

    pub(crate) fn finish(mut self) -> ArchivePage {
        if self.q.from_end {
            self.messages.reverse();
        }
        ArchivePage {
            messages: self.messages,
            more: self.more,
        }
    }
}

/// Cuts one page out of `scan`, which yields the candidates of `q`'s range in archive
/// order (possibly pre-filtered by the bare `with`). Reads at most `max + 1` matches.
pub(crate) fn collect_page<I>(scan: I, q: &ArchiveQuery) -> Result<ArchivePage>
where
    I: DoubleEndedIterator<Item = Result<ArchivedMessage>>,
{
    let mut page = PageBuilder::new(q);
    if q.from_end {
        for item in scan.rev() {
            if !page.offer(item?) {
                break;
            }
        }
    } else {
        for item in scan {
            if !page.offer(item?) {
                break;
            }
        }
    }
    Ok(page.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ArchivePos;

    fn msg(i: u64, with: &str) -> Result<ArchivedMessage> {
        Ok(ArchivedMessage {
            id: format!("id{i}"),
            pos: ArchivePos { micros: i, seq: 0 },
            with: with.into(),
            stanza: String::new(),
        })
    }

    #[test]
    fn pages_from_either_end_in_order() {
        let items = || (0..5).map(|i| msg(i, if i % 2 == 0 { "a@x/r" } else { "b@x" }));
        let q = ArchiveQuery {
            max: 2,
            ..ArchiveQuery::default()
        };
        let page = collect_page(items(), &q).unwrap();
        let ids: Vec<_> = page.messages.iter().map(|m| m.id.as_str()).collect();
        assert_eq!((ids, page.more), (vec!["id0", "id1"], true));

        let q = ArchiveQuery {
            max: 2,
            from_end: true,
            with: Some("a@x".into()),
            ..ArchiveQuery::default()
        };
        let page = collect_page(items(), &q).unwrap();
        let ids: Vec<_> = page.messages.iter().map(|m| m.id.as_str()).collect();
        assert_eq!((ids, page.more), (vec!["id2", "id4"], true));

        let q = ArchiveQuery {
            max: 5,
            with: Some("a@x/other".into()),
            ..ArchiveQuery::default()
        };
        let page = collect_page(items(), &q).unwrap();
        assert!(page.messages.is_empty() && !page.more);
    }

    #[test]
    fn ids_are_unique_hex() {
        let a = new_id();
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_id());
    }

    #[test]
    fn with_matching() {
        assert!(with_matches("a@x", "a@x/r"));
        assert!(with_matches("a@x", "a@x"));
        assert!(!with_matches("a@x/r", "a@x/s"));
        assert!(!with_matches("a@x", "a@xy"));
    }
}
