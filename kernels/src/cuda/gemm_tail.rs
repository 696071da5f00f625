//! The end of a single-row attention sub-layer and the start of its MLP in two kernels instead
//! of three (`Gemm::o_norm_gate_t1`, `Fusion::GateNorm`): the o projection added into the
//! residual in its GEMV's epilogue (`gemv_bf16_t1_resid`), then the gate GEMV with the MLP's
//! input RMSNorm staged from that residual (`gemv_bf16_t1_gate_norm`), in place of o into its
//! own row, `rmsnorm_add2` (or `rmsnorm`) and the gate GEMV: one kernel boundary fewer per
//! layer on the batch-1 decode chain (1B step x0.979-0.987 on an H100, docs/perf.md). Bit for
//! bit the residual and act rows of the three kernels. Only at hidden [`NORM_IN_QKV`], where the
//! staged norm is exact and paid (the qkv GEMV's staged norm cost at 4096). Decode steps of 2-8
//! rows run the pair's few-row forms (`gemv_bf16_rows{2,4,8}_resid` / `_gate_norm`) in the exact
//! few-row mode (`STRATA_GEMV_ROWS=exact`, `gemm_rows.rs`; not yet in the default mode, which
//! runs the exact few-row GEMVs at 2 rows: the forms are not yet timed on a GPU).

use cudarc::driver::CudaFunction;

use super::device::GpuContext;
use super::error::Result;
use super::gemm::{t1_dims, GEMV_T1_MAX_IN, GEMV_T1_PIPE_MIN_IN, NORM_IN_QKV};
use super::gemm_rows::{ROWS_MAX_SMEM, ROWS_T};
use super::launch::{launch, Arg, Dims};
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
/// width, one step), and their few-row forms by [`ROWS_T`] index (empty where the device
/// refused their shared memory).
pub struct TailGemv {
    resid: CudaFunction,
    resid_pipe: CudaFunction,
    gate_norm: CudaFunction,
    rows: Vec<[CudaFunction; 2]>,
}

impl TailGemv {
    pub fn load(ctx: &GpuContext) -> Result<Self> {
        let f = |n: &str| ctx.function(Program::Gemv, n);
        let attr = cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        let mut rows = Vec::new();
        for t in ROWS_T {
            let pair = [
                f(&format!("gemv_bf16_rows{t}_resid"))?,
                f(&format!("gemv_bf16_rows{t}_gate_norm"))?,
            ];
            ctx.cuda().bind_to_thread()?;
            if pair
                .iter()
                .any(|k| k.set_attribute(attr, ROWS_MAX_SMEM as i32).is_err())
            {
                rows.clear();
                break;
            }
            rows.push(pair);
        }
        Ok(Self {
            resid: f("gemv_bf16_t1_resid")?,
            resid_pipe: f("gemv_bf16_t1_resid_pipe")?,
            gate_norm: f("gemv_bf16_t1_gate_norm")?,
            rows,
        })
    }

    /// resid += (add) + attn * o^T, then act = silu(gate) * up of rmsnorm(resid) * weight, row
    /// by row: attn [t, q_dim], o [hidden, q_dim], the residual, `add` and act rows bf16, gate_up
    /// [2 * inter, hidden] (gate rows first); t == 1, or the few-row forms of [`ROWS_T`] index
    /// `few` (the caller's pick of the exact few-row kernels for t rows). `Ok(false)` where the
    /// shapes do not fit (hidden other than [`NORM_IN_QKV`], unaligned, several rows without
    /// `few` or its kernels): the caller runs the three kernels instead. The caller has checked
    /// that the gate GEMV applies to gate_up.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        ctx: &GpuContext,
        attn: &DTensor,
        o: &DTensor,
        norm: &PostNorm<'_>,
        gate_up: &DTensor,
        act: &DTensor,
        few: Option<usize>,
    ) -> Result<bool> {
        let (h, qd) = match o.shape() {
            [h, qd] => (*h, *qd),
            _ => return Ok(false),
        };
        let t = attn.shape().first().copied().unwrap_or(0);
        let few = match few.and_then(|i| self.rows.get(i).map(|k| (i, k))) {
            Some((i, k))
                if (2..=ROWS_T[i]).contains(&t) && ROWS_T[i] * qd.max(h) * 2 <= ROWS_MAX_SMEM =>
            {
                Some((i, k))
            }
            _ if t == 1 => None,
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
                .any(|r| r.shape().first() != Some(&t) || r.ptr() % 16 != 0)
        {
            return Ok(false);
        }
        let inter = gate_up.shape()[0] / 2;
        for (n, x, d) in [
            ("attn", attn, [t, qd]),
            ("o", o, [h, qd]),
            ("resid", norm.resid, [t, h]),
            ("gate_up", gate_up, [2 * inter, h]),
            ("act", act, [t, inter]),
        ] {
            ctx.check_device(n, x)?;
            x.expect(n, DType::Bf16, &d)?;
        }
        if let Some(a) = norm.add {
            ctx.check_device("add", a)?;
            a.expect("add", DType::Bf16, &[t, h])?;
        }
        ctx.check_device("norm weight", norm.weight)?;
        norm.weight.expect("norm weight", DType::Bf16, &[h])?;
        ctx.cuda().bind_to_thread()?;
        let stream = ctx.stream().cu_stream();
        // The few-row kernels take the row count before the extents.
        let i = |v: usize| Arg::I32(v as i32);
        let rows_arg = few.map(|_| i(t));
        let resid_args: Vec<Arg> = [
            Arg::U64(attn.ptr()),
            Arg::U64(o.ptr()),
            Arg::U64(norm.add.map_or(0, |a| a.ptr())),
            Arg::U64(norm.resid.ptr()),
        ]
        .into_iter()
        .chain(rows_arg)
        .chain([i(h), i(qd)])
        .collect();
        let gate_args: Vec<Arg> = [
            Arg::U64(norm.resid.ptr()),
            Arg::U64(norm.weight.ptr()),
            Arg::F32(norm.eps),
            Arg::U64(gate_up.ptr()),
            Arg::U64(act.ptr()),
        ]
        .into_iter()
        .chain(rows_arg)
        .chain([i(inter), i(h)])
        .collect();
        // The few-row forms stage ROWS_T[i] rows of x in shared memory.
        let staged = |dims: Dims, k: usize| match few {
            Some((idx, _)) => Dims {
                smem: (ROWS_T[idx] * k * 2) as u32,
                ..dims
            },
            None => dims,
        };
        let (o_f, gate_f) = match few {
            Some((_, [r, g])) => (r, g),
            None if qd >= GEMV_T1_PIPE_MIN_IN => (&self.resid_pipe, &self.gate_norm),
            None => (&self.resid, &self.gate_norm),
        };
        // SAFETY: checked above: attn t rows of qd bf16, o h x qd, add (if any) and resid t
        // rows of h; warp j < h reads add[r][j] and reads and writes resid[r][j] only (r < t).
        unsafe { launch(o_f, stream, staged(t1_dims(h, qd), qd), &resid_args) }?;
        // SAFETY: checked above: resid t rows and the norm weight h == NORM_IN_QKV bf16 (the
        // staged norm's width), gate_up 2 * inter x h, act t rows of inter bf16.
        unsafe { launch(gate_f, stream, staged(t1_dims(inter, h), h), &gate_args) }?;
        Ok(true)
    }
}
