//! Membership: what both sides of the data path agree on. [`MasterLink`] is the RPC link to the
//! master (nodes register and heartbeat over it, clients refresh the membership over it) and
//! [`placement`] maps a key to its nodes from that membership (the master's `/query_key` uses it too).

pub mod master_link;
pub mod placement;

pub use master_link::MasterLink;
