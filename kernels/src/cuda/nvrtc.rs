//! NVRTC compilation of the `.cu` programs with an on-disk cubin cache.
//!
//! Each program is `common.cuh` + its `.cu` files (the prefill kernels' after
//! `prefill_common.cuh`), embedded in the binary with `include_str!`, so the release binary needs
//! no source tree. It is compiled for the device's real architecture
//! (`sm_XY`) straight to a cubin; the cubin is stored under `$XDG_CACHE_HOME/strata/kernels`
//! (else `~/.cache/strata/kernels`) named by SHA-256 over the source, the options, the
//! architecture, the NVRTC version and the driver version, so any change recompiles. A cache
//! that cannot be written is logged and skipped, never fatal.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::PathBuf;

use cudarc::nvrtc::{result as nvrtc_result, sys as nvrtc_sys};
use sha2::{Digest, Sha256};

use super::error::{CudaError, Result};

const COMMON: &str = include_str!("../../cuda/common.cuh");

/// The NVRTC programs, one per `.cu` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Program {
    /// KV page gather/scatter between the GPU pool and pinned host memory.
    Transfer,
    /// Embedding, RMSNorm, RoPE, SiLU*mul, KV write, random fill; the per-row LoRA kernels.
    Elementwise,
    /// Paged attention (prefill and decode) and its split combine.
    Attention,
    /// Sampling with penalties, top-k / top-p / min-p and seeds; logprobs; greedy argmax.
    Sampling,
    /// Skinny GEMM (decode batches of up to 8 rows).
    Gemv,
    /// The f32 ops of `CudaBackend` (the server's `Backend` trait).
    BackendF32,
    /// The wgmma prefill attention (`paged_attention_wg_d128`): compiled for `sm_90a` only, on
    /// compute-9.0 devices ([`Program::arch_for`]).
    AttentionWg,
    /// The wgmma + TMA gate_up GEMM with SiLU * up in its epilogue (`gemm_gate_silu_wg`):
    /// `sm_90a` on compute-9.0 devices only, like [`Program::AttentionWg`].
    GemmWg,
}

impl Program {
    /// Every program, for eager compilation and syntax checks.
    pub const ALL: [Program; 8] = [
        Program::Transfer,
        Program::Elementwise,
        Program::Attention,
        Program::Sampling,
        Program::Gemv,
        Program::BackendF32,
        Program::AttentionWg,
        Program::GemmWg,
    ];

    /// The NVRTC architecture `program` is compiled for on a device of architecture
    /// `device_arch` (`sm_XY`), None where it does not run there: the wgmma program needs the
    /// arch-specific `sm_90a` target and exists on compute 9.0 only; every other program is
    /// compiled for the device's own architecture.
    pub fn arch_for(self, device_arch: &str) -> Option<String> {
        match self {
            Program::AttentionWg | Program::GemmWg => {
                (device_arch == "sm_90").then(|| "sm_90a".to_string())
            }
            _ => Some(device_arch.to_string()),
        }
    }

    /// File name, for logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            Program::Transfer => "transfer.cu",
            Program::Elementwise => "elementwise.cu",
            Program::Attention => "attention.cu",
            Program::Sampling => "sampling.cu",
            Program::Gemv => "gemv.cu",
            Program::BackendF32 => "backend_f32.cu",
            Program::AttentionWg => "attention_prefill_wg.cu",
            Program::GemmWg => "gemm_wg.cu",
        }
    }

    /// Full translation unit handed to NVRTC.
    pub fn source(self) -> String {
        let body = match self {
            Program::Transfer => include_str!("../../cuda/transfer.cu"),
            Program::Elementwise => concat!(
                include_str!("../../cuda/elementwise.cu"),
                "\n",
                include_str!("../../cuda/lora.cu")
            ),
            Program::Attention => concat!(
                include_str!("../../cuda/attention.cu"),
                "\n",
                include_str!("../../cuda/attention_decode.cu"),
                "\n",
                include_str!("../../cuda/attention_decode2.cu"),
                "\n",
                include_str!("../../cuda/prefill_common.cuh"),
                "\n",
                include_str!("../../cuda/attention_prefill.cu"),
                "\n",
                include_str!("../../cuda/attention_decode_mma.cu")
            ),
            Program::Sampling => include_str!("../../cuda/sampling.cu"),
            Program::Gemv => concat!(
                include_str!("../../cuda/gemv.cu"),
                "\n",
                include_str!("../../cuda/gemv_mma.cu")
            ),
            Program::BackendF32 => include_str!("../../cuda/backend_f32.cu"),
            Program::AttentionWg => concat!(
                include_str!("../../cuda/prefill_common.cuh"),
                "\n",
                include_str!("../../cuda/wgmma.cuh"),
                "\n",
                include_str!("../../cuda/attention_prefill_wg.cu")
            ),
            Program::GemmWg => concat!(
                include_str!("../../cuda/wgmma.cuh"),
                "\n",
                include_str!("../../cuda/gemm_wg.cu")
            ),
        };
        format!("{COMMON}\n#line 1 \"{}\"\n{body}", self.name())
    }
}

/// True when libnvrtc can be loaded (it panics on first use otherwise).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library; no symbol is called.
    unsafe { nvrtc_sys::is_culib_present() }
}

