//! Fused single-row decode steps (batch 1: a decode step is launch- and latency-bound, every
//! kernel removed saves its launch gap and its memory round trips):
//! - `gemv_bf16_t1_norm`: the residual add + RMSNorm in the projection's x staging (removes both
//!   `rmsnorm` launches of a layer and the final one before the LM head);
//! - `gemv_bf16_t1_norm_rope`: the same for the qkv projection, with RoPE and the K/V pool write
//!   in its epilogue (removes `rope_kv_write`);
//! - `gemv_bf16_t1_norm_silu`: the same for gate_up, with SiLU-mul in its epilogue (the down
//!   projection then stages a plain row instead of computing SiLU over the whole row per block);
//! - `gemv_bf16_t1_res`: the o and down projections add into the residual in their epilogue, so
//!   the next fused norm stages one row (the residual) instead of two (y and the residual).
//!
//! Both give the same bits as the unfused kernels (kernels/cuda/gemv.cu says how), so a row's
//! result does not depend on whether it ran fused. Used only at one row in the default mode
//! (batch-invariant mode runs no GEMV kernels). The fused residual add writes the new residual to
//! the other of two buffers (the kernel's other blocks still read the old one): [`Resid`] keeps
//! track of which buffer is current. Off by default (measured slower, see [`fusion_from`]);
//! `STRATA_FUSE=all` turns them on (`norm`: norm only), also switchable at run time by
//! [`set_fusion`] for A/B timing.

use std::sync::atomic::{AtomicU8, Ordering};

use super::error::{ensure, Result};
use super::gemm::Gemm;
use super::launch::{launch, Arg, Dims};
use super::ops::CudaOps;
use super::tensor::{DTensor, DType};

/// Fuse the residual add + RMSNorm into the next single-row projection.
pub const FUSE_NORM: u8 = 1;
/// Fuse RoPE + the K/V pool write into the single-row qkv projection (needs [`FUSE_NORM`]).
pub const FUSE_ROPE: u8 = 2;
/// Fuse SiLU-mul into the single-row gate_up projection (needs [`FUSE_NORM`]).
pub const FUSE_SILU: u8 = 4;

/// Longest normalised row the fused kernels take (x and the norm weight in dynamic shared memory,
/// 4 bytes per element, next to their static 128 bytes, within the default 48 KiB).
pub const FUSED_MAX_IN: usize = 8 * 1024;

static FUSION: AtomicU8 = AtomicU8::new(u8::MAX);

/// Add the o and down projections into the residual in their epilogue (single row).
pub const FUSE_RES: u8 = 8;
/// Every fusion.
pub const FUSE_ALL: u8 = FUSE_NORM | FUSE_ROPE | FUSE_SILU | FUSE_RES;

/// The fusion flags from `STRATA_FUSE` (unset, `0`/`none`/`off`: none — the default, since the
/// fused steps measured slower on the H200 at 16:58 UTC: 8B batch-1 graph step 5.13 ms fused vs
/// 4.58 ms unfused, 1B 1.09 vs 1.04 ms; `norm`: [`FUSE_NORM`]; `norm,rope,silu,res`: a comma
/// list starting with norm; anything else, e.g. `all` or `1`: all).
pub fn fusion_from(env: Option<&str>) -> u8 {
    let v = env.map(|v| v.trim().to_ascii_lowercase());
    match v.as_deref() {
        None | Some("" | "0" | "none" | "off" | "false") => 0,
        Some(list) if list.starts_with("norm") => list.split(',').fold(0, |f, p| {
            f | match p.trim() {
                "norm" => FUSE_NORM,
                "rope" => FUSE_ROPE,
                "silu" => FUSE_SILU,
                "res" => FUSE_RES,
                _ => 0,
            }
        }),
        _ => FUSE_ALL,
    }
}

/// The fusion flags in force (`STRATA_FUSE` on first use, or the last [`set_fusion`]).
pub fn fusion() -> u8 {
    let f = FUSION.load(Ordering::Relaxed);
    if f != u8::MAX {
        return f;
    }
    let f = fusion_from(std::env::var("STRATA_FUSE").ok().as_deref());
    FUSION.store(f, Ordering::Relaxed);
    f
}

/// Sets the fusion flags for later forwards and graph captures (A/B runs of `gpu bench`).
pub fn set_fusion(flags: u8) {
    FUSION.store(flags, Ordering::Relaxed);
}

/// The normalised input of a fused projection: rmsnorm(y + resid) * weight (y None: of resid).
pub struct NormIn<'a> {
    /// The sub-layer output to add to the residual (None: normalise `resid` as it is).
    pub y: Option<&'a DTensor>,
    /// The residual stream [1, in], read.
    pub resid: &'a DTensor,
    /// Where y + resid goes (another buffer than `resid`); None with `y` None.
    pub resid_out: Option<&'a DTensor>,
    /// The RMSNorm weight [in].
    pub weight: &'a DTensor,
    /// The RMSNorm epsilon.
    pub eps: f32,
}

