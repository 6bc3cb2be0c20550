//! Hash maps on the per-stanza path (the session table, the registry's handler tables,
//! the sets of users with blocklist or archive entries, the local domains).
//!
//! std's SipHash was about 4 % of the server's instructions per routed message. foldhash
//! is several times cheaper for keys this short and is still seeded at random per map,
//! so which keys collide cannot be predicted from outside. Other maps keep std's default.

pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;
pub type FastSet<K> = std::collections::HashSet<K, foldhash::quality::RandomState>;
