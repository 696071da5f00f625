//! `DTensor`: an owned, contiguous device buffer with a dtype and a row-major shape.
//!
//! Invariants: `ptr` is the device address of `buf` and stays valid while the tensor lives;
//! `buf.len() == numel * dtype.size()`. Element offsets handed to kernels are computed from the
//! shape, never from caller arithmetic on raw pointers.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use half::bf16;

use super::error::{ensure, CudaError, Result};

/// Element types the backend stores on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// bfloat16, the storage type of weights, activations and KV.
    Bf16,
    /// f32, used for logits, partial sums and RoPE frequencies.
    F32,
    /// i32, used for token ids, positions, slots and page tables.
    I32,
    /// Raw bytes (KV pages moved as opaque data).
    U8,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bf16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::U8 => 1,
        }
    }
}

/// What keeps a tensor's memory alive: a cudarc allocation (stream-ordered), or memory owned by
/// something else (a `cuMemAlloc` allocation that can be exported, a mapping of another process's
/// allocation), freed when that owner drops.
#[derive(Clone)]
enum Backing {
    Slice(Arc<CudaSlice<u8>>),
    Other(#[allow(dead_code)] Arc<dyn std::any::Any + Send + Sync>),
}

/// A device tensor. Dropping the last tensor over an allocation frees the memory
/// (stream-ordered); [`DTensor::view`] makes further tensors over a part of one.
pub struct DTensor {
    buf: Backing,
    ptr: u64,
    dtype: DType,
    shape: Vec<usize>,
    ordinal: usize,
}

impl DTensor {
    /// Allocates an uninitialised tensor on `stream`'s device.
    pub(crate) fn alloc(stream: &Arc<CudaStream>, dtype: DType, shape: &[usize]) -> Result<Self> {
        let numel: usize = shape.iter().product();
        let bytes = (numel * dtype.size()).max(16);
        // SAFETY: the memory is uninitialised; every kernel and copy that reads a tensor is
        // preceded by one that writes it (checks poison outputs to prove that).
        let buf = unsafe { stream.alloc::<u8>(bytes) }?;
        let ptr = {
            let (ptr, _sync) = buf.device_ptr(stream);
            ptr
        };
        Ok(Self {
            ptr,
            buf: Backing::Slice(Arc::new(buf)),
            dtype,
            shape: shape.to_vec(),
            ordinal: stream.context().ordinal(),
        })
    }

    /// A tensor over device memory at `ptr` that `owner` keeps alive (and frees).
    ///
    /// # Safety
    /// `ptr` must address at least `numel(shape) * dtype.size()` bytes of device memory on GPU
    /// `ordinal`, valid while `owner` lives.
    pub(crate) unsafe fn over(
        owner: Arc<dyn std::any::Any + Send + Sync>,
        ptr: u64,
        dtype: DType,
        shape: &[usize],
        ordinal: usize,
    ) -> Self {
        Self {
            buf: Backing::Other(owner),
            ptr,
            dtype,
            shape: shape.to_vec(),
            ordinal,
        }
    }

    /// Device address of element 0.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Row-major shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
    /// GPU ordinal the memory lives on.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    /// Device address of element `index` (bounds-checked).
    pub fn ptr_at(&self, index: usize) -> Result<u64> {
        ensure(index <= self.numel(), || {
            format!("offset {index} past {} elements", self.numel())
        })?;
        Ok(self.ptr + (index * self.dtype.size()) as u64)
    }
    /// Reinterprets the shape (same element count).
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        ensure(shape.iter().product::<usize>() == self.numel(), || {
            format!("reshape {:?} -> {shape:?}", self.shape)
        })?;
        self.shape = shape.to_vec();
        Ok(self)
    }
    /// Checks dtype and exact shape.
    pub fn expect(&self, what: &'static str, dtype: DType, shape: &[usize]) -> Result<()> {
        if self.dtype != dtype {
            return Err(CudaError::Dtype {
                what,
                expected: dtype,
                got: self.dtype,
            });
        }
        ensure(self.shape == shape, || {
            format!("{what}: expected {shape:?}, got {:?}", self.shape)
        })
    }
    /// Checks dtype and that the tensor holds at least `numel` elements.
    pub fn expect_at_least(&self, what: &'static str, dtype: DType, numel: usize) -> Result<()> {
        if self.dtype != dtype {
            return Err(CudaError::Dtype {
                what,
                expected: dtype,
                got: self.dtype,
            });
        }
        ensure(self.numel() >= numel, || {
            format!("{what}: needs {numel} elements, has {}", self.numel())
        })
    }
    /// A tensor of `shape` over this one's elements from `offset` on (same dtype), sharing the
    /// allocation (bounds-checked; the memory lives while any view does).
    pub fn view(&self, offset: usize, shape: &[usize]) -> Result<Self> {
        let numel: usize = shape.iter().product();
        ensure(offset + numel <= self.numel(), || {
            format!(
                "view of {numel} elements at {offset} past {} elements",
                self.numel()
            )
        })?;
        Ok(Self {
            buf: self.buf.clone(),
            ptr: self.ptr + (offset * self.dtype.size()) as u64,
            dtype: self.dtype,
            shape: shape.to_vec(),
            ordinal: self.ordinal,
        })
    }
    /// The underlying cudarc allocation (the whole of it, also for a view), if cudarc made it.
    pub fn slice(&self) -> Option<&CudaSlice<u8>> {
        match &self.buf {
            Backing::Slice(s) => Some(s),
            Backing::Other(_) => None,
        }
    }
}

/// Converts f32 values to bf16 bit patterns (round to nearest even).
pub fn to_bf16_bits(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect()
}

/// Converts bf16 bit patterns to f32 (exact).
pub fn from_bf16_bits(v: &[u16]) -> Vec<f32> {
    v.iter().map(|&b| bf16::from_bits(b).to_f32()).collect()
}
