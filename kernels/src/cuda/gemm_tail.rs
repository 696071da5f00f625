//! The end of a single-row attention sub-layer and the start of its MLP in two kernels instead
//! of three (`Gemm::o_norm_gate_t1`, `Fusion::GateNorm`): the o projection added into the
//! residual in its GEMV's epilogue (`gemv_bf16_t1_resid`), then the gate GEMV with the MLP's
//! input RMSNorm staged from that residual (`gemv_bf16_t1_gate_norm`), in place of o into its
//! own row, `rmsnorm_add2` (or `rmsnorm`) and the gate GEMV: one kernel boundary fewer per
//! layer on the batch-1 decode chain (1B step x0.979-0.987 on an H100, docs/perf.md). Bit for
//! bit the residual and act rows of the three kernels. Only at hidden [`NORM_IN_QKV`], where the
//! staged norm is exact and paid (the qkv GEMV's staged norm cost at 4096).

use cudarc::driver::CudaFunction;

use super::device::GpuContext;
use super::error::Result;
use super::gemm::{t1_dims, GEMV_T1_MAX_IN, GEMV_T1_PIPE_MIN_IN, NORM_IN_QKV};
use super::launch::{launch, Arg};
use super::nvrtc::Program;
use super::tensor::{DTensor, DType};

// The gate GEMV runs at the staged width with one step in flight, as the plain gate GEMV does.
const _: () = assert!(NORM_IN_QKV < GEMV_T1_PIPE_MIN_IN);

/// The MLP's input norm of `Gemm::o_norm_gate_t1`: the residual row the o projection is added
/// into (after `add`, the previous MLP output, where the qkv GEMV staged the input norm and left
/// the residual alone), the norm weight and epsilon.
pub struct PostNorm<'a> {
    pub resid: &'a DTensor,
    pub add: Option<&'a DTensor>,
    pub weight: &'a DTensor,
    pub eps: f32,
}

/// The two kernels (o in its one- and two-steps-in-flight forms; the gate GEMV at the staged
/// width, one step).
pub struct TailGemv {
    resid: CudaFunction,
    resid_pipe: CudaFunction,
    gate_norm: CudaFunction,
}

impl TailGemv {
    pub fn load(ctx: &GpuContext) -> Result<Self> {
        let f = |n| ctx.function(Program::Gemv, n);
        Ok(Self {
            resid: f("gemv_bf16_t1_resid")?,
            resid_pipe: f("gemv_bf16_t1_resid_pipe")?,
            gate_norm: f("gemv_bf16_t1_gate_norm")?,
        })
    }

    /// resid += (add) + attn * o^T, then act = silu(gate) * up of rmsnorm(resid) * weight:
    /// attn [1, q_dim], o [hidden, q_dim], the residual, `add` and act rows bf16, gate_up
    /// [2 * inter, hidden] (gate rows first). `Ok(false)` where the shapes do not fit (more than
    /// one row, hidden other than [`NORM_IN_QKV`], unaligned): the caller runs the three kernels
    /// instead. The caller has checked that the gate GEMV applies to gate_up.
    pub fn run(
        &self,
        ctx: &GpuContext,
        attn: &DTensor,
        o: &DTensor,
        norm: &PostNorm<'_>,
        gate_up: &DTensor,
        act: &DTensor,
    ) -> Result<bool> {
        let (h, qd) = match o.shape() {
            [h, qd] => (*h, *qd),
            _ => return Ok(false),
        };
        let rows = [Some(attn), Some(norm.resid), norm.add];
        if h != NORM_IN_QKV
            || gate_up.shape().get(1) != Some(&h)
            || qd % 8 != 0
            || qd > GEMV_T1_MAX_IN
            || o.ptr() % 16 != 0
            || norm.weight.ptr() % 16 != 0
            || rows
                .iter()
                .flatten()
                .any(|t| t.shape().first() != Some(&1) || t.ptr() % 16 != 0)
        {
            return Ok(false);
        }
        let inter = gate_up.shape()[0] / 2;
        for (n, t, d) in [
            ("attn", attn, [1, qd]),
            ("o", o, [h, qd]),
            ("resid", norm.resid, [1, h]),
            ("gate_up", gate_up, [2 * inter, h]),
            ("act", act, [1, inter]),
        ] {
            ctx.check_device(n, t)?;
            t.expect(n, DType::Bf16, &d)?;
        }
        if let Some(a) = norm.add {
            ctx.check_device("add", a)?;
            a.expect("add", DType::Bf16, &[1, h])?;
        }
        ctx.check_device("norm weight", norm.weight)?;
        norm.weight.expect("norm weight", DType::Bf16, &[h])?;
        ctx.cuda().bind_to_thread()?;
        let stream = ctx.stream().cu_stream();
        let resid_args = [
            Arg::U64(attn.ptr()),
            Arg::U64(o.ptr()),
            Arg::U64(norm.add.map_or(0, |a| a.ptr())),
            Arg::U64(norm.resid.ptr()),
            Arg::I32(h as i32),
            Arg::I32(qd as i32),
        ];
        let f = if qd >= GEMV_T1_PIPE_MIN_IN {
            &self.resid_pipe
        } else {
            &self.resid
        };
        // SAFETY: checked above: attn one row of qd bf16, o h x qd, add (if any) and resid one
        // row of h; warp j < h reads add[j] and reads and writes resid[j] only.
        unsafe { launch(f, stream, t1_dims(h, qd), &resid_args) }?;
        let gate_args = [
            Arg::U64(norm.resid.ptr()),
            Arg::U64(norm.weight.ptr()),
            Arg::F32(norm.eps),
            Arg::U64(gate_up.ptr()),
            Arg::U64(act.ptr()),
            Arg::I32(inter as i32),
            Arg::I32(h as i32),
        ];
        // SAFETY: checked above: resid one row and the norm weight h == NORM_IN_QKV bf16 (the
        // staged norm's width), gate_up 2 * inter x h, act inter bf16.
        unsafe { launch(&self.gate_norm, stream, t1_dims(inter, h), &gate_args) }?;
        Ok(true)
    }
}