/// NVRTC version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_present() {
        return Err(CudaError::MissingLibrary("libnvrtc"));
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: both out-pointers are valid for the duration of the call.
    let rc = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    nvrtc_check(rc, "version")?;
    Ok((major, minor))
}

fn nvrtc_check(rc: nvrtc_sys::nvrtcResult, program: &str) -> Result<()> {
    if rc == nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Compile {
            program: program.to_string(),
            log: format!("{rc:?}"),
        })
    }
}

/// The NVRTC options of every program for `arch` (the cache key hashes them too).
pub(crate) fn options(arch: &str) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-default-device".to_string(),
    ];
    // Decode-chain defaults with an A/B switch (common.cuh pdl_enter_chain, gemv.cu
    // gemv_ldw, attention_decode2.cu DEC2R_RING): defined unless the environment variable of
    // the same name is 0; part of the cache key as every option is.
    for knob in [
        "STRATA_PDL_EARLY",
        "STRATA_W_EVICT_FIRST",
        "STRATA_DEC2R_RING3",
    ] {
        if std::env::var(knob).map_or(true, |v| v != "0") {
            o.push(format!("-D{knob}"));
        }
    }
    o
}

/// Compiles `program` for `arch` (e.g. `sm_90`) to a cubin, without any cache.
pub fn compile(program: Program, arch: &str) -> Result<Vec<u8>> {
    compile_with(program, arch, &[]).map(|(cubin, _)| cubin)
}

/// Compiles `program` for `arch` with `extra` NVRTC options; returns the cubin and the compile
/// log (with `--ptxas-options=-v`, ptxas' register and spill report per kernel).
pub fn compile_with(program: Program, arch: &str, extra: &[&str]) -> Result<(Vec<u8>, String)> {
    if !nvrtc_present() {
        return Err(CudaError::MissingLibrary("libnvrtc"));
    }
    let err = |log: String| CudaError::Compile {
        program: program.name().to_string(),
        log,
    };
    let src = CString::new(program.source()).map_err(|e| err(e.to_string()))?;
    let name = CString::new(program.name()).map_err(|e| err(e.to_string()))?;
    let prog = nvrtc_result::create_program(&src, Some(name.as_c_str()))
        .map_err(|e| err(e.to_string()))?;
    let mut opts = options(arch);
    opts.extend(extra.iter().map(|o| o.to_string()));
    // SAFETY: `prog` is a live program until destroy_program below; the options outlive the call.
    let compiled = unsafe { nvrtc_result::compile_program(prog, &opts) };
    // SAFETY: `prog` is live; the log is NUL-terminated by NVRTC.
    let log = unsafe { nvrtc_result::get_program_log(prog) }
        .map(|l| {
            // SAFETY: NVRTC NUL-terminates the log buffer it fills.
            unsafe { CStr::from_ptr(l.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let out = match compiled {
        Err(e) => Err(err(format!("{e:?}: {log}"))),
        Ok(()) => cubin_of(prog)
            .map(|c| (c, log))
            .map_err(|e| err(format!("get cubin: {e:?}"))),
    };
    // SAFETY: `prog` was created above and is destroyed exactly once.
    let _ = unsafe { nvrtc_result::destroy_program(prog) };
    out
}

fn cubin_of(prog: nvrtc_sys::nvrtcProgram) -> std::result::Result<Vec<u8>, nvrtc_sys::nvrtcResult> {
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully for a real architecture, so a cubin exists.
    let rc = unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) };
    if rc != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(rc);
    }
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` holds exactly the size NVRTC reported.
    let rc = unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char) };
    if rc != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(rc);
    }
    Ok(buf)
}

/// Directory of the kernel cache.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("strata/kernels"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/strata/kernels"))
}

/// Cache key: hex SHA-256 over everything that changes the cubin.
pub fn cache_key(program: Program, arch: &str, nvrtc: (i32, i32), driver: i32) -> String {
    let mut h = Sha256::new();
    h.update(program.source().as_bytes());
    for o in options(arch) {
        h.update(o.as_bytes());
        h.update([0]);
    }
    h.update(format!("{arch}|nvrtc{}.{}|driver{driver}", nvrtc.0, nvrtc.1).as_bytes());
    hex::encode(h.finalize())
}

/// Where a cubin came from, for logs and the check report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Read from the on-disk cache.
    Cache,
    /// Compiled now (and stored when the cache is writable).
    Compiled,
}

/// Returns the cubin for `program`, from the cache when present, compiling otherwise.
pub fn cubin_cached(program: Program, arch: &str, driver: i32) -> Result<(Vec<u8>, Origin)> {
    let key = cache_key(program, arch, nvrtc_version()?, driver);
    let path = cache_dir().map(|d| d.join(format!("{}-{arch}-{key}.cubin", program.name())));
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            if !bytes.is_empty() {
                return Ok((bytes, Origin::Cache));
            }
        }
    }
    let cubin = compile(program, arch)?;
    if let Some(p) = &path {
        if let Err(e) = store(p, &cubin) {
            tracing::warn!(error = %e, "kernel cache not written");
        }
    }
    Ok((cubin, Origin::Compiled))
}

fn store(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let io = |source| CudaError::Cache {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Write then rename: a concurrent reader sees the old file or the whole new one.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
