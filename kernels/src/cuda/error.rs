//! Errors of the CUDA backend: one enum for driver, NVRTC, cuBLAS and argument-check failures.
//!
//! Launchers check device, dtype and shapes before anything reaches the GPU and report a violated
//! expectation as [`CudaError::Shape`] / [`CudaError::Dtype`]; nothing here panics on bad input.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;

/// Result alias for the CUDA backend.
pub type Result<T> = std::result::Result<T, CudaError>;

/// Everything that can go wrong in the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No CUDA driver library (libcuda) could be loaded.
    #[error("no CUDA driver library found")]
    NoDriver,
    /// A required CUDA library other than the driver is missing.
    #[error("CUDA library {0} not found (set LD_LIBRARY_PATH to the CUDA 13 lib directory)")]
    MissingLibrary(&'static str),
    /// The requested GPU ordinal does not exist.
    #[error("GPU {requested} requested but {available} device(s) present")]
    NoDevice { requested: usize, available: usize },
    /// A CUDA driver API call failed.
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    /// A named CUDA driver call failed.
    #[error("{call}: {source}")]
    Call {
        call: &'static str,
        source: DriverError,
    },
    /// NVRTC refused a kernel source.
    #[error("NVRTC compile of {program} failed: {log}")]
    Compile { program: String, log: String },
    /// A cuBLAS call failed.
    #[error("cuBLAS: {0}")]
    Cublas(#[from] CublasError),
    /// A cuBLASLt call failed.
    #[error("cuBLASLt: {0:?}")]
    CublasLt(cudarc::cublaslt::result::CublasError),
    /// A launcher's shape check failed.
    #[error("shape: {0}")]
    Shape(String),
    /// A launcher's dtype check failed.
    #[error("dtype: expected {expected:?}, got {got:?} for {what}")]
    Dtype {
        what: &'static str,
        expected: super::tensor::DType,
        got: super::tensor::DType,
    },
    /// A tensor lives on another device than the context.
    #[error("tensor {what} is on GPU {got}, context is GPU {expected}")]
    WrongDevice {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// The on-disk kernel cache could not be read or written.
    #[error("kernel cache {path}: {source}")]
    Cache {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl CudaError {
    /// True for the driver errors that leave the context unusable: after one of these every
    /// later call in the process fails too (the CUDA programming guide's "sticky" errors).
    pub fn is_sticky(&self) -> bool {
        use cudarc::driver::sys::CUresult as R;
        matches!(
            self,
            CudaError::Driver(DriverError(
                R::CUDA_ERROR_ILLEGAL_ADDRESS
                    | R::CUDA_ERROR_LAUNCH_FAILED
                    | R::CUDA_ERROR_MISALIGNED_ADDRESS
                    | R::CUDA_ERROR_ILLEGAL_INSTRUCTION
                    | R::CUDA_ERROR_INVALID_ADDRESS_SPACE
                    | R::CUDA_ERROR_INVALID_PC
                    | R::CUDA_ERROR_HARDWARE_STACK_ERROR
                    | R::CUDA_ERROR_ECC_UNCORRECTABLE
                    | R::CUDA_ERROR_ASSERT
            ))
        )
    }
}

/// Builds a [`CudaError::Shape`] when `cond` is false.
pub(crate) fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(CudaError::Shape(msg()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::driver::sys::CUresult as R;

    #[test]
    fn sticky_errors_are_the_context_losing_ones() {
        assert!(CudaError::Driver(DriverError(R::CUDA_ERROR_ILLEGAL_ADDRESS)).is_sticky());
        assert!(CudaError::Driver(DriverError(R::CUDA_ERROR_LAUNCH_FAILED)).is_sticky());
        assert!(!CudaError::Driver(DriverError(R::CUDA_ERROR_OUT_OF_MEMORY)).is_sticky());
        assert!(!CudaError::Driver(DriverError(R::CUDA_ERROR_INVALID_VALUE)).is_sticky());
        assert!(!CudaError::Shape("x".into()).is_sticky());
    }
}
