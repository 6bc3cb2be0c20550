//! XEP-0115 entity capabilities, as far as PEP needs them: which resource advertises
//! `NODE+notify` (XEP-0163 §4 filtered notifications). Answers to the server's disco#info
//! queries are kept by verification string when the string checks out (one answer serves
//! every client of that version), else for that one resource; bounded, oldest out first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::xml::{Element, ns};

pub const NS: &str = "http://jabber.org/protocol/caps";

/// What a presence's `<c/>` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    pub node: String,
    pub ver: String,
    /// `sha-1` for XEP-0115 1.5; absent for legacy caps, which cannot be verified.
    pub hash: Option<String>,
}

impl Caps {
    pub fn of_presence(presence: &Element) -> Option<Caps> {
        let c = presence.child("c", NS)?;
        let ver = c.attr("ver")?;
        // A verification string is a base64 SHA-1 (28 bytes); a longer one is not ours to
        // keep.
        if ver.is_empty() || ver.len() > 128 {
            return None;
        }
        Some(Caps {
            node: c.attr("node").unwrap_or("").chars().take(512).collect(),
            ver: ver.to_string(),
            hash: c.attr("hash").map(str::to_string),
        })
    }

    /// The cache key of this resource's features: the verification string if it can be
    /// trusted, else the resource's own full JID.
    pub fn keys(&self, full: &str) -> [String; 2] {
        [format!("v\0{}", self.ver), format!("j\0{full}")]
    }
}

/// The features an entity listed.
pub type Features = Arc<HashSet<String>>;

pub struct CapsCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    tick: u64,
    map: HashMap<String, (Features, u64)>,
    /// tick → key: the least recently used first.
    order: BTreeMap<u64, String>,
}

