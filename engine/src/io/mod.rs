//! The I/O layers: aligned buffers, the device, and the engines that move bytes.

pub mod buf;
