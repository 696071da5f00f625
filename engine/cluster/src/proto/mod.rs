//! The wire format of `docs/protocol.md`: a fixed 24-byte frame header ([`frame`]) and the typed meta
//! bodies of each opcode ([`codec`]). Decoding never trusts a length before checking it against the
//! limits here, so a hostile peer can cost at most one closed connection.

pub mod codec;
pub mod frame;
#[cfg(test)]
mod fuzz;

pub use codec::{
    GetItem, Heartbeat, Hello, MemberInfo, Members, PutItem, Reader, Register, Writer,
};
pub use frame::{Header, Op, HEADER_LEN, MAGIC, MAX_META, MAX_PAYLOAD, VERSION};

/// Protocol version carried in HELLO.
pub const PROTO_VERSION: u32 = 1;
/// Most items in one batched request.
pub const MAX_ITEMS: usize = 4096;
/// Longest `str` field.
pub const MAX_STR: usize = 4096;