impl CapsCache {
    pub fn new(capacity: usize) -> Self {
        CapsCache {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The features of a resource with these caps, if known.
    pub fn features(&self, caps: &Caps, full: &str) -> Option<Features> {
        let mut inner = self.lock();
        for key in caps.keys(full) {
            inner.tick += 1;
            let tick = inner.tick;
            if let Some((features, used)) = inner.map.get_mut(&key) {
                let (features, old) = (features.clone(), std::mem::replace(used, tick));
                inner.order.remove(&old);
                inner.order.insert(tick, key);
                return Some(features);
            }
        }
        None
    }

    /// Remembers a disco#info answer for a resource's caps; returns the features.
    pub fn insert(&self, caps: &Caps, full: &str, query: &Element) -> Features {
        let features: HashSet<String> = query
            .elements()
            .filter(|f| f.is("feature", ns::DISCO_INFO))
            .filter_map(|f| f.attr("var"))
            // Bounded like any answer from a client.
            .take(1024)
            .map(str::to_string)
            .collect();
        let features = Arc::new(features);
        let verified = caps.hash.as_deref() == Some("sha-1") && ver_string(query) == caps.ver;
        let [by_ver, by_jid] = caps.keys(full);
        let key = if verified { by_ver } else { by_jid };
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((_, old)) = inner.map.insert(key.clone(), (features.clone(), tick)) {
            inner.order.remove(&old);
        }
        inner.order.insert(tick, key);
        while inner.map.len() > self.capacity {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            inner.map.remove(&oldest);
        }
        features
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The XEP-0115 §5.1 verification string of a disco#info answer (SHA-1, base64).
pub fn ver_string(query: &Element) -> String {
    let mut identities: Vec<String> = query
        .elements()
        .filter(|i| i.is("identity", ns::DISCO_INFO))
        .map(|i| {
            format!(
                "{}/{}/{}/{}",
                i.attr("category").unwrap_or(""),
                i.attr("type").unwrap_or(""),
                i.attr("xml:lang").unwrap_or(""),
                i.attr("name").unwrap_or("")
            )
        })
        .collect();
    identities.sort();
    let mut features: Vec<&str> = query
        .elements()
        .filter(|f| f.is("feature", ns::DISCO_INFO))
        .filter_map(|f| f.attr("var"))
        .collect();
    features.sort_unstable();
    let mut forms: Vec<(String, String)> = query
        .elements()
        .filter(|x| x.is("x", super::form::NS))
        .filter_map(|x| {
            let form = super::DataForm::parse(x)?;
            let form_type = form.form_type.clone()?;
            let mut fields: Vec<(String, Vec<String>)> = form
                .fields
                .into_iter()
                .filter(|(var, _)| var != "FORM_TYPE")
                .collect();
            fields.sort();
            let mut s = format!("{form_type}<");
            for (var, mut values) in fields {
                values.sort();
                s.push_str(&var);
                s.push('<');
                for v in values {
                    s.push_str(&v);
                    s.push('<');
                }
            }
            Some((form_type, s))
        })
        .collect();
    forms.sort();
    let mut s = String::new();
    for i in identities {
        s.push_str(&i);
        s.push('<');
    }
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    for (_, f) in forms {
        s.push_str(&f);
    }
    base64::engine::general_purpose::STANDARD.encode(Sha1::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0115 §5.2, the simple example.
    const SIMPLE: &str = "<query xmlns='http://jabber.org/protocol/disco#info'>\
        <identity category='client' name='Exodus 0.9.1' type='pc'/>\
        <feature var='http://jabber.org/protocol/caps'/>\
        <feature var='http://jabber.org/protocol/disco#info'/>\
        <feature var='http://jabber.org/protocol/disco#items'/>\
        <feature var='http://jabber.org/protocol/muc'/></query>";

    /// XEP-0115 §5.3, the complex example.
    const COMPLEX: &str = "<query xmlns='http://jabber.org/protocol/disco#info'>\
        <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
        <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
        <feature var='http://jabber.org/protocol/caps'/>\
        <feature var='http://jabber.org/protocol/disco#info'/>\
        <feature var='http://jabber.org/protocol/disco#items'/>\
        <feature var='http://jabber.org/protocol/muc'/>\
        <x xmlns='jabber:x:data' type='result'>\
          <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
          <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
          <field var='os'><value>Mac</value></field>\
          <field var='os_version'><value>10.5.1</value></field>\
          <field var='software'><value>Psi</value></field>\
          <field var='software_version'><value>0.11</value></field>\
        </x></query>";

    #[test]
    fn verification_strings_of_the_xep_examples() {
        let q = crate::xml::parse_stanza(SIMPLE).unwrap();
        assert_eq!(ver_string(&q), "QgayPKawpkPSDYmwT/WM94uAlu0=");
        let q = crate::xml::parse_stanza(COMPLEX).unwrap();
        assert_eq!(ver_string(&q), "q07IKJEyjvHSyhy//CH0CxmKi8w=");
    }

    #[test]
    fn verified_answers_are_shared_and_the_cache_is_bounded() {
        let q = crate::xml::parse_stanza(SIMPLE).unwrap();
        let cache = CapsCache::new(2);
        let good = Caps {
            node: "n".into(),
            ver: "QgayPKawpkPSDYmwT/WM94uAlu0=".into(),
            hash: Some("sha-1".into()),
        };
        cache.insert(&good, "a@x/1", &q);
        assert!(cache.features(&good, "b@x/2").is_some(), "shared by ver");
        let forged = Caps {
            ver: "forged".into(),
            ..good.clone()
        };
        cache.insert(&forged, "c@x/3", &q);
        assert!(cache.features(&forged, "c@x/3").is_some());
        assert!(cache.features(&forged, "d@x/4").is_none(), "not shared");
        let other = Caps {
            ver: "other".into(),
            ..good.clone()
        };
        cache.insert(&other, "e@x/5", &q);
        assert_eq!(cache.len(), 2);
        // The least recently used (the verified one, used before the forged one) went.
        assert!(cache.features(&good, "b@x/2").is_none());
    }
}