/// What a fused single-row projection does with its output.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    /// Store the projection.
    Store,
    /// The qkv projection: RoPE + the K/V pool write.
    Rope(&'a RopeKv<'a>),
    /// The gate_up projection [2 * inter rows]: write act [1, inter] = silu(gate) * up.
    SiluMul(&'a DTensor),
}

/// RoPE + the K/V pool write of a fused qkv row (the arguments of `CudaOps::rope_kv_write` with
/// q, k and v at columns 0, n_q * head_dim and (n_q + n_kv) * head_dim).
pub struct RopeKv<'a> {
    /// Query heads.
    pub n_q: usize,
    /// KV heads.
    pub n_kv: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Positions [1] i32.
    pub pos: &'a DTensor,
    /// RoPE inverse frequencies [head_dim / 2] f32.
    pub inv_freq: &'a DTensor,
    /// This layer's K pool.
    pub k_pool: &'a DTensor,
    /// This layer's V pool.
    pub v_pool: &'a DTensor,
    /// KV slot [1] i32.
    pub slots: &'a DTensor,
    /// Host copy of `slots`.
    pub host_slots: &'a [i32],
}

impl Gemm {
    /// resid [1, out] += x [1, in] * w^T in one kernel (the sum rounded as rmsnorm's residual add
    /// rounds it). `Ok(false)`: not applicable (more than one row, batch-invariant mode,
    /// [`FUSE_RES`] off, shapes or alignment): nothing ran.
    pub fn linear_add_t1(&self, x: &DTensor, w: &DTensor, resid: &DTensor) -> Result<bool> {
        let (n, k) = (w.shape()[0], *w.shape().get(1).unwrap_or(&0));
        if self.deterministic()
            || fusion() & FUSE_RES == 0
            || x.shape() != [1, k]
            || resid.shape() != [1, n]
            || k % 8 != 0
            || k > super::gemm::GEMV_T1_MAX_IN
            || x.ptr() % 16 != 0
            || w.ptr() % 16 != 0
        {
            return Ok(false);
        }
        let ctx = self.context();
        for (what, t) in [("x", x), ("w", w), ("resid", resid)] {
            ctx.check_device(what, t)?;
        }
        x.expect("x", DType::Bf16, &[1, k])?;
        w.expect("w", DType::Bf16, &[n, k])?;
        resid.expect("resid", DType::Bf16, &[1, n])?;
        let args = [
            Arg::U64(x.ptr()),
            Arg::U64(w.ptr()),
            Arg::U64(resid.ptr()),
            Arg::I32(n as i32),
            Arg::I32(k as i32),
        ];
        let dims = Dims {
            grid: (n.div_ceil(8) as u32, 1, 1),
            block: 256,
            smem: (k * 2) as u32,
        };
        ctx.cuda().bind_to_thread()?;
        // SAFETY: x [1, k] and w [n, k] bf16 with 16-byte aligned rows, resid [1, n] bf16, all
        // on this GPU (checked above); k <= GEMV_T1_MAX_IN: x fits the dynamic shared memory.
        unsafe { launch(self.gemv_t1_res(), ctx.stream().cu_stream(), dims, &args) }?;
        Ok(true)
    }

