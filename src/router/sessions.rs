//! Bound resources per account: who is online, with which priority and presence.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio_util::sync::CancellationToken;

use super::queue;
use crate::addr::BareJid;
use crate::hashing::FastMap;
use crate::registry::{SessionFlag, SessionFlags};
use crate::stream::{StreamError, StreamErrorCondition};
use crate::xml::Element;

/// What a session task receives besides socket input.
#[derive(Debug)]
pub enum SessionCommand {
    // Boxed with its weight (released from the queue's byte count when taken out): the
    // channel preallocates 32 slots, and an idle session should pay 8 bytes for each.
    Stanza(Box<(Element, usize)>),
}

impl SessionCommand {
    /// The stanza, its bytes released from `control`'s queue count.
    pub fn take(self, control: &SessionControl) -> Element {
        let SessionCommand::Stanza(queued) = self;
        let (el, bytes) = *queued;
        control.release(bytes);
        el
    }
}

/// The sending side of a session's queue (see [`queue`]).
pub type SessionSender = queue::Sender<SessionCommand>;
/// The session task's side of its queue.
pub type SessionReceiver = queue::Receiver<SessionCommand>;

/// A session's queue, holding at most `max_len` stanzas.
pub fn session_queue(max_len: usize) -> (SessionSender, SessionReceiver) {
    queue::bounded(max_len)
}

/// Lets the router stop a session from outside (conflict, stuck queue, shutdown), and
/// counts the bytes waiting in its queue against the session's budget.
#[derive(Debug)]
pub struct SessionControl {
    token: CancellationToken,
    /// Set with `token`: a check as cheap as a load, for every pass of the session loop.
    kicked: AtomicBool,
    reason: Mutex<Option<StreamError>>,
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
}

impl Default for SessionControl {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl SessionControl {
    /// A session whose queue may hold at most `max_queued_bytes` (`Element::approx_bytes`).
    pub fn new(max_queued_bytes: usize) -> Self {
        SessionControl {
            token: CancellationToken::new(),
            kicked: AtomicBool::new(false),
            reason: Mutex::new(None),
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes,
        }
    }

    /// Counts `bytes` more as queued; `false` (nothing counted) if that would exceed the
    /// budget.
    pub(crate) fn reserve(&self, bytes: usize) -> bool {
        self.queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes)
                    .filter(|&n| n <= self.max_queued_bytes)
            })
            .is_ok()
    }

    /// `bytes` left the queue.
    pub(crate) fn release(&self, bytes: usize) {
        let _ = self
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(bytes))
            });
    }

    /// Bytes waiting in the queue now.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }

    pub fn kick(&self, reason: StreamError) {
        if let Ok(mut slot) = self.reason.lock() {
            slot.get_or_insert(reason);
        }
        self.kicked.store(true, Ordering::Release);
        self.token.cancel();
    }
    /// Whether [`Self::kick`] was called.
    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
    pub fn take_reason(&self) -> Option<StreamError> {
        self.reason.lock().ok().and_then(|mut r| r.take())
    }
}

#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub resource: String,
    pub conn_id: u64,
    pub tx: SessionSender,
    pub control: Arc<SessionControl>,
    pub priority: i8,
    /// Initial presence was sent and no unavailable since.
    pub available: bool,
    /// The last available presence broadcast (from stamped), for probes.
    pub presence: Option<Element>,
    /// Modules' per-session flags that routing reads (carbons enabled, roster
    /// requested, …), allocated by the registry.
    pub flags: SessionFlags,
    /// The stream was encrypted (TLS, or a transport as private) when it was bound:
    /// what modules ask before taking secrets such as a new password.
    pub secure: bool,
}

pub enum BindOutcome {
    Bound,
    /// The resource was in use; the old session must be told `conflict`.
    Replaced(Arc<SessionControl>),
    TooManyResources,
}

type Shard = RwLock<FastMap<BareJid, Vec<SessionInfo>>>;

/// Shards of the session table: presence fan-out and delivery touch many accounts from
/// many tasks at once, so one lock for all would be contended.
const SHARDS: usize = 64;

