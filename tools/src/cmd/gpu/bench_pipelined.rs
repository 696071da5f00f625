//! The decode step as the server's overlap scheduler runs it: graph replays queued back to back
//! (the next launched before the previous is waited for; each graph ends with its greedy picks,
//! as the runner's do), with and
//! without the stream work the CUDA runner puts around every replay (the decode plan's tiles and
//! the batch metadata written from the host, the input ids copied from the previous step's
//! tokens on the device, the tokens copied back into a pinned slot). The raw graph step of
//! `bench_model.rs` waits for each step on the host, so it holds one launch gap per step; the
//! pipelined step without copies is the GPU's own time per step, and the difference with the
//! copies is what they add to a served step (the copies here write scratch buffers the graph
//! does not read: their stream-ordered cost, not their effect). Two leaner forms beside them:
//! the token copy back alone, and the per-row words the host knows (position, KV slot, key
//! count) written by one batch of stream memory operations instead of the two uploads, with
//! no device-side id copy (the ids read from the previous tokens in place). The runner does not
//! use memory operations: the one H100 they were tried on refused the batch (`memop_probe`).

use std::time::Instant;

use cudarc::driver::CudaGraph;
use strata_kernels::cuda::readback::Readback;
use strata_kernels::cuda::{CudaOps, DTensor, GpuContext};

/// Steps queued per measurement.
const STEPS: usize = 64;

/// What each pipelined step queues around its replay.
#[derive(Clone, Copy, PartialEq)]
pub enum StepCopies {
    /// Nothing: the replay alone.
    Bare,
    /// The tokens copied back into a pinned slot.
    Readback,
    /// The runner's copies today: tiles and metadata up, ids on the device, tokens back.
    Runner,
    /// 3 words per row by one cuStreamBatchMemOp, tokens back.
    MemOps,
}

/// Mean ms per step of `STEPS` replays of `g` queued back to back (each writing its greedy
/// picks into `tokens`, one per row) with `copies` around each; the median of three runs.
pub fn pipelined_step_ms(
    ops: &CudaOps,
    g: &CudaGraph,
    tokens: &DTensor,
    copies: StepCopies,
) -> anyhow::Result<f64> {
    let ctx = ops.context();
    let rows = tokens.numel();
    let meta = ctx.upload_i32(&[5 * rows], &vec![0; 5 * rows])?;
    let tiles = ctx.upload_i32(&[4 * rows], &vec![0; 4 * rows])?;
    let (meta_host, tiles_host) = (vec![1i32; 5 * rows], vec![1i32; 4 * rows]);
    let mut readback = Readback::new(ctx, 2, rows)?;
    let mut runs = Vec::new();
    for _ in 0..3 {
        ctx.synchronize()?;
        let t = Instant::now();
        for s in 0..STEPS {
            match copies {
                StepCopies::Runner => {
                    ctx.write_i32(&tiles, &tiles_host)?;
                    ctx.write_i32(&meta, &meta_host)?;
                    ctx.copy_words(&meta, 0, tokens, 0, rows)?;
                }
                StepCopies::MemOps => batch_write(ctx, meta.ptr(), 3 * rows, s as u32)
                    .map_err(|e| anyhow::anyhow!("cuStreamBatchMemOp: {e:?}"))?,
                StepCopies::Bare | StepCopies::Readback => {}
            }
            g.launch()?;
            if copies != StepCopies::Bare {
                // (Queueing slot k again waits for its previous copy: two steps in flight.)
                readback.queue(s % 2, tokens, rows)?;
            }
        }
        // (The stream drained: no copy into the readback's slots is left in flight.)
        ctx.synchronize()?;
        runs.push(t.elapsed().as_secs_f64() * 1e3 / STEPS as f64);
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs[1])
}

/// Writes `n` words from `addr` on (value `v`) by one batch of stream memory operations.
fn batch_write(
    ctx: &GpuContext,
    addr: u64,
    n: usize,
    v: u32,
) -> Result<(), cudarc::driver::DriverError> {
    use cudarc::driver::sys;
    let mut ops: Vec<sys::CUstreamBatchMemOpParams> = (0..n)
        .map(|i| {
            // SAFETY: a plain-data union; every field read by the driver is set below.
            let mut p: sys::CUstreamBatchMemOpParams = unsafe { std::mem::zeroed() };
            p.writeValue.operation = sys::CUstreamBatchMemOpType::CU_STREAM_MEM_OP_WRITE_VALUE_32;
            p.writeValue.address = addr + 4 * i as u64;
            p.writeValue.__bindgen_anon_1.value = v;
            p
        })
        .collect();
    ctx.cuda().bind_to_thread()?;
    // SAFETY: the caller's n words at addr are device memory of this context.
    unsafe {
        sys::cuStreamBatchMemOp_v2(
            ctx.stream().cu_stream(),
            ops.len() as u32,
            ops.as_mut_ptr(),
            0,
        )
        .result()
    }
}

/// Which stream memory operations this driver accepts (2026-12-07 an H100 answered
/// CUDA_ERROR_INVALID_VALUE to a batch of 32-bit writes): a batch and a single write on memory
/// from the context's allocator and on memory from cuMemAlloc, and the device attributes that
/// say whether they are supported.
pub fn memop_probe(ctx: &GpuContext) -> String {
    use cudarc::driver::sys;
    let mut out = Vec::new();
    let attr = |a: sys::CUdevice_attribute| -> String {
        let mut v = 0i32;
        // SAFETY: a plain query of device 0's attribute into v.
        match unsafe { sys::cuDeviceGetAttribute(&mut v, a, 0) }.result() {
            Ok(()) => v.to_string(),
            Err(e) => format!("{e:?}"),
        }
    };
    out.push(format!(
        "attributes: stream mem ops v1 {}, wait value nor {}",
        attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_MEM_OPS_V1),
        attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR_V1),
    ));
    let single = |addr: u64| -> String {
        let _ = ctx.cuda().bind_to_thread();
        // SAFETY: addr is 4 words of device memory of this context.
        match unsafe { sys::cuStreamWriteValue32_v2(ctx.stream().cu_stream(), addr, 7, 0) }.result()
        {
            Ok(()) => "ok".into(),
            Err(e) => format!("{e:?}"),
        }
    };
    let res = |r: Result<(), cudarc::driver::DriverError>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{e:?}"),
    };
    match ctx.upload_i32(&[4], &[0; 4]) {
        Ok(t) => out.push(format!(
            "context memory: batch {}, single {}",
            res(batch_write(ctx, t.ptr(), 4, 7)),
            single(t.ptr())
        )),
        Err(e) => out.push(format!("alloc: {e}")),
    }
    let mut p: sys::CUdeviceptr = 0;
    let _ = ctx.cuda().bind_to_thread();
    // SAFETY: a 16-byte allocation, freed below after the stream drained.
    match unsafe { sys::cuMemAlloc_v2(&mut p, 16) }.result() {
        Ok(()) => {
            out.push(format!(
                "cuMemAlloc memory: batch {}, single {}",
                res(batch_write(ctx, p, 4, 7)),
                single(p)
            ));
            let _ = ctx.synchronize();
            // SAFETY: p came from cuMemAlloc above; nothing uses it after the sync.
            let _ = unsafe { sys::cuMemFree_v2(p) };
        }
        Err(e) => out.push(format!("cuMemAlloc: {e:?}")),
    }
    out.join("; ")
}
