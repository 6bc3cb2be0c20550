//! One room's state: configuration, affiliations, occupants with their roles and
//! sessions, subject and history; and the presence it sends about an occupant.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use base64::Engine;
use sha2::Digest;

use super::history::HistoryItem;
use super::{MUC_USER, OCCUPANT_ID};
use crate::addr::{BareJid, Jid};
use crate::config::MucConfig;
use crate::storage::{RoomAffiliation, RoomAffiliationEntry, RoomConfig, RoomPmPolicy, StoredRoom};
use crate::xml::{Element, Node, ns};

/// An occupant's privileges in the room for the time of its visit (XEP-0045 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

pub fn parse_affiliation(s: &str) -> Option<Option<RoomAffiliation>> {
    Some(Some(match s {
        "owner" => RoomAffiliation::Owner,
        "admin" => RoomAffiliation::Admin,
        "member" => RoomAffiliation::Member,
        "outcast" => RoomAffiliation::Outcast,
        "none" => return Some(None),
        _ => return None,
    }))
}

pub fn affiliation_str(a: Option<RoomAffiliation>) -> &'static str {
    a.map_or("none", RoomAffiliation::as_str)
}

/// One client session of an occupant (several sessions of one user may share a nick).
pub struct OccupantSession {
    /// The real full JID.
    pub jid: Jid,
    /// The last presence it sent to the room (payload only).
    pub presence: Element,
}

pub struct Occupant {
    pub nick: String,
    /// The real bare JID.
    pub bare: BareJid,
    pub sessions: Vec<OccupantSession>,
    pub role: Role,
    /// XEP-0421.
    pub id: String,
    /// Message rate limit: tokens left and when they were counted.
    tokens: f64,
    counted: Instant,
}

