//! The master's state file: JSON, written to a temporary file, fsynced, renamed over the old one and
//! the directory fsynced, so a crash leaves either the old or the new state, never a torn one.
//!
//! Only durable facts are saved (epoch, members, metadata); liveness is re-learned from heartbeats.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::state::{Member, State};
use crate::error::{ClusterError, ClusterResult};
use crate::proto::MemberInfo;

#[derive(Serialize, Deserialize)]
struct Saved {
    format: u32,
    epoch: u64,
    members: Vec<MemberInfo>,
    metadata: BTreeMap<String, String>,
}

/// Writes `state` to `path` atomically.
pub fn save(path: &Path, state: &State) -> ClusterResult<()> {
    let saved = Saved {
        format: 1,
        epoch: state.epoch,
        members: state.members.values().map(|m| m.info.clone()).collect(),
        metadata: state.metadata.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&saved)
        .map_err(|e| ClusterError::Config(format!("serialise state: {e}")))?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Loads the state file; a missing file is an empty state. Loaded members count as alive for one
/// heartbeat timeout from `now`, so clients see the cluster at once after a master restart.
pub fn load(path: &Path, now: Instant) -> ClusterResult<State> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(e.into()),
    };
    let saved: Saved = serde_json::from_slice(&bytes)
        .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?;
    if saved.format != 1 {
        return Err(ClusterError::Config(format!(
            "{}: unknown state format {}",
            path.display(),
            saved.format
        )));
    }
    let members = saved
        .members
        .into_iter()
        .map(|mut info| {
            info.alive = true;
            let m = Member {
                info,
                used_bytes: 0,
                keys: 0,
                last_seen: now,
            };
            (m.info.id.clone(), m)
        })
        .collect();
    Ok(State {
        epoch: saved.epoch + 1,
        members,
        metadata: saved.metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Register;

    #[test]
    fn save_load_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        let mut s = State::default();
        s.register(
            &Register {
                node_id: "n1".into(),
                addr: "127.0.0.1:7".into(),
                capacity: 10,
                memory: 2,
            },
            Instant::now(),
        );
        s.metadata.insert("k".into(), "v".into());
        save(&p, &s).unwrap();
        let l = load(&p, Instant::now()).unwrap();
        assert_eq!(l.members["n1"].info.addr, "127.0.0.1:7");
        assert_eq!(l.metadata["k"], "v");
        assert!(l.epoch > s.epoch);
        assert!(load(&dir.path().join("none"), Instant::now())
            .unwrap()
            .members
            .is_empty());
    }
}