/// bare JID → that account's bound resources, sharded by bare JID.
pub struct Sessions {
    shards: Box<[Shard]>,
    /// How many bound sessions have each flag bit set, kept under the shard locks that
    /// change flags: routing asks `any_flagged` before looking an account up for a flag
    /// that few sessions have (carbons), which most messages then skip.
    flagged: FlagCounts,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            flagged: FlagCounts::default(),
        }
    }
}

#[derive(Default)]
struct FlagCounts([AtomicUsize; 32]);

impl FlagCounts {
    fn add(&self, flags: SessionFlags) {
        for (bit, count) in self.0.iter().enumerate() {
            if flags.bit(bit) {
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    fn sub(&self, flags: SessionFlags) {
        for (bit, count) in self.0.iter().enumerate() {
            if flags.bit(bit) {
                count.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

impl Sessions {
    fn shard(&self, bare: &BareJid) -> &Shard {
        // FNV-1a: the shard only spreads lock contention (each shard's map keeps its
        // own keyed hash against flooding), so a cheap hash will do.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bare.as_str().bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        &self.shards[(h % self.shards.len() as u64) as usize]
    }
    fn read(
        &self,
        bare: &BareJid,
    ) -> std::sync::RwLockReadGuard<'_, FastMap<BareJid, Vec<SessionInfo>>> {
        // A poisoned lock only means a panic elsewhere; the map itself stays consistent
        // because every critical section is a single insert/remove/update.
        self.shard(bare).read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(
        &self,
        bare: &BareJid,
    ) -> std::sync::RwLockWriteGuard<'_, FastMap<BareJid, Vec<SessionInfo>>> {
        self.shard(bare).write().unwrap_or_else(|e| e.into_inner())
    }
    fn read_all(
        &self,
    ) -> impl Iterator<Item = std::sync::RwLockReadGuard<'_, FastMap<BareJid, Vec<SessionInfo>>>>
    {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Binds `info.resource` for `bare`; newest wins on conflict.
    pub fn bind(&self, bare: &BareJid, info: SessionInfo, max_resources: usize) -> BindOutcome {
        let mut map = self.write(bare);
        let list = map.entry(bare.clone()).or_default();
        if let Some(pos) = list.iter().position(|s| s.resource == info.resource) {
            self.flagged.add(info.flags);
            let old = std::mem::replace(&mut list[pos], info);
            self.flagged.sub(old.flags);
            return BindOutcome::Replaced(old.control);
        }
        if list.len() >= max_resources {
            return BindOutcome::TooManyResources;
        }
        self.flagged.add(info.flags);
        // Room for exactly one more: most accounts have one resource, and a first push
        // would keep room for four entries in every account's list.
        list.reserve_exact(1);
        list.push(info);
        BindOutcome::Bound
    }

    /// Removes the binding if it still belongs to `conn_id` (a replaced session must not
    /// remove its successor). Returns whether it was removed.
    pub fn unbind(&self, bare: &BareJid, resource: &str, conn_id: u64) -> bool {
        let mut map = self.write(bare);
        let Some(list) = map.get_mut(bare) else {
            return false;
        };
        let before = list.len();
        list.retain(|s| {
            let gone = s.resource == resource && s.conn_id == conn_id;
            if gone {
                self.flagged.sub(s.flags);
            }
            !gone
        });
        let removed = list.len() != before;
        if list.is_empty() {
            map.remove(bare);
        }
        removed
    }

    /// Applies `f` to the session if it is still this connection's.
    pub fn update<R>(
        &self,
        bare: &BareJid,
        resource: &str,
        conn_id: u64,
        f: impl FnOnce(&mut SessionInfo) -> R,
    ) -> Option<R> {
        let mut map = self.write(bare);
        let s = map
            .get_mut(bare)?
            .iter_mut()
            .find(|s| s.resource == resource && s.conn_id == conn_id)?;
        let before = s.flags;
        let result = f(s);
        if s.flags != before {
            self.flagged.sub(before);
            self.flagged.add(s.flags);
        }
        Some(result)
    }

    /// Whether any bound session has `flag` set. Without a lock: a flag set while a
    /// stanza is being routed may or may not be seen, as if the stanza came just before.
    pub fn any_flagged(&self, flag: SessionFlag) -> bool {
        flag.index()
            .and_then(|bit| self.flagged.0.get(bit))
            .is_some_and(|count| count.load(Ordering::SeqCst) > 0)
    }

    /// A snapshot of an account's sessions.
    pub fn resources(&self, bare: &BareJid) -> Vec<SessionInfo> {
        self.read(bare).get(bare).cloned().unwrap_or_default()
    }

    pub fn get(&self, bare: &BareJid, resource: &str) -> Option<SessionInfo> {
        self.read(bare)
            .get(bare)?
            .iter()
            .find(|s| s.resource == resource)
            .cloned()
    }

    /// Whether the account has any bound resource.
    pub fn is_online(&self, bare: &BareJid) -> bool {
        self.read(bare).contains_key(bare)
    }

    /// What `pick` returns for each of an account's sessions, taken under the lock so that
    /// hot paths copy only the fields they need (not presence elements).
    pub fn select<T>(&self, bare: &BareJid, pick: impl FnMut(&SessionInfo) -> Option<T>) -> Vec<T> {
        match self.read(bare).get(bare) {
            Some(list) => list.iter().filter_map(pick).collect(),
            None => Vec::new(),
        }
    }

    /// Senders of the resources matching `pred`.
    pub fn senders_where(
        &self,
        bare: &BareJid,
        pred: impl Fn(&SessionInfo) -> bool,
    ) -> Vec<(SessionSender, Arc<SessionControl>)> {
        self.select(bare, |s| pred(s).then(|| (s.tx.clone(), s.control.clone())))
    }

    pub fn sender(
        &self,
        bare: &BareJid,
        resource: &str,
    ) -> Option<(SessionSender, Arc<SessionControl>)> {
        self.read(bare)
            .get(bare)?
            .iter()
            .find(|s| s.resource == resource)
            .map(|s| (s.tx.clone(), s.control.clone()))
    }

    pub fn count(&self) -> usize {
        self.read_all()
            .map(|m| m.values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// Up to `limit` accounts with a bound resource (in no particular order).
    pub fn online_users(&self, limit: usize) -> Vec<BareJid> {
        let mut out = Vec::new();
        for m in self.read_all() {
            for bare in m.keys() {
                if out.len() >= limit {
                    return out;
                }
                out.push(bare.clone());
            }
        }
        out
    }

    /// Stanzas waiting in all session queues, and in the fullest one (metrics).
    pub fn queue_depths(&self) -> (usize, usize) {
        let (mut total, mut fullest) = (0, 0);
        for m in self.read_all() {
            for s in m.values().flatten() {
                let queued = s.tx.len();
                total += queued;
                fullest = fullest.max(queued);
            }
        }
        (total, fullest)
    }

    /// Every session's control, for shutdown.
    pub fn all_controls(&self) -> Vec<Arc<SessionControl>> {
        let mut out = Vec::new();
        for m in self.read_all() {
            out.extend(m.values().flat_map(|l| l.iter().map(|s| s.control.clone())));
        }
        out
    }
}

tokio::task_local! {
    /// The session whose own task is running, with what it sent to itself meanwhile.
    static OWN_SESSION: OwnSession;
}

struct OwnSession {
    control: Arc<SessionControl>,
    kept: RefCell<VecDeque<Element>>,
    limit: usize,
}

/// Runs `work` (the handling of one element of the session's client) as the session
/// `control`'s own work: stanzas it delivers to that same session are returned in order
/// instead of queued. At login one presence can bring back an answer from every online
/// contact and every offline message; the session's own bounded queue cannot take those
/// while its only reader is busy writing them. At most `limit` are kept; past that the
/// session is closed as it would be for a full queue.
pub async fn serve_own_session<T>(
    control: Arc<SessionControl>,
    limit: usize,
    work: impl Future<Output = T>,
) -> (T, VecDeque<Element>) {
    let own = OwnSession {
        control,
        kept: RefCell::new(VecDeque::new()),
        limit,
    };
    OWN_SESSION
        .scope(own, async move {
            let out = work.await;
            let kept = OWN_SESSION.try_with(|o| o.kept.take()).unwrap_or_default();
            (out, kept)
        })
        .await
}

/// What [`keep_for_own_session`] did with a stanza.
pub(super) enum OwnDelivery {
    /// Kept for the running session.
    Kept,
    /// For the running session, over its limit (the session is being closed).
    Refused(Element),
    /// Not for the running session.
    NotOwn(Element),
}

/// Keeps `stanza` when it is for the session whose own task is running (see
/// [`serve_own_session`]).
pub(super) fn keep_for_own_session(control: &Arc<SessionControl>, stanza: Element) -> OwnDelivery {
    let own = OWN_SESSION
        .try_with(|own| Arc::ptr_eq(&own.control, control))
        .unwrap_or(false);
    if !own {
        return OwnDelivery::NotOwn(stanza);
    }
    let mut slot = Some(stanza);
    let _ = OWN_SESSION.try_with(|own| {
        let mut kept = own.kept.borrow_mut();
        if kept.len() < own.limit {
            kept.extend(slot.take());
        } else {
            control.kick(StreamError::with_text(
                StreamErrorCondition::PolicyViolation,
                "too many stanzas queued for this session",
            ));
        }
    });
    match slot {
        None => OwnDelivery::Kept,
        Some(stanza) => OwnDelivery::Refused(stanza),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(resource: &str, conn_id: u64, flags: SessionFlags) -> SessionInfo {
        let (tx, _rx) = session_queue(4);
        SessionInfo {
            resource: resource.to_string(),
            conn_id,
            tx,
            control: Arc::new(SessionControl::default()),
            priority: 0,
            available: true,
            presence: None,
            flags,
            secure: true,
        }
    }

    /// `any_flagged` follows every way a flag comes and goes: set and cleared, carried by
    /// a session that is bound, replaced or unbound.
    #[test]
    fn flag_counts_follow_bind_update_replace_and_unbind() {
        let sessions = Sessions::default();
        let (carbons, other) = (SessionFlag(1 << 3), SessionFlag(1 << 5));
        let alice = crate::addr::parse_bare("alice@example.com").unwrap();
        let bob = crate::addr::parse_bare("bob@example.com").unwrap();
        let mut set = SessionFlags::default();
        set.set(carbons, true);

        assert!(matches!(
            sessions.bind(&alice, info("a", 1, SessionFlags::default()), 9),
            BindOutcome::Bound
        ));
        assert!(!sessions.any_flagged(carbons));
        sessions.update(&alice, "a", 1, |s| s.flags.set(carbons, true));
        assert!(sessions.any_flagged(carbons) && !sessions.any_flagged(other));
        assert!(!sessions.any_flagged(SessionFlag::NONE));

        // A second session with the flag, then the first clears it: still one left.
        sessions.bind(&bob, info("b", 2, set), 9);
        sessions.update(&alice, "a", 1, |s| s.flags.set(carbons, false));
        assert!(sessions.any_flagged(carbons));
        // Setting it twice counts once.
        sessions.update(&alice, "a", 1, |s| s.flags.set(carbons, true));
        sessions.update(&alice, "a", 1, |s| s.flags.set(carbons, true));
        // An update for another connection changes nothing.
        assert!(
            sessions
                .update(&alice, "a", 7, |s| s.flags.set(carbons, false))
                .is_none()
        );

        // Replaced by a session without the flag; a stale unbind removes nothing.
        assert!(matches!(
            sessions.bind(&alice, info("a", 3, SessionFlags::default()), 9),
            BindOutcome::Replaced(_)
        ));
        assert!(!sessions.unbind(&alice, "a", 1));
        assert!(sessions.any_flagged(carbons), "bob's session still has it");
        assert!(sessions.unbind(&bob, "b", 2));
        assert!(!sessions.any_flagged(carbons));
        assert!(sessions.unbind(&alice, "a", 3));
        assert!(!sessions.any_flagged(carbons));
    }
}
