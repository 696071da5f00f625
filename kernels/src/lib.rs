//! strata-kernels: compute backends for the inference server.
//!
//! CUDA C sources (`*.cu`, compiled at run time by NVRTC) with typed launchers, and CPU reference
//! implementations of the same ops. Filled in by the server-core and CUDA issues.

pub mod cuda;
pub mod reference;
