//! The log: segments on the device and their in-memory state.
//!
//! - [`layout`]: read-only view of what is on the device (recovery and inspection).
//! - [`segments`]: per-segment state, the append allocator, and sealing.

pub mod layout;
pub(crate) mod segments;