impl Occupant {
    /// Takes one message from the occupant's allowance; `false` when it is used up.
    pub fn take_token(&mut self, cfg: &MucConfig) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.counted).as_secs_f64();
        self.counted = now;
        self.tokens = (self.tokens + elapsed * f64::from(cfg.messages_per_sec))
            .min(f64::from(cfg.message_burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn has_session(&self, full: &Jid) -> bool {
        self.sessions.iter().any(|s| s.jid == *full)
    }
}

pub struct Room {
    pub jid: BareJid,
    pub config: RoomConfig,
    /// By bare JID (or domain).
    pub affiliations: BTreeMap<BareJid, RoomAffiliationEntry>,
    pub occupants: Vec<Occupant>,
    /// Text and the nick that set it.
    pub subject: Option<(String, String)>,
    pub history: VecDeque<HistoryItem>,
    /// Created, waiting for its owner's configuration (§10.1).
    pub locked: bool,
    /// Removed from the service: a handler that still holds it must look again.
    pub gone: bool,
    /// Who created it in this run (for the per-user room limit).
    pub creator: Option<BareJid>,
    occupant_id_key: Vec<u8>,
}

/// Nicknames longer than this are refused (`not-acceptable`): they are shown to everyone.
pub const MAX_NICK_BYTES: usize = 128;
/// Affiliations one room keeps at most.
pub const MAX_AFFILIATIONS: usize = 10_000;

pub fn default_config(cfg: &MucConfig) -> RoomConfig {
    RoomConfig {
        name: String::new(),
        description: String::new(),
        persistent: false,
        public: true,
        members_only: false,
        moderated: false,
        password: None,
        max_users: u32::try_from(cfg.max_occupants).unwrap_or(u32::MAX),
        whois_anyone: false,
        allow_pm: RoomPmPolicy::Anyone,
        change_subject: false,
        allow_invites: false,
        history_length: u32::try_from(cfg.history_length).unwrap_or(u32::MAX),
    }
}

impl Room {
    pub fn new(jid: BareJid, cfg: &MucConfig, creator: &BareJid, locked: bool) -> Room {
        let mut room = Room {
            jid,
            config: default_config(cfg),
            affiliations: BTreeMap::new(),
            occupants: Vec::new(),
            subject: None,
            history: VecDeque::new(),
            locked,
            gone: false,
            creator: Some(creator.clone()),
            occupant_id_key: rand::random::<[u8; 16]>().to_vec(),
        };
        room.set_affiliation(creator, Some(RoomAffiliation::Owner), None);
        room
    }

    pub fn from_stored(stored: StoredRoom) -> Room {
        Room {
            jid: stored.jid,
            config: stored.config,
            affiliations: stored
                .affiliations
                .into_iter()
                .map(|a| (a.jid.clone(), a))
                .collect(),
            occupants: Vec::new(),
            subject: stored.subject,
            history: VecDeque::new(),
            locked: false,
            gone: false,
            creator: None,
            occupant_id_key: stored.occupant_id_key,
        }
    }

    pub fn to_stored(&self) -> StoredRoom {
        StoredRoom {
            jid: self.jid.clone(),
            config: self.config.clone(),
            affiliations: self.affiliations.values().cloned().collect(),
            subject: self.subject.clone(),
            occupant_id_key: self.occupant_id_key.clone(),
        }
    }

    /// The affiliation of a real JID: its bare JID's entry, else its domain's.
    pub fn affiliation(&self, jid: &Jid) -> Option<RoomAffiliation> {
        self.affiliations
            .get(&jid.to_bare())
            .or_else(|| self.affiliations.get(&BareJid::from(jid.domain())))
            .map(|e| e.affiliation)
    }

    pub fn set_affiliation(
        &mut self,
        jid: &BareJid,
        affiliation: Option<RoomAffiliation>,
        reason: Option<String>,
    ) {
        match affiliation {
            None => {
                // A registered nick stays reserved only with an affiliation.
                self.affiliations.remove(jid);
            }
            Some(a) => {
                let entry =
                    self.affiliations
                        .entry(jid.clone())
                        .or_insert_with(|| RoomAffiliationEntry {
                            jid: jid.clone(),
                            affiliation: a,
                            nick: None,
                            reason: None,
                        });
                entry.affiliation = a;
                entry.reason = reason;
            }
        }
    }

    pub fn owners(&self) -> usize {
        self.affiliations
            .values()
            .filter(|a| a.affiliation == RoomAffiliation::Owner)
            .count()
    }

    /// The role an affiliation gets on entering (§5.1.2 defaults).
    pub fn default_role(&self, affiliation: Option<RoomAffiliation>) -> Role {
        match affiliation {
            Some(RoomAffiliation::Owner | RoomAffiliation::Admin) => Role::Moderator,
            Some(RoomAffiliation::Member) => Role::Participant,
            Some(RoomAffiliation::Outcast) => Role::None,
            None if self.config.moderated => Role::Visitor,
            None => Role::Participant,
        }
    }

    pub fn max_users(&self, cfg: &MucConfig) -> usize {
        (self.config.max_users as usize).min(cfg.max_occupants)
    }

    pub fn occupant_id(&self, bare: &BareJid) -> String {
        let mut h = sha2::Sha256::new();
        h.update(&self.occupant_id_key);
        h.update(self.jid.as_str().as_bytes());
        h.update([0]);
        h.update(bare.as_str().as_bytes());
        base64::engine::general_purpose::STANDARD.encode(&h.finalize()[..18])
    }

    pub fn new_occupant(
        &self,
        nick: String,
        bare: BareJid,
        role: Role,
        cfg: &MucConfig,
    ) -> Occupant {
        let id = self.occupant_id(&bare);
        Occupant {
            nick,
            bare,
            sessions: Vec::new(),
            role,
            id,
            tokens: f64::from(cfg.message_burst),
            counted: Instant::now(),
        }
    }

    pub fn by_nick(&self, nick: &str) -> Option<usize> {
        self.occupants.iter().position(|o| o.nick == nick)
    }

    /// The occupant one of whose sessions is the real full JID `full`.
    pub fn by_session(&self, full: &Jid) -> Option<usize> {
        self.occupants.iter().position(|o| o.has_session(full))
    }

    /// The bare JID that registered `nick` (§7.10), if someone did.
    pub fn nick_owner(&self, nick: &str) -> Option<&BareJid> {
        self.affiliations
            .values()
            .find(|a| a.nick.as_deref() == Some(nick))
            .map(|a| &a.jid)
    }

    pub fn nick_jid(&self, nick: &str) -> String {
        format!("{}/{nick}", self.jid)
    }

    /// Whether `viewer` (an occupant's role, or none) sees occupants' real JIDs.
    pub fn shows_jids_to(&self, viewer: Role) -> bool {
        self.config.whois_anyone || viewer == Role::Moderator
    }

    /// Every session of every occupant: (real full JID, role of its occupant).
    pub fn audience(&self) -> Vec<(Jid, Role)> {
        self.occupants
            .iter()
            .flat_map(|o| o.sessions.iter().map(move |s| (s.jid.clone(), o.role)))
            .collect()
    }

    /// The presence occupant `o` shows to `to` (a session whose occupant has role
    /// `viewer`), with the `<x/>` and status codes given.
    pub fn presence_of(
        &self,
        o: &Occupant,
        to: &Jid,
        viewer: Role,
        unavailable: bool,
        codes: &[u16],
        extra: Option<&Element>,
    ) -> Element {
        let mut p = Element::new("presence", ns::CLIENT)
            .with_attr("from", self.nick_jid(&o.nick))
            .with_attr("to", to.as_str());
        if unavailable {
            p.set_attr("type", "unavailable");
        } else if let Some(s) = o.sessions.last() {
            for child in &s.presence.children {
                if let Node::Element(e) = child
                    && (e.ns.starts_with(super::MUC) || e.ns == OCCUPANT_ID)
                {
                    continue;
                }
                p.children.push(child.clone());
            }
        }
        let mut item = Element::new("item", MUC_USER)
            .with_attr("affiliation", affiliation_str(self.affiliation(&o.bare)))
            .with_attr("role", if unavailable { "none" } else { o.role.as_str() });
        if self.shows_jids_to(viewer) {
            let jid = if o.sessions.len() == 1 {
                o.sessions[0].jid.as_str()
            } else {
                o.bare.as_str()
            };
            item.set_attr("jid", jid);
        }
        // Extra attributes and children for the item (nick, actor, reason).
        if let Some(extra) = extra
            && extra.name == "item"
        {
            for (k, v) in &extra.attrs {
                item.set_attr(k, v.clone());
            }
            item.children.extend(extra.children.iter().cloned());
        }
        let mut x = Element::new("x", MUC_USER).with_child(item);
        if let Some(extra) = extra
            && extra.name == "destroy"
        {
            x.push_child(extra.clone());
        }
        for code in codes {
            x.push_child(Element::new("status", MUC_USER).with_attr("code", code.to_string()));
        }
        p.push_child(x);
        p.push_child(Element::new("occupant-id", OCCUPANT_ID).with_attr("id", o.id.clone()));
        p
    }

    /// The presence of occupant `idx` to everyone in the room; its own sessions get
    /// `self_codes` (110 added) on top of `codes`.
    pub fn broadcast_presence(
        &self,
        idx: usize,
        unavailable: bool,
        codes: &[u16],
        self_codes: &[u16],
        extra: Option<&Element>,
        out: &mut Vec<Element>,
    ) {
        let Some(o) = self.occupants.get(idx) else {
            return;
        };
        for (i, other) in self.occupants.iter().enumerate() {
            if i == idx {
                continue;
            }
            for s in &other.sessions {
                out.push(self.presence_of(o, &s.jid, other.role, unavailable, codes, extra));
            }
        }
        let mut mine: Vec<u16> = codes.to_vec();
        mine.extend_from_slice(self_codes);
        mine.push(110);
        mine.sort_unstable();
        mine.dedup();
        for s in &o.sessions {
            out.push(self.presence_of(o, &s.jid, o.role, unavailable, &mine, extra));
        }
    }

    /// Removes occupant `idx` with an unavailable presence to everyone (itself
    /// included, with 110) carrying `codes`; returns it.
    pub fn remove_occupant(
        &mut self,
        idx: usize,
        codes: &[u16],
        extra: Option<&Element>,
        out: &mut Vec<Element>,
    ) -> Option<Occupant> {
        if idx >= self.occupants.len() {
            return None;
        }
        self.broadcast_presence(idx, true, codes, &[], extra, out);
        Some(self.occupants.remove(idx))
    }

    /// A groupchat message from the room itself (status codes, no body) to everyone.
    pub fn status_message(&self, codes: &[u16], out: &mut Vec<Element>) {
        let mut x = Element::new("x", MUC_USER);
        for code in codes {
            x.push_child(Element::new("status", MUC_USER).with_attr("code", code.to_string()));
        }
        for (jid, _) in self.audience() {
            out.push(
                Element::new("message", ns::CLIENT)
                    .with_attr("from", self.jid.as_str())
                    .with_attr("to", jid.as_str())
                    .with_attr("type", "groupchat")
                    .with_attr("id", crate::stream::random_id())
                    .with_child(x.clone()),
            );
        }
    }

    /// The subject message sent on join (an empty `<subject/>` when none is set).
    pub fn subject_message(&self, to: &Jid) -> Element {
        let (text, from) = match &self.subject {
            Some((text, nick)) if !nick.is_empty() => (text.clone(), self.nick_jid(nick)),
            Some((text, _)) => (text.clone(), self.jid.to_string()),
            None => (String::new(), self.jid.to_string()),
        };
        Element::new("message", ns::CLIENT)
            .with_attr("from", from.as_str())
            .with_attr("to", to.as_str())
            .with_attr("type", "groupchat")
            .with_attr("id", crate::stream::random_id())
            .with_child(Element::new("subject", ns::CLIENT).with_text(text))
    }

    /// Whether the occupant with `role` may change the subject.
    pub fn may_set_subject(&self, role: Role) -> bool {
        role == Role::Moderator || (self.config.change_subject && role >= Role::Participant)
    }

    /// Whether an occupant with `role` may send private messages.
    pub fn may_send_pm(&self, role: Role) -> bool {
        match self.config.allow_pm {
            RoomPmPolicy::Anyone => role >= Role::Visitor,
            RoomPmPolicy::Participants => role >= Role::Participant,
            RoomPmPolicy::Moderators => role == Role::Moderator,
            RoomPmPolicy::Nobody => false,
        }
    }

    /// Whether anyone is in the room.
    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }
}
