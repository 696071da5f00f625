//! strata-cluster: the distributed L3. A master (membership, heartbeats, HTTP metadata, metrics),
//! store nodes serving a page store ([`strata_engine::Store`]) each, and the client library the
//! inference server links.
//!
//! ```text
//!  client ──MEMBERS (every 500 ms)──▶ master ◀──REGISTER/HEARTBEAT── store node
//!    │                                                                  ▲
//!    └──────── PUT/GET/EXISTS/REMOVE, placed by rendezvous hashing ─────┘
//! ```
//!
//! The master is off the data path: placement is a pure function of the membership (see
//! [`membership::placement`] and the "Cluster" section of docs/architecture.md). Wire format:
//! docs/protocol.md.

pub mod client;
pub mod error;
pub mod master;
pub mod membership;
pub mod node;
mod path;
pub mod proto;
mod store_ops;
pub mod transport;

pub use client::{Client, ClientConfig};
pub use error::{code, ClusterError, ClusterResult};
pub use master::{MasterConfig, MasterHandle};
pub use node::{NodeConfig, NodeHandle};
