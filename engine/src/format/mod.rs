//! Encoding and decoding of every on-disk structure, byte for byte as `docs/format.md` specifies.
//!
//! Pure functions over byte slices: no I/O here. Every decoder validates magic, version and crc and
//! returns `None` (or a typed error for the version) rather than trusting the bytes.

pub mod record;
pub mod segment;
pub mod summary;
pub mod superblock;

/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Device offset of segment 0.
pub const DATA_START: u64 = 64 * 1024;
/// Size of the segment header, each record header, and the footer.
pub const BLOCK: usize = crate::ALIGN;

pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().expect("2 bytes"))
}
pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// crc32c of `key ‖ value`: the value checksum, bound to its key.
pub fn value_crc(key: &[u8], value: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(key), value)
}

/// Device offset of segment `index`.
pub fn segment_offset(index: u32, segment_size: u64) -> u64 {
    DATA_START + index as u64 * segment_size
}