    /// out [1, out] = (rmsnorm(y + resid) * norm weight) * w^T in one kernel, with the
    /// epilogue `epi` (RoPE + K/V write: out is the qkv row; SiLU-mul: the result goes to the
    /// epilogue's act tensor and `out` is not written). `Ok(false)`: not applicable (more than one
    /// row, batch-invariant mode, fusion off, shapes or alignment): nothing ran and the caller
    /// runs the separate kernels.
    pub fn norm_linear_t1(
        &self,
        ops: &CudaOps,
        norm: &NormIn<'_>,
        w: &DTensor,
        out: &DTensor,
        epi: Epilogue<'_>,
    ) -> Result<bool> {
        let flags = fusion();
        let (n, k) = (w.shape()[0], *w.shape().get(1).unwrap_or(&0));
        let aligned = |t: &DTensor| t.ptr() % 16 == 0;
        let wanted = match epi {
            Epilogue::Store => FUSE_NORM,
            Epilogue::Rope(_) => FUSE_NORM | FUSE_ROPE,
            Epilogue::SiluMul(_) => FUSE_NORM | FUSE_SILU,
        };
        if self.deterministic()
            || flags & wanted != wanted
            || norm.resid.shape() != [1, k]
            || k > FUSED_MAX_IN
            || k % 8 != 0
            || !aligned(w)
            || !aligned(norm.resid)
            || !aligned(norm.weight)
            || norm.y.is_some_and(|y| !aligned(y))
            || norm.resid_out.is_some_and(|r| !aligned(r))
            || out.shape() != [1, n]
        {
            return Ok(false);
        }
        let ctx = self.context();
        for (what, t) in [
            ("w", w),
            ("out", out),
            ("resid", norm.resid),
            ("norm", norm.weight),
        ] {
            ctx.check_device(what, t)?;
        }
        w.expect("w", DType::Bf16, &[n, k])?;
        norm.weight.expect("norm weight", DType::Bf16, &[k])?;
        norm.resid.expect("resid", DType::Bf16, &[1, k])?;
        if let Some(y) = norm.y {
            ctx.check_device("y", y)?;
            y.expect("y", DType::Bf16, &[1, k])?;
        }
        ensure(norm.y.is_some() == norm.resid_out.is_some(), || {
            "a fused residual add needs both y and resid_out".into()
        })?;
        if let Some(r) = norm.resid_out {
            ctx.check_device("resid_out", r)?;
            r.expect("resid_out", DType::Bf16, &[1, k])?;
            ensure(r.ptr() != norm.resid.ptr(), || {
                "resid_out must be another buffer than resid".into()
            })?;
        }
        // The rmsnorm kernel's block size on its 16-byte path (one thread per 8 elements, at
        // most 1024): the fused sum of squares follows its order.
        let nvt = ((k / 8).div_ceil(32) * 32).clamp(32, 1024);
        let mut args = vec![
            Arg::U64(norm.y.map_or(0, |y| y.ptr())),
            Arg::U64(norm.resid.ptr()),
            Arg::U64(norm.resid_out.map_or(0, |r| r.ptr())),
            Arg::U64(norm.weight.ptr()),
            Arg::F32(norm.eps),
            Arg::I32(nvt as i32),
            Arg::U64(w.ptr()),
            Arg::U64(out.ptr()),
            Arg::I32(n as i32),
            Arg::I32(k as i32),
        ];
        let f = match epi {
            Epilogue::Store => {
                ensure(matches!(out.dtype(), DType::Bf16 | DType::F32), || {
                    format!("out: bf16 or f32, got {:?}", out.dtype())
                })?;
                args.push(Arg::I32((out.dtype() == DType::F32) as i32));
                self.gemv_t1_norm()
            }
            Epilogue::SiluMul(act) => {
                ensure(n % 8 == 0, || {
                    format!("fused gate_up + SiLU: {n} rows, a multiple of 8 expected")
                })?;
                ctx.check_device("act", act)?;
                act.expect("act", DType::Bf16, &[1, n / 2])?;
                args[7] = Arg::U64(act.ptr());
                self.gemv_t1_norm_silu()
            }
            Epilogue::Rope(r) => {
                let hd = r.head_dim;
                ensure(
                    n == (r.n_q + 2 * r.n_kv) * hd && hd % 8 == 0 && r.n_kv > 0,
                    || {
                        format!(
                            "fused qkv: {n} rows for {} q and {} kv heads of {hd}",
                            r.n_q, r.n_kv
                        )
                    },
                )?;
                ops.check_rope_kv_write(
                    out,
                    r.n_q,
                    r.n_kv,
                    hd,
                    r.pos,
                    r.inv_freq,
                    r.k_pool,
                    r.v_pool,
                    r.slots,
                    r.host_slots,
                )?;
                args.extend([
                    Arg::U64(r.pos.ptr()),
                    Arg::U64(r.inv_freq.ptr()),
                    Arg::U64(r.k_pool.ptr()),
                    Arg::U64(r.v_pool.ptr()),
                    Arg::U64(r.slots.ptr()),
                    Arg::I32(r.n_q as i32),
                    Arg::I32(r.n_kv as i32),
                    Arg::I32(hd as i32),
                ]);
                self.gemv_t1_norm_rope()
            }
        };
        let dims = Dims {
            grid: (n.div_ceil(8) as u32, 1, 1),
            block: 256,
            smem: (k * 4) as u32,
        };
        ctx.cuda().bind_to_thread()?;
        // SAFETY: checked above: device, dtype and shape of every tensor (x rows of k bf16,
        // 16-byte aligned; w [n, k]; out [1, n]; the rope case's pools, slot range, positions
        // and frequencies as rope_kv_write checks them); k <= FUSED_MAX_IN: x and the norm
        // weight (4k bytes) fit the dynamic shared memory.
        unsafe { launch(f, ctx.stream().cu_stream(), dims, &args) }?;
        Ok(true)
    }
}

