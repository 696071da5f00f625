//! Launchers of the per-row LoRA kernels (kernels/cuda/lora.cu): every row of a forward names
//! a slot of an adapter table (-1: none), and a projection's change y += (x A^T) B^T runs as
//! `lora_shrink` then `lora_expand`, two launches whatever the adapters (so CUDA graphs hold
//! them). The table's entries are device addresses the caller keeps valid: both launchers are
//! `unsafe`.

use super::error::{ensure, Result};
use super::launch::{Arg, Dims};
use super::ops::CudaOps;
use super::tensor::{DTensor, DType};

/// i32 per entry of a LoRA table (lora.cu's `LoraRef`: A's and B^T's addresses as two i32
/// each, little-endian, the rank, padding).
pub const LORA_REF_I32S: usize = 6;
/// Blocks per row of `lora_shrink` (`LORA_SHRINK_BLOCKS` in lora.cu).
const LORA_SHRINK_BLOCKS: usize = 16;

/// One LoRA table entry: A's and B^T's device addresses and the rank (0: no change).
pub fn lora_ref(a: u64, bt: u64, rank: usize) -> [i32; LORA_REF_I32S] {
    [
        a as u32 as i32,
        (a >> 32) as u32 as i32,
        bt as u32 as i32,
        (bt >> 32) as u32 as i32,
        rank as i32,
        0,
    ]
}

fn i(v: usize) -> Arg {
    Arg::I32(v as i32)
}

impl CudaOps {
    /// The first half of a per-row LoRA change (lora.cu): mid [T, cap] f32 gets x [T, in] A^T
    /// for the ranks of each row's adapter, `slots` [T] i32 naming each row's entry of `refs`
    /// (-1: none) and `refs` the table of one layer's projection ([`LORA_REF_I32S`] i32 per
    /// slot: A's and B^T's device addresses, the rank).
    ///
    /// # Safety
    /// Every entry a row names must hold the address of a live bf16 A [rank, in] (and of a B^T
    /// [rank, out] for [`CudaOps::lora_expand`]) on this GPU, with the rank of A: the kernel reads
    /// them without further checks. Ranks above `cap` are cut at `cap`.
    pub unsafe fn lora_shrink(
        &self,
        x: &DTensor,
        slots: &DTensor,
        refs: &DTensor,
        mid: &DTensor,
    ) -> Result<()> {
        let (t, cap, n_slots) = self.lora_check(slots, refs, mid)?;
        let inw = x.shape().get(1).copied().unwrap_or(0);
        x.expect("x", DType::Bf16, &[t, inw])?;
        ensure(inw % 8 == 0 && x.ptr() % 16 == 0, || {
            format!("lora_shrink: x width {inw} must be a multiple of 8, 16-byte aligned")
        })?;
        let args = [
            Arg::U64(x.ptr()),
            Arg::U64(slots.ptr()),
            Arg::U64(refs.ptr()),
            i(n_slots),
            Arg::U64(mid.ptr()),
            i(inw),
            i(cap),
        ];
        self.go(
            &self.lora_shrink,
            Dims::rows(t * LORA_SHRINK_BLOCKS, 256),
            &args,
        )
    }

    /// The second half: y [T, out] += mid B^T for each row's adapter, rounded to bf16 once (rows
    /// without one, or whose adapter leaves this projection alone, untouched).
    ///
    /// # Safety
    /// As [`CudaOps::lora_shrink`], with B^T [rank, out] of y's width.
    pub unsafe fn lora_expand(
        &self,
        mid: &DTensor,
        slots: &DTensor,
        refs: &DTensor,
        y: &DTensor,
    ) -> Result<()> {
        let (t, cap, n_slots) = self.lora_check(slots, refs, mid)?;
        let out = y.shape().get(1).copied().unwrap_or(0);
        y.expect("y", DType::Bf16, &[t, out])?;
        let per_row = out.div_ceil(256).max(1);
        let args = [
            Arg::U64(mid.ptr()),
            Arg::U64(slots.ptr()),
            Arg::U64(refs.ptr()),
            i(n_slots),
            Arg::U64(y.ptr()),
            i(out),
            i(cap),
            i(per_row),
        ];
        self.go(&self.lora_expand, Dims::rows(t * per_row, 256), &args)
    }

    /// The shared checks of the LoRA kernels: (rows, mid's width, table slots).
    fn lora_check(
        &self,
        slots: &DTensor,
        refs: &DTensor,
        mid: &DTensor,
    ) -> Result<(usize, usize, usize)> {
        self.on_gpu(&[("slots", slots), ("refs", refs), ("mid", mid)])?;
        let t = slots.numel();
        slots.expect("slots", DType::I32, &[t])?;
        let cap = mid.shape().get(1).copied().unwrap_or(0);
        mid.expect("mid", DType::F32, &[t, cap])?;
        let n = refs.numel();
        refs.expect("refs", DType::I32, &[n])?;
        ensure(n % LORA_REF_I32S == 0 && refs.ptr() % 8 == 0, || {
            format!(
                "lora refs: {n} i32 is not a table of {LORA_REF_I32S}-i32 entries, 8-byte aligned"
            )
        })?;
        Ok((t, cap, n / LORA_REF_I32S))
    }
}
