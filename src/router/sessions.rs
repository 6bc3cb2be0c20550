//! Bound resources per account: who is online, with which priority and presence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::stream::StreamError;
use crate::xml::Element;

/// What a session task receives besides socket input.
#[derive(Debug)]
pub enum SessionCommand {
    // Boxed: the channel preallocates slots, and an idle session should not pay
    // for 32 inline elements.
    Stanza(Box<Element>),
}

/// Lets the router stop a session from outside (conflict, stuck queue, shutdown).
#[derive(Debug, Default)]
pub struct SessionControl {
    token: CancellationToken,
    reason: Mutex<Option<StreamError>>,
}

impl SessionControl {
    pub fn kick(&self, reason: StreamError) {
        if let Ok(mut slot) = self.reason.lock() {
            slot.get_or_insert(reason);
        }
        self.token.cancel();
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
    pub tx: mpsc::Sender<SessionCommand>,
    pub control: Arc<SessionControl>,
    pub priority: i8,
    /// Initial presence was sent and no unavailable since.
    pub available: bool,
    /// The last available presence broadcast (from stamped), for probes.
    pub presence: Option<Element>,
    /// The resource requested the roster (RFC 6121 §2.1.6 "interested resource").
    pub interested: bool,
    /// XEP-0280 carbons enabled on this session.
    pub carbons: bool,
    /// The resource requested its block list, so it gets block/unblock pushes (XEP-0191).
    pub blocklist_requested: bool,
}

pub enum BindOutcome {
    Bound,
    /// The resource was in use; the old session must be told `conflict`.
    Replaced(Arc<SessionControl>),
    TooManyResources,
}

/// bare JID → that account's bound resources.
#[derive(Default)]
pub struct Sessions {
    map: RwLock<HashMap<String, Vec<SessionInfo>>>,
}

impl Sessions {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Vec<SessionInfo>>> {
        // A poisoned lock only means a panic elsewhere; the map itself stays consistent
        // because every critical section is a single insert/remove/update.
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Vec<SessionInfo>>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds `info.resource` for `bare`; newest wins on conflict.
    pub fn bind(&self, bare: &str, info: SessionInfo, max_resources: usize) -> BindOutcome {
        let mut map = self.write();
        let list = map.entry(bare.to_string()).or_default();
        if let Some(pos) = list.iter().position(|s| s.resource == info.resource) {
            let old = std::mem::replace(&mut list[pos], info);
            return BindOutcome::Replaced(old.control);
        }
        if list.len() >= max_resources {
            return BindOutcome::TooManyResources;
        }
        list.push(info);
        BindOutcome::Bound
    }

    /// Removes the binding if it still belongs to `conn_id` (a replaced session must not
    /// remove its successor). Returns whether it was removed.
    pub fn unbind(&self, bare: &str, resource: &str, conn_id: u64) -> bool {
        let mut map = self.write();
        let Some(list) = map.get_mut(bare) else {
            return false;
        };
        let before = list.len();
        list.retain(|s| !(s.resource == resource && s.conn_id == conn_id));
        let removed = list.len() != before;
        if list.is_empty() {
            map.remove(bare);
        }
        removed
    }

    /// Applies `f` to the session if it is still this connection's.
    pub fn update<R>(
        &self,
        bare: &str,
        resource: &str,
        conn_id: u64,
        f: impl FnOnce(&mut SessionInfo) -> R,
    ) -> Option<R> {
        let mut map = self.write();
        let s = map
            .get_mut(bare)?
            .iter_mut()
            .find(|s| s.resource == resource && s.conn_id == conn_id)?;
        Some(f(s))
    }

    /// A snapshot of an account's sessions.
    pub fn resources(&self, bare: &str) -> Vec<SessionInfo> {
        self.read().get(bare).cloned().unwrap_or_default()
    }

    pub fn get(&self, bare: &str, resource: &str) -> Option<SessionInfo> {
        self.read()
            .get(bare)?
            .iter()
            .find(|s| s.resource == resource)
            .cloned()
    }

    /// Whether the account has any bound resource.
    pub fn is_online(&self, bare: &str) -> bool {
        self.read().contains_key(bare)
    }

    /// What `pick` returns for each of an account's sessions, taken under the lock so that
    /// hot paths copy only the fields they need (not presence elements).
    pub fn select<T>(&self, bare: &str, pick: impl FnMut(&SessionInfo) -> Option<T>) -> Vec<T> {
        match self.read().get(bare) {
            Some(list) => list.iter().filter_map(pick).collect(),
            None => Vec::new(),
        }
    }

    /// Senders of the resources matching `pred`.
    pub fn senders_where(
        &self,
        bare: &str,
        pred: impl Fn(&SessionInfo) -> bool,
    ) -> Vec<(mpsc::Sender<SessionCommand>, Arc<SessionControl>)> {
        self.select(bare, |s| pred(s).then(|| (s.tx.clone(), s.control.clone())))
    }

    pub fn sender(
        &self,
        bare: &str,
        resource: &str,
    ) -> Option<(mpsc::Sender<SessionCommand>, Arc<SessionControl>)> {
        self.read()
            .get(bare)?
            .iter()
            .find(|s| s.resource == resource)
            .map(|s| (s.tx.clone(), s.control.clone()))
    }

    pub fn count(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    /// Every session's control, for shutdown.
    pub fn all_controls(&self) -> Vec<Arc<SessionControl>> {
        self.read()
            .values()
            .flat_map(|l| l.iter().map(|s| s.control.clone()))
            .collect()
    }
}
