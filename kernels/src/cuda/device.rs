//! `GpuContext`: one GPU, its compute stream, its copy stream and the loaded kernels.
//!
//! Invariants: the driver library is probed with `is_culib_present()` before any driver call
//! (cudarc panics otherwise); cudarc's per-buffer event tracking is disabled, so ordering is
//! explicit: all compute runs on `stream`, page copies on `copy_stream`, and the two meet only
//! through events (see `transfer.rs`). Kernels are compiled lazily per program and cached.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{self, CUdevice_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use super::error::{ensure, CudaError, Result};
use super::nvrtc::{self, Origin, Program};
use super::tensor::{from_bf16_bits, to_bf16_bits, DTensor, DType};

/// Element types whose values are plain bytes (no padding): what [`GpuContext::overwrite`] takes.
pub trait Plain: Copy {}
impl Plain for u16 {}
impl Plain for f32 {}
impl Plain for i32 {}

/// True when the CUDA driver library can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only attempts to dlopen libcuda; no symbol is resolved.
    unsafe { sys::is_culib_present() }
}

/// Driver API version (e.g. 13000), or None without a driver.
pub fn driver_version() -> Option<i32> {
    if !driver_present() {
        return None;
    }
    let mut v = 0;
    // SAFETY: the driver library is present (checked above); `v` is a valid out-pointer.
    let rc = unsafe { sys::cuDriverGetVersion(&mut v) };
    (rc == sys::CUresult::CUDA_SUCCESS).then_some(v)
}

/// Number of visible GPUs (0 without a driver).
pub fn device_count() -> usize {
    if !driver_present() {
        return 0;
    }
    CudaContext::device_count()
        .map(|n| n.max(0) as usize)
        .unwrap_or(0)
}

/// A GPU ready for kernels: context, streams, and lazily compiled programs.
pub struct GpuContext {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    copy_stream: Arc<CudaStream>,
    ordinal: usize,
    arch: String,
    sm_count: usize,
    name: String,
    driver: i32,
    modules: Mutex<HashMap<Program, (Arc<CudaModule>, Origin)>>,
}

