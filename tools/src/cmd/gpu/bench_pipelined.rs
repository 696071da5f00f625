//! The decode step as the server's overlap scheduler runs it: graph replays queued back to back
//! (the next launched before the previous is waited for; each graph ends with its greedy picks,
//! as the runner's do), with and
//! without the stream work the CUDA runner puts around every replay (the decode plan's tiles and
//! the batch metadata written from the host, the input ids copied from the previous step's
//! tokens on the device, the tokens copied back into a pinned slot). The raw graph step of
//! `bench_model.rs` waits for each step on the host, so it holds one launch gap per step; the
//! pipelined step without copies is the GPU's own time per step, and the difference with the
//! copies is what they add to a served step (the copies here write scratch buffers the graph
//! does not read: their stream-ordered cost, not their effect). A leaner form beside them: the
//! token copy back alone.

use std::time::Instant;

use cudarc::driver::CudaGraph;
use strata_kernels::cuda::readback::Readback;
use strata_kernels::cuda::{CudaOps, DTensor};

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
