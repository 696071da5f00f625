//! The LM head of one row with the greedy pick in its epilogue (`Gemm::head_argmax_t1`,
//! `Fusion::HeadArgmax`): the single-row GEMV writes the f32 logits and reduces their argmax as
//! it goes (`gemv_bf16_t1_argmax`: a key per logit, the block's max in shared memory, the grid's
//! in an 8-byte word of scratch, the token written by the last block to finish, its ticket taken
//! in groups of blocks so that few atomics meet on one address), in place of
//! the GEMV and `argmax_rows`' kernel, which read the 128K logits again in one block at the end
//! of every decode step. Bit for bit the same logits and the same token (lowest index on ties,
//! NaN and -inf never picked). The scratch (the running max and a block ticket) is left zero by
//! every launch, so graph replays reuse it; one per `Gemm`, whose launches are ordered on its
//! stream. [`head_and_pick`] is the one-row head both forwards (the server's runner, the bench's
//! `LlamaModel`) call, falling back to the GEMV and `argmax_rows`.
//!
//! The last block may also put the token where the next step wants it ([`PickOut`]): a decode
//! graph's own input id, and a mapped pinned host word named at run time by a cell the stream
//! writes before the launch, so that a queued replay's token reaches the host with no copy or
//! kernel after the replay (`STRATA_LEAN_STEP`, the server's graph.rs).

use cudarc::driver::CudaFunction;

use super::device::GpuContext;
use super::error::Result;
use super::gemm::{t1_dims, Gemm, GEMV_T1_MAX_IN, GEMV_T1_PIPE_MIN_IN};
use super::launch::{launch, Arg};
use super::nvrtc::Program;
use super::ops::CudaOps;
use super::tensor::{DTensor, DType};

/// Where the fused head's last block also puts the token (each 0 where unused): device
/// addresses, fixed when a graph is captured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PickOut {
    /// An i32 that also gets the token (a decode graph's own input id: what its next replay
    /// reads when it continues the row).
    pub next_id: u64,
    /// An 8-byte cell holding the device address of a mapped pinned host word, or 0 (nothing
    /// stored), read when the kernel runs (`Readback::slot_device_ptr`).
    pub host_cell: u64,
}

/// The LM head of one row and its greedy pick (h [1, in], logits [1, vocab] f32, token [1]):
/// [`Gemm::head_argmax_t1`] where it applies (true: `out` honoured too), else `linear` and
/// `argmax_rows` (false: `out` not written), with the same logits and token either way.
pub fn head_and_pick(
    ops: &CudaOps,
    gemm: &Gemm,
    h: &DTensor,
    head: &DTensor,
    logits: &DTensor,
    token: &DTensor,
    out: PickOut,
) -> Result<bool> {
    if gemm.head_argmax_t1(h, head, logits, token, out)? {
        return Ok(true);
    }
    gemm.linear(h, head, logits)?;
    ops.argmax_rows(logits, token)?;
    Ok(false)
}

/// Bytes of scratch before the group tickets: best (u64) at 0, done (u32) at 8.
const TICKETS_AT: u64 = 128;
/// The kernel's HEAD_GROUPS group tickets, each on a 128-byte line of its own.
const GROUPS: usize = 32;

/// The kernel in its one- and two-steps-in-flight forms (picked as `Gemm::linear` picks the
/// plain GEMV's) and its scratch: [best: u64, done: u32, pad to 128 bytes, then GROUPS tickets
/// (u32) 128 bytes apart], zero between launches.
pub struct HeadGemv {
    argmax: CudaFunction,
    argmax_pipe: CudaFunction,
    scratch: DTensor,
    /// The grouped tickets (`STRATA_HEAD_TICKETS=0` at start: one ticket word for every block,
    /// the first form, for A/B runs).
    grouped: bool,
}

impl HeadGemv {
    pub fn load(ctx: &GpuContext) -> Result<Self> {
        let f = |n| ctx.function(Program::Gemv, n);
        let words = (TICKETS_AT as usize + 128 * GROUPS) / 4;
        Ok(Self {
            argmax: f("gemv_bf16_t1_argmax")?,
            argmax_pipe: f("gemv_bf16_t1_argmax_pipe")?,
            scratch: ctx.upload_i32(&[words], &vec![0; words])?,
            grouped: std::env::var("STRATA_HEAD_TICKETS").map_or(true, |v| v != "0"),
        })
    }

    /// logits = x * w^T (f32) and token[0] = its argmax (also put where `out` says), for x
    /// [1, in] bf16, w [vocab, in] bf16, logits [1, vocab] f32, token [1] i32. `Ok(false)` where
    /// the shapes do not fit the single-row kernel (more than one row, in % 8 != 0 or longer
    /// than it stages, unaligned): the caller runs `linear` and `argmax_rows`.
    pub fn run(
        &self,
        ctx: &GpuContext,
        x: &DTensor,
        w: &DTensor,
        logits: &DTensor,
        token: &DTensor,
        out: PickOut,
    ) -> Result<bool> {
        let (n, k) = match w.shape() {
            [n, k] => (*n, *k),
            _ => return Ok(false),
        };
        if x.shape() != [1, k]
            || logits.shape() != [1, n]
            || token.shape() != [1]
            || k % 8 != 0
            || k > GEMV_T1_MAX_IN
            || x.ptr() % 16 != 0
            || w.ptr() % 16 != 0
        {
            return Ok(false);
        }
        if out.next_id % 4 != 0 || out.host_cell % 8 != 0 {
            return Err(super::error::CudaError::Shape(format!(
                "head pick: unaligned next id {:#x} or host cell {:#x}",
                out.next_id, out.host_cell
            )));
        }
        for (name, t, d) in [
            ("x", x, DType::Bf16),
            ("w", w, DType::Bf16),
            ("logits", logits, DType::F32),
            ("token", token, DType::I32),
        ] {
            ctx.check_device(name, t)?;
            t.expect(name, d, t.shape())?;
        }
        ctx.cuda().bind_to_thread()?;
        let args = [
            Arg::U64(x.ptr()),
            Arg::U64(w.ptr()),
            Arg::U64(logits.ptr()),
            Arg::I32(n as i32),
            Arg::I32(k as i32),
            Arg::U64(self.scratch.ptr()),
            Arg::U64(self.scratch.ptr() + 8),
            Arg::U64(if self.grouped {
                self.scratch.ptr() + TICKETS_AT
            } else {
                0
            }),
            Arg::U64(token.ptr()),
            Arg::U64(out.next_id),
            Arg::U64(out.host_cell),
        ];
        let f = if k >= GEMV_T1_PIPE_MIN_IN {
            &self.argmax_pipe
        } else {
            &self.argmax
        };
        // SAFETY: checked above: x one row of k <= GEMV_T1_MAX_IN bf16 (staged in shared
        // memory), w n x k bf16, logits n f32, token one i32, 16-byte aligned rows; the scratch
        // is this handle's (best at 0, done at 8, the GROUPS tickets from TICKETS_AT 128 bytes
        // apart), zero between launches, which run in order on the context's stream; `out`'s
        // addresses are the caller's (an aligned i32 and an aligned 8-byte cell naming a mapped
        // host word, or 0), as its contract says.
        unsafe { launch(f, ctx.stream().cu_stream(), t1_dims(n, k), &args) }?;
        Ok(true)
    }
}