impl GpuContext {
    /// Opens GPU `ordinal` (the `--base-gpu-id`).
    pub fn new(ordinal: usize) -> Result<Arc<Self>> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        let available = device_count();
        if ordinal >= available {
            return Err(CudaError::NoDevice {
                requested: ordinal,
                available,
            });
        }
        let ctx = CudaContext::new(ordinal)?;
        // SAFETY: every buffer is used on `stream`, or on `copy_stream` behind an explicit event
        // wait, so cudarc's implicit per-buffer events are redundant.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let copy_stream = ctx.new_stream()?;
        let (major, minor) = ctx.compute_capability()?;
        super::launch::init_pdl(major);
        let sm_count =
            ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as usize;
        let name = ctx.name()?;
        Ok(Arc::new(Self {
            ctx,
            stream,
            copy_stream,
            ordinal,
            arch: format!("sm_{major}{minor}"),
            sm_count,
            name,
            driver: driver_version().unwrap_or(0),
            modules: Mutex::new(HashMap::new()),
        }))
    }

    /// The cudarc context.
    pub fn cuda(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The compute stream every op launches on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// The stream KV page copies run on.
    pub fn copy_stream(&self) -> &Arc<CudaStream> {
        &self.copy_stream
    }
    /// GPU ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    /// NVRTC architecture name, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }
    /// Streaming multiprocessors.
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }
    /// Device name as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Driver API version.
    pub fn driver(&self) -> i32 {
        self.driver
    }
    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        Ok(self.ctx.mem_get_info()?)
    }

    /// Loads (compiling on first use) `program` and returns where its cubin came from.
    pub fn load(&self, program: Program) -> Result<Origin> {
        self.module(program).map(|(_, o)| o)
    }

    fn module(&self, program: Program) -> Result<(Arc<CudaModule>, Origin)> {
        let mut map = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = map.get(&program) {
            return Ok(m.clone());
        }
        let arch = program
            .arch_for(&self.arch)
            .ok_or_else(|| CudaError::Compile {
                program: program.name().to_string(),
                log: format!("not built for {}", self.arch),
            })?;
        let (cubin, origin) = nvrtc::cubin_cached(program, &arch, self.driver)?;
        let module = self.ctx.load_module(Ptx::from_binary(cubin))?;
        map.insert(program, (module.clone(), origin));
        Ok((module, origin))
    }

    /// Looks up kernel `name` in `program`. `STRATA_CARVEOUT=P` (0-100) asks for a P % shared-
    /// memory carveout on every kernel (an A/B knob: an SM runs blocks of two kernels at once,
    /// as programmatic dependent launch wants, only under one L1 / shared-memory split, and
    /// the driver picks each kernel's split on its own; unset: the driver's choice).
    pub fn function(&self, program: Program, name: &str) -> Result<CudaFunction> {
        let (m, _) = self.module(program)?;
        let f = m.load_function(name)?;
        if let Some(p) = carveout_from_env() {
            self.ctx.bind_to_thread()?;
            let attr = cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT;
            f.set_attribute(attr, p)?;
        }
        Ok(f)
    }

    /// Allocates an uninitialised tensor.
    pub fn alloc(&self, dtype: DType, shape: &[usize]) -> Result<DTensor> {
        DTensor::alloc(&self.stream, dtype, shape)
    }

    /// Fills a tensor's bytes with `byte` (used to poison outputs in checks).
    pub fn memset(&self, t: &DTensor, byte: u8) -> Result<()> {
        self.ctx.bind_to_thread()?;
        // SAFETY: the range is exactly the tensor's allocation, on its stream.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                t.ptr(),
                byte,
                t.bytes(),
                self.stream.cu_stream(),
            )
        }?;
        Ok(())
    }

    fn upload_raw<T: Copy>(&self, dtype: DType, shape: &[usize], data: &[T]) -> Result<DTensor> {
        let numel: usize = shape.iter().product();
        ensure(numel == data.len(), || {
            format!("upload: shape {shape:?} but {} values", data.len())
        })?;
        let t = self.alloc(dtype, shape)?;
        self.ctx.bind_to_thread()?;
        // SAFETY: `t` holds exactly `size_of_val(data)` bytes; the copy is synchronous with
        // respect to the host buffer because the stream is synchronised before returning.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                t.ptr(),
                data.as_ptr() as *const c_void,
                std::mem::size_of_val(data),
                self.stream.cu_stream(),
            )
            .result()?;
        }
        self.stream.synchronize()?;
        Ok(t)
    }

    /// Uploads bf16 bit patterns as a bf16 tensor (checkpoint weights, no f32 round trip).
    pub fn upload_bf16_bits(&self, shape: &[usize], data: &[u16]) -> Result<DTensor> {
        self.upload_raw(DType::Bf16, shape, data)
    }

    /// Writes `data` over the whole of an existing tensor of `data`'s element type and count
    /// (synchronous; the tensor keeps its address, so captured graphs that read it stay valid).
    pub fn overwrite<T: Plain>(&self, t: &DTensor, data: &[T]) -> Result<()> {
        ensure(
            t.dtype().size() == std::mem::size_of::<T>() && t.numel() == data.len(),
            || {
                format!(
                    "overwrite: {} values of {} bytes into {:?} of {:?}",
                    data.len(),
                    std::mem::size_of::<T>(),
                    t.shape(),
                    t.dtype()
                )
            },
        )?;
        // SAFETY: `Plain` types have no padding, so every byte of the slice is initialised.
        let bytes = unsafe {
            std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data))
        };
        self.upload_bytes(t, 0, bytes)
    }

    /// Copies `data` into the first elements of an existing 4-byte tensor, stream-ordered (the
    /// host slice is staged by the driver before this returns; later launches see the values).
    pub fn write_i32(&self, t: &DTensor, data: &[i32]) -> Result<()> {
        self.write_words(t, data)
    }

    /// [`GpuContext::write_i32`] of u32 values (page ids), bit for bit.
    pub fn write_u32(&self, t: &DTensor, data: &[u32]) -> Result<()> {
        self.write_words(t, data)
    }

    fn write_words<T: Copy>(&self, t: &DTensor, data: &[T]) -> Result<()> {
        debug_assert_eq!(std::mem::size_of::<T>(), 4);
        ensure(t.dtype().size() == 4 && data.len() <= t.numel(), || {
            format!("write_i32: {} values into {:?}", data.len(), t.shape())
        })?;
        if data.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread()?;
        // SAFETY: the destination range lies inside `t`; pageable source memory is copied to a
        // staging buffer before cuMemcpyHtoDAsync returns.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                t.ptr(),
                data.as_ptr() as *const c_void,
                std::mem::size_of_val(data),
                self.stream.cu_stream(),
            )
            .result()?;
        }
        Ok(())
    }

    /// Copies `n` 4-byte words from word `src_at` of `src` to word `dst_at` of `dst`, device to
    /// device, stream-ordered.
    pub fn copy_words(
        &self,
        dst: &DTensor,
        dst_at: usize,
        src: &DTensor,
        src_at: usize,
        n: usize,
    ) -> Result<()> {
        ensure(
            dst.dtype().size() == 4
                && src.dtype().size() == 4
                && dst_at + n <= dst.numel()
                && src_at + n <= src.numel(),
            || {
                format!(
                    "copy_words: {n} words from {src_at} of {:?} to {dst_at} of {:?}",
                    src.shape(),
                    dst.shape()
                )
            },
        )?;
        if n == 0 {
            return Ok(());
        }
        self.ctx.bind_to_thread()?;
        // SAFETY: both ranges lie inside their tensors (checked above), on this context.
        unsafe {
            sys::cuMemcpyDtoDAsync_v2(
                dst.ptr() + 4 * dst_at as u64,
                src.ptr() + 4 * src_at as u64,
                4 * n,
                self.stream.cu_stream(),
            )
            .result()?;
        }
        Ok(())
    }

    /// Downloads `n` f32 values of `t` from element `offset` on (synchronises the stream).
    pub fn download_f32_range(&self, t: &DTensor, offset: usize, n: usize) -> Result<Vec<f32>> {
        t.expect_at_least("download_f32_range", DType::F32, offset + n)?;
        let mut out = vec![0f32; n];
        self.stream.synchronize()?;
        self.ctx.bind_to_thread()?;
        // SAFETY: the source range lies inside `t`; `out` has room; synchronous copy.
        unsafe {
            sys::cuMemcpyDtoH_v2(
                out.as_mut_ptr() as *mut c_void,
                t.ptr() + (offset * 4) as u64,
                n * 4,
            )
            .result()?;
        }
        Ok(out)
    }

    /// Copies `out.len()` bytes of `t` from byte `offset` on to the host (synchronous).
    pub fn download_bytes(&self, t: &DTensor, offset: usize, out: &mut [u8]) -> Result<()> {
        ensure(offset + out.len() <= t.bytes(), || {
            format!("copy of {} bytes at {offset} past {}", out.len(), t.bytes())
        })?;
        self.stream.synchronize()?;
        self.ctx.bind_to_thread()?;
        // SAFETY: the device range lies inside `t`; `out` has room; synchronous copy.
        unsafe {
            sys::cuMemcpyDtoH_v2(
                out.as_mut_ptr() as *mut c_void,
                t.ptr() + offset as u64,
                out.len(),
            )
            .result()?;
        }
        Ok(())
    }

    /// Copies `src` into `t` from byte `offset` on (synchronous).
    pub fn upload_bytes(&self, t: &DTensor, offset: usize, src: &[u8]) -> Result<()> {
        ensure(offset + src.len() <= t.bytes(), || {
            format!("copy of {} bytes at {offset} past {}", src.len(), t.bytes())
        })?;
        self.stream.synchronize()?;
        self.ctx.bind_to_thread()?;
        // SAFETY: the device range lies inside `t`; `src` is valid for its length; synchronous.
        unsafe {
            sys::cuMemcpyHtoD_v2(
                t.ptr() + offset as u64,
                src.as_ptr() as *const c_void,
                src.len(),
            )
            .result()?;
        }
        Ok(())
    }

    /// Uploads f32 values as a bf16 tensor.
    pub fn upload_bf16(&self, shape: &[usize], data: &[f32]) -> Result<DTensor> {
        self.upload_raw(DType::Bf16, shape, &to_bf16_bits(data))
    }
    /// Uploads an f32 tensor.
    pub fn upload_f32(&self, shape: &[usize], data: &[f32]) -> Result<DTensor> {
        self.upload_raw(DType::F32, shape, data)
    }
    /// Uploads an i32 tensor.
    pub fn upload_i32(&self, shape: &[usize], data: &[i32]) -> Result<DTensor> {
        self.upload_raw(DType::I32, shape, data)
    }
    /// Uploads raw bytes.
    pub fn upload_u8(&self, shape: &[usize], data: &[u8]) -> Result<DTensor> {
        self.upload_raw(DType::U8, shape, data)
    }

    fn download_raw<T: Copy + Default>(&self, t: &DTensor) -> Result<Vec<T>> {
        let n = t.bytes() / std::mem::size_of::<T>();
        let mut out = vec![T::default(); n];
        self.stream.synchronize()?;
        self.ctx.bind_to_thread()?;
        // SAFETY: `out` has room for the tensor's bytes; synchronous copy.
        unsafe {
            sys::cuMemcpyDtoH_v2(out.as_mut_ptr() as *mut c_void, t.ptr(), t.bytes()).result()?;
        }
        Ok(out)
    }

    /// Downloads any tensor as f32 (bf16 widened exactly; i32 converted).
    pub fn download_f32(&self, t: &DTensor) -> Result<Vec<f32>> {
        match t.dtype() {
            DType::Bf16 => Ok(from_bf16_bits(&self.download_raw::<u16>(t)?)),
            DType::F32 => self.download_raw::<f32>(t),
            DType::I32 => Ok(self
                .download_raw::<i32>(t)?
                .into_iter()
                .map(|v| v as f32)
                .collect()),
            DType::U8 => Ok(self
                .download_raw::<u8>(t)?
                .into_iter()
                .map(f32::from)
                .collect()),
        }
    }
    /// Downloads an i32 tensor.
    pub fn download_i32(&self, t: &DTensor) -> Result<Vec<i32>> {
        t.expect_at_least("download_i32", DType::I32, 0)?;
        self.download_raw::<i32>(t)
    }
    /// Downloads raw bytes of any tensor.
    pub fn download_u8(&self, t: &DTensor) -> Result<Vec<u8>> {
        self.download_raw::<u8>(t)
    }

    /// Waits for all work on both streams.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize()?;
        self.copy_stream.synchronize()?;
        Ok(())
    }

    /// Checks a tensor lives on this GPU.
    pub fn check_device(&self, what: &'static str, t: &DTensor) -> Result<()> {
        if t.ordinal() != self.ordinal {
            return Err(CudaError::WrongDevice {
                what,
                expected: self.ordinal,
                got: t.ordinal(),
            });
        }
        Ok(())
    }
}

/// `STRATA_CARVEOUT`'s percentage (see [`GpuContext::function`]), read once.
fn carveout_from_env() -> Option<i32> {
    static P: std::sync::OnceLock<Option<i32>> = std::sync::OnceLock::new();
    *P.get_or_init(|| {
        std::env::var("STRATA_CARVEOUT")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|p| (0..=100).contains(p))
    })
}