/// The residual stream of a forward over two buffers, and the steps that touch it. A sub-layer's
/// output projection (o, down) adds into it: at one row with [`FUSE_RES`] in place in the GEMV's
/// epilogue (`gemv_bf16_t1_res`), else the output goes to a scratch tensor that stays *pending*
/// until the next norm adds it. The norm + projection steps read it: fused at one row
/// ([`Gemm::norm_linear_t1`]; a pending add is done there, writing the sum to the other buffer),
/// else `rmsnorm` (in place, with the pending add) then the GEMM. An epilogue that cannot fuse is
/// dropped before the norm is (RoPE or SiLU alone off: norm + plain store).
pub struct Resid<'a> {
    bufs: [&'a DTensor; 2],
    cur: usize,
    pending: Option<&'a DTensor>,
}

impl<'a> Resid<'a> {
    /// `a` holds the stream (the embedding); `b` is the second buffer, same shape.
    pub fn new(a: &'a DTensor, b: &'a DTensor) -> Self {
        Self {
            bufs: [a, b],
            cur: 0,
            pending: None,
        }
    }

    /// The buffer holding the residual now (without a pending add).
    pub fn current(&self) -> &'a DTensor {
        self.bufs[self.cur]
    }

    /// resid += x * w^T: in place at one row when that fuses, else y = x * w^T (pending).
    pub fn add_linear(
        &mut self,
        gemm: &Gemm,
        x: &DTensor,
        w: &DTensor,
        y: &'a DTensor,
    ) -> Result<()> {
        ensure(self.pending.is_none(), || {
            "two residual adds without a norm between them".into()
        })?;
        if gemm.linear_add_t1(x, w, self.bufs[self.cur])? {
            return Ok(());
        }
        gemm.linear(x, w, y)?;
        self.pending = Some(y);
        Ok(())
    }

    /// y (written by the caller) is to be added to the residual by the next norm.
    pub fn add_later(&mut self, y: &'a DTensor) -> Result<()> {
        ensure(self.pending.is_none(), || {
            "two residual adds without a norm between them".into()
        })?;
        self.pending = Some(y);
        Ok(())
    }

    /// out = (rmsnorm(resid [+ the pending add]) * norm) * w^T, with `h` as the unfused path's
    /// scratch. Returns whether the epilogue `epi` ran fused (RoPE + K/V write done, or act
    /// written instead of out); if not, out holds the plain projection and the caller runs
    /// `rope_kv_write` / the SiLU itself.
    #[allow(clippy::too_many_arguments)]
    pub fn norm_linear(
        &mut self,
        ops: &CudaOps,
        gemm: &Gemm,
        norm: &DTensor,
        eps: f32,
        h: &DTensor,
        w: &DTensor,
        out: &DTensor,
        epi: Epilogue<'_>,
    ) -> Result<bool> {
        let (cur, other) = (self.bufs[self.cur], self.bufs[1 - self.cur]);
        let y = self.pending;
        if h.shape()[0] == 1 {
            let input = NormIn {
                y,
                resid: cur,
                resid_out: y.map(|_| other),
                weight: norm,
                eps,
            };
            if !matches!(epi, Epilogue::Store) && gemm.norm_linear_t1(ops, &input, w, out, epi)? {
                self.added_into_other();
                return Ok(true);
            }
            if gemm.norm_linear_t1(ops, &input, w, out, Epilogue::Store)? {
                self.added_into_other();
                return Ok(false);
            }
        }
        self.norm(ops, norm, eps, h)?;
        gemm.linear(h, w, out)?;
        Ok(false)
    }

    /// The unfused step: resid += the pending add (in place) and h = rmsnorm(resid) * norm.
    pub fn norm(&mut self, ops: &CudaOps, norm: &DTensor, eps: f32, h: &DTensor) -> Result<()> {
        let cur = self.bufs[self.cur];
        match self.pending.take() {
            Some(y) => ops.rmsnorm(y, Some(cur), norm, h, eps),
            None => ops.rmsnorm(cur, None, norm, h, eps),
        }
    }

    /// After a fused norm: a pending add went into the other buffer, which is now current.
    fn added_into_other(&mut self) {
        if self.pending.take().is_some() {
            self.cur = 1 - self.cur;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusion_flags_from_env() {
        assert_eq!(fusion_from(None), 0, "fusions are opt-in");
        assert_eq!(fusion_from(Some("1")), FUSE_ALL);
        assert_eq!(fusion_from(Some("0")), 0);
        assert_eq!(fusion_from(Some(" None ")), 0);
        assert_eq!(fusion_from(Some("norm")), FUSE_NORM);
        assert_eq!(fusion_from(Some("norm,silu")), FUSE_NORM | FUSE_SILU);
        assert_eq!(fusion_from(Some("norm, rope")), FUSE_NORM | FUSE_ROPE);
        assert_eq!(fusion_from(Some("all")), FUSE_ALL);
        assert_eq!(fusion_from(Some("norm,res")), FUSE_NORM | FUSE_RES);
    }
}
