//! Opening the NIC named by `--disaggregation-ib-device` / `MOONCAKE_DEVICE`, once per process.
//!
//! The device context and its protection domain are leaked on purpose: `ibverbs` ties every queue
//! pair, completion queue and protection domain to a borrow of the context, and every connection's
//! queue pair to the protection domain. Leaking the two (one of each per process, opened once and
//! never closed before exit) gives them `'static` lifetimes, so a connection can own its queue pair
//! without self-referential structs.
//!
//! `ibverbs` 0.9 always uses port 1 of a device and refuses to open one whose port 1 is not active;
//! that refusal is one of the reasons `open_first` reports.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::{Mutex, OnceLock};

use ibverbs::{ibv_gid_type, Context, ProtectionDomain};

/// rdma-core's `IBV_GID_TYPE_ROCE_V2` (the `ibverbs` crate re-exports the type, not its values).
const GID_TYPE_ROCE_V2: ibv_gid_type = 2;

/// An opened RDMA device with its protection domain, shared by every connection of the process.
pub struct Device {
    pub name: String,
    pub ctx: &'static Context,
    pub pd: &'static ProtectionDomain<'static>,
    /// GID table index used for routed addressing (the first RoCE v2 entry, else the first entry);
    /// `None` when the port has no GID (plain LID routing).
    pub gid_index: Option<u32>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.name)
    }
}

/// Opens the first listed device that exists and whose port is up (any device when the list is
/// empty), or says why none could be opened. A device opened once is reused for the process.
pub fn open_first(wanted: &[String]) -> Result<&'static Device, String> {
    static OPEN: OnceLock<Mutex<HashMap<String, &'static Device>>> = OnceLock::new();
    let open = OPEN.get_or_init(Default::default);
    let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = wanted.iter().find_map(|w| open.get(w)) {
        return Ok(d);
    }
    let list = ibverbs::devices().map_err(|e| format!("ibverbs: listing devices failed: {e}"))?;
    let mut seen = Vec::new();
    let mut failed = Vec::new();
    for dev in list.iter() {
        let name = dev
            .name()
            .map(|n: &CStr| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        seen.push(name.clone());
        if !wanted.is_empty() && !wanted.contains(&name) {
            continue;
        }
        match open_one(&dev, &name) {
            Ok(d) => {
                let d: &'static Device = Box::leak(Box::new(d));
                open.insert(name, d);
                return Ok(d);
            }
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    if failed.is_empty() {
        Err(format!(
            "no RDMA device among {wanted:?} (present: {seen:?})"
        ))
    } else {
        Err(format!("could not open {}", failed.join("; ")))
    }
}

fn open_one(dev: &ibverbs::Device<'_>, name: &str) -> std::io::Result<Device> {
    // Leaked: see the module header.
    let ctx: &'static Context = Box::leak(Box::new(dev.open()?));
    let pd: &'static ProtectionDomain<'static> = Box::leak(Box::new(ctx.alloc_pd()?));
    // `ibverbs` looks an index up by position in its (compacted) table and asserts that the entry
    // there has that index, so only entries at their own position are candidates.
    let usable: Vec<_> = ctx
        .gid_table()
        .iter()
        .enumerate()
        .filter(|(i, g)| g.gid_index as usize == *i)
        .map(|(_, g)| g)
        .collect();
    let gid_index = usable
        .iter()
        .find(|g| g.gid_type == GID_TYPE_ROCE_V2 && g.ndev_ifindex != 0)
        .or_else(|| usable.first())
        .map(|g| g.gid_index);
    Ok(Device {
        name: name.to_owned(),
        ctx,
        pd,
        gid_index,
    })
}
