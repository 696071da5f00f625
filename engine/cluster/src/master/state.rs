//! The master's in-memory state: members with their liveness, the membership epoch, and the HTTP
//! metadata key-value map. Pure data plus transitions; persistence and networking live elsewhere.
//!
//! Invariants: `epoch` increases on every change of the alive set or of an alive member's address;
//! a member is alive iff it was heard from within the heartbeat timeout (or was loaded from the state
//! file less than one timeout ago).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::proto::{MemberInfo, Members, Register};

/// One store node (or client-contributed segment).
#[derive(Debug, Clone)]
pub struct Member {
    pub info: MemberInfo,
    pub used_bytes: u64,
    pub keys: u64,
    pub last_seen: Instant,
}

/// Everything the master knows.
#[derive(Debug, Default)]
pub struct State {
    pub epoch: u64,
    pub members: BTreeMap<String, Member>,
    pub metadata: BTreeMap<String, String>,
}

/// What a transition changed, so the caller knows whether to persist.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    None,
    Persist,
}

impl State {
    pub fn register(&mut self, r: &Register, now: Instant) -> Change {
        let info = MemberInfo {
            id: r.node_id.clone(),
            addr: r.addr.clone(),
            capacity: r.capacity,
            memory: r.memory,
            alive: true,
        };
        let changed = self.members.get(&r.node_id).map(|m| &m.info) != Some(&info);
        let m = self.members.entry(r.node_id.clone()).or_insert(Member {
            info: info.clone(),
            used_bytes: 0,
            keys: 0,
            last_seen: now,
        });
        m.info = info;
        m.last_seen = now;
        if changed {
            self.epoch += 1;
            tracing::info!(node = %r.node_id, addr = %r.addr, epoch = self.epoch, "member joined");
            Change::Persist
        } else {
            Change::None
        }
    }

    /// Returns whether the node is known; a known dead node comes back alive.
    pub fn heartbeat(&mut self, id: &str, used: u64, keys: u64, now: Instant) -> (bool, Change) {
        let Some(m) = self.members.get_mut(id) else {
            return (false, Change::None);
        };
        m.last_seen = now;
        m.used_bytes = used;
        m.keys = keys;
        if m.info.alive {
            return (true, Change::None);
        }
        m.info.alive = true;
        self.epoch += 1;
        tracing::info!(node = %id, epoch = self.epoch, "member back");
        (true, Change::Persist)
    }

    pub fn unregister(&mut self, id: &str) -> Change {
        if self.members.remove(id).is_some() {
            self.epoch += 1;
            tracing::info!(node = %id, epoch = self.epoch, "member left");
            Change::Persist
        } else {
            Change::None
        }
    }

    /// Marks members not heard from within `timeout` dead.
    pub fn sweep(&mut self, timeout: Duration, now: Instant) -> Change {
        let mut change = Change::None;
        for m in self.members.values_mut() {
            if m.info.alive && now.duration_since(m.last_seen) > timeout {
                m.info.alive = false;
                self.epoch += 1;
                tracing::warn!(node = %m.info.id, epoch = self.epoch, "member missed heartbeats: dead");
                change = Change::Persist;
            }
        }
        change
    }

    pub fn members(&self) -> Members {
        Members {
            epoch: self.epoch,
            nodes: self.members.values().map(|m| m.info.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str, addr: &str) -> Register {
        Register {
            node_id: id.into(),
            addr: addr.into(),
            capacity: 1,
            memory: 1,
        }
    }

    #[test]
    fn lifecycle_moves_epoch() {
        let mut s = State::default();
        let t0 = Instant::now();
        assert_eq!(s.register(&reg("a", "x:1"), t0), Change::Persist);
        assert_eq!(s.register(&reg("a", "x:1"), t0), Change::None);
        assert_eq!(s.epoch, 1);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(s.sweep(Duration::from_secs(1), later), Change::Persist);
        assert!(!s.members["a"].info.alive);
        assert_eq!(s.heartbeat("a", 0, 0, later), (true, Change::Persist));
        assert!(s.members["a"].info.alive);
        assert!(!s.heartbeat("zz", 0, 0, later).0);
        assert_eq!(s.unregister("a"), Change::Persist);
        assert_eq!(s.epoch, 4);
    }
}
