//! Where modules keep their state without a named field anywhere else: a typed map owned
//! by one session task ([`Extensions`]), a typed map of shared state built at start
//! ([`SharedState`]) and registry-allocated flags that the router can read on every
//! session of an account ([`SessionFlag`]).

use std::any::{Any, TypeId};
use std::sync::Arc;

/// A session's per-module state, owned by the session task (no locking): one value per
/// type, e.g. the presence module's `PresenceState` or CSI's held stanzas. Moves with
/// the session when it hibernates or is resumed on another connection.
#[derive(Default)]
pub struct Extensions {
    // A handful of entries per session: a vector beats a map in size and speed.
    items: Vec<(TypeId, Box<dyn Any + Send>)>,
}

impl Extensions {
    pub fn get<T: Any + Send>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        self.items
            .iter()
            .find(|(t, _)| *t == id)
            .and_then(|(_, v)| v.downcast_ref())
    }

    pub fn get_mut<T: Any + Send>(&mut self) -> Option<&mut T> {
        let id = TypeId::of::<T>();
        self.items
            .iter_mut()
            .find(|(t, _)| *t == id)
            .and_then(|(_, v)| v.downcast_mut())
    }

    /// The value of type `T`, created with `make` the first time.
    pub fn get_or_insert_with<T: Any + Send>(&mut self, make: impl FnOnce() -> T) -> &mut T {
        let id = TypeId::of::<T>();
        let pos = match self.items.iter().position(|(t, _)| *t == id) {
            Some(pos) => pos,
            None => {
                self.items.push((id, Box::new(make())));
                self.items.len() - 1
            }
        };
        match self.items[pos].1.downcast_mut() {
            Some(v) => v,
            // The entry was stored under T's own TypeId just above or earlier.
            None => unreachable!("extension stored under a foreign TypeId"),
        }
    }

    /// Sets the value of type `T`, replacing any earlier one.
    pub fn insert<T: Any + Send>(&mut self, value: T) {
        self.remove::<T>();
        self.items.push((TypeId::of::<T>(), Box::new(value)));
    }

    pub fn remove<T: Any + Send>(&mut self) -> Option<T> {
        let id = TypeId::of::<T>();
        let pos = self.items.iter().position(|(t, _)| *t == id)?;
        self.items
            .swap_remove(pos)
            .1
            .downcast::<T>()
            .ok()
            .map(|b| *b)
    }
}

/// State a module shares between all sessions and tasks, registered once at start and
/// found by its type.
#[derive(Default)]
pub struct SharedState {
    items: Vec<(TypeId, Arc<dyn Any + Send + Sync>)>,
}

impl SharedState {
    pub(crate) fn insert<T: Any + Send + Sync>(&mut self, value: Arc<T>) {
        let id = TypeId::of::<T>();
        self.items.retain(|(t, _)| *t != id);
        self.items.push((id, value));
    }

    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let id = TypeId::of::<T>();
        let (_, v) = self.items.iter().find(|(t, _)| *t == id)?;
        v.clone().downcast::<T>().ok()
    }
}

/// One bit of per-session state that routing reads on other tasks (carbons enabled,
/// roster requested, …): allocated by the registry for a module's marker type and kept
/// in the session table beside the session's sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionFlag(pub(crate) u32);

impl SessionFlag {
    /// No bit: never set (the flag of a module that is not loaded).
    pub const NONE: SessionFlag = SessionFlag(0);

    /// The position of its bit; `None` for `NONE`.
    pub fn index(self) -> Option<usize> {
        (self.0 != 0).then(|| self.0.trailing_zeros() as usize)
    }
}

/// The flags set on one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionFlags(u32);

impl SessionFlags {
    pub fn has(self, flag: SessionFlag) -> bool {
        self.0 & flag.0 != 0
    }
    pub fn set(&mut self, flag: SessionFlag, on: bool) {
        if on {
            self.0 |= flag.0;
        } else {
            self.0 &= !flag.0;
        }
    }
    /// Whether bit `bit` (0..32) is set: for tables counted per flag.
    pub fn bit(self, bit: usize) -> bool {
        bit < 32 && (self.0 >> bit) & 1 == 1
    }
}

/// The flags handed out so far, by marker type.
#[derive(Default)]
pub(crate) struct FlagTable {
    flags: Vec<(TypeId, SessionFlag)>,
}

impl FlagTable {
    /// The flag for marker type `T`, allocating it on first use. `None` once all 32 bits
    /// are taken (a registration error reported at start).
    pub fn allocate<T: Any>(&mut self) -> Option<SessionFlag> {
        if let Some(f) = self.get::<T>() {
            return Some(f);
        }
        let bit = u32::try_from(self.flags.len()).ok()?;
        let flag = SessionFlag(1u32.checked_shl(bit)?);
        self.flags.push((TypeId::of::<T>(), flag));
        Some(flag)
    }

    pub fn get<T: Any>(&self) -> Option<SessionFlag> {
        let id = TypeId::of::<T>();
        self.flags.iter().find(|(t, _)| *t == id).map(|(_, f)| *f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct A(u32);
    #[derive(Debug, PartialEq, Default)]
    struct B(String);

    #[test]
    fn extensions_hold_one_value_per_type() {
        let mut ext = Extensions::default();
        assert!(ext.get::<A>().is_none());
        ext.insert(A(1));
        ext.insert(A(2));
        assert_eq!(ext.get::<A>(), Some(&A(2)));
        ext.get_or_insert_with(B::default).0.push('x');
        ext.get_or_insert_with(B::default).0.push('y');
        assert_eq!(ext.get::<B>().map(|b| b.0.as_str()), Some("xy"));
        assert_eq!(ext.remove::<A>(), Some(A(2)));
        assert!(ext.get::<A>().is_none());
        assert!(ext.get::<B>().is_some());
    }

    struct F1;
    struct F2;

    #[test]
    fn flags_are_distinct_bits() {
        let mut table = FlagTable::default();
        let (Some(a), Some(b)) = (table.allocate::<F1>(), table.allocate::<F2>()) else {
            panic!("allocation failed");
        };
        assert_eq!(table.allocate::<F1>(), Some(a));
        let mut flags = SessionFlags::default();
        flags.set(b, true);
        assert!(flags.has(b) && !flags.has(a));
        flags.set(b, false);
        assert!(!flags.has(b));
    }
}
