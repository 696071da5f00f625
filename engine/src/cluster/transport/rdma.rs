//! RDMA device discovery through libibverbs (the `ibverbs` crate), built only with the `rdma` cargo
//! feature. This build finds and opens the NIC named by `--disaggregation-ib-device` /
//! `MOONCAKE_DEVICE`; page traffic still runs over TCP (see docs/architecture.md: no RDMA hardware
//! was available to develop or test a verbs data path, so none is claimed).

use std::ffi::CStr;

/// Opens the first listed device that exists. Returns its name, or `None` (with the reason) when no
/// listed device can be opened.
pub fn open_first(wanted: &[String]) -> Result<String, String> {
    let list = ibverbs::devices().map_err(|e| format!("ibverbs: listing devices failed: {e}"))?;
    let mut seen = Vec::new();
    for dev in list.iter() {
        let name = dev
            .name()
            .map(|n: &CStr| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if wanted.is_empty() || wanted.iter().any(|w| *w == name) {
            match dev.open() {
                Ok(_ctx) => return Ok(name),
                Err(e) => return Err(format!("ibverbs: opening {name} failed: {e}")),
            }
        }
        seen.push(name);
    }
    Err(format!(
        "no RDMA device among {wanted:?} (present: {seen:?})"
    ))
}
