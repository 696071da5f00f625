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
//! token copy back alone. And the server's lean step at one row (graph.rs, `STRATA_LEAN_STEP`):
//! one copy of the metadata, the host cell and the tiles (the ids left out, as a replay
//! continuing the previous one leaves them) and the head storing its pick into the readback
//! slot the cell names, in a graph captured with that cell.

use std::time::Instant;

use cudarc::driver::CudaGraph;
use strata_kernels::cuda::llama::{LlamaModel, StepInput, Workspace};
use strata_kernels::cuda::readback::Readback;
use strata_kernels::cuda::{CudaOps, DTensor, Gemm, PickOut};
use strata_server::model::cuda::ReplayLayout;

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

/// Mean ms per step of the lean one-row step (`STEPS` replays queued back to back, the median
/// of three runs): a graph of `model`'s forward captured with its head's pick going into the
/// step input's id and, through a cell, into a readback slot; per step one copy of the words
/// after the ids (positions, slots, logits row, adapter, the cell naming this step's slot, the
/// tiles: the server's layout at one row) and the replay. None when the head does not take
/// the cell (more than one row, or the fused head off).
pub fn lean_step_ms(
    ops: &CudaOps,
    gemm: &Gemm,
    model: &LlamaModel,
    ws: &Workspace,
    input: &StepInput,
) -> anyhow::Result<Option<f64>> {
    if ws.picks.numel() != 1 {
        return Ok(None);
    }
    let ctx = ops.context();
    // The server's layout at one row; each copy starts after the ids (one word).
    let layout = ReplayLayout { bs: 1 };
    let step = ctx.upload_i32(&[layout.total_words()], &vec![0; layout.total_words()])?;
    let mut readback = Readback::new(ctx, 2, 1)?;
    ws.pick_out.set(PickOut {
        next_id: input.ids.ptr(),
        host_cell: step.ptr() + 4 * layout.cell_at() as u64,
    });
    let captured = model.capture(ops, gemm, ws, input);
    ws.pick_out.set(PickOut::default());
    let g = captured?;
    let after_ids = step.view(1, &[layout.total_words() - 1])?;
    let words = |slot: u64| layout.words(vec![1; 5], slot, &[1; 4]);
    // Does the head store? One replay into slot 0, whose word starts at -7.
    let probe = ctx.upload_i32(&[1], &[-7])?;
    readback.queue(0, &probe, 1)?;
    readback.claim(0)?;
    ctx.write_i32(&after_ids, &words(readback.slot_device_ptr(0))[1..])?;
    g.launch()?;
    readback.mark(0)?;
    let picked = ctx.download_i32(&ws.picks)?[0];
    if readback.wait(0, 1)?[0] != picked {
        return Ok(None);
    }
    let mut runs = Vec::new();
    for _ in 0..3 {
        ctx.synchronize()?;
        let t = Instant::now();
        for s in 0..STEPS {
            let slot = s % 2;
            readback.claim(slot)?;
            let w = words(readback.slot_device_ptr(slot));
            ctx.write_i32(&after_ids, &w[1..])?;
            g.launch()?;
            readback.mark(slot)?;
        }
        ctx.synchronize()?;
        runs.push(t.elapsed().as_secs_f64() * 1e3 / STEPS as f64);
    }
    runs.sort_by(f64::total_cmp);
    Ok(Some(runs[1]))
}
