//! The attention kernels' names (as the CUDA sources define them) and their block shapes and
//! dynamic shared memory, mirrored from the .cu files.

use super::*;

/// Dynamic shared memory of an FA2 kernel of `head_dim` with `kt`-key tiles in `stages` stages.
pub(crate) fn fa2_smem_of(head_dim: usize, kt: usize, stages: usize) -> u32 {
    ((FA2_ROWS + 2 * stages * kt) * (head_dim + 8) * 2) as u32
}

/// The wgmma prefill kernel (head_dim 128, compute 9.0): a tile's O += P V overlaps the next
/// tile's exponentials; Q's fragments stay in registers (8K forward 214.0 vs 216.5-217.5 ms
/// reading Q from shared memory in each S, [`WG_S_NAME`], H200 2026-12-04). Forms timed beside it on the H200 and removed: the O += P V queued
/// before the mask (1.363 ms per layer at 8K vs 1.214, 2026-12-03 UTC), K and V in separate
/// rings copied two tiles ahead (1.244 ms), each tile's O += P V waited for at once (1.496 vs
/// 1.384 ms, 2026-12-02).
pub const WG_NAME: &str = "paged_attention_wg_d128";
/// The wgmma prefill kernel reading Q from shared memory ([`PrefillKernel::WgmmaSmemQ`]).
pub const WG_S_NAME: &str = "paged_attention_wgs_d128";
/// Every form of the wgmma prefill kernel, in [`WgForm`] order.
pub const WG_NAMES: [&str; 5] = [
    WG_NAME,
    WG_S_NAME,
    "paged_attention_wgp_d128",
    "paged_attention_wgc_d128",
    "paged_attention_wgq_d128",
];

/// Keys per K/V tile of the wgmma kernel; mirrors WG_KT in attention_prefill_wg.cu.
pub(super) const WG_KEY_TILE: usize = 128;
/// Pipeline stages of `paged_attention_wg_d128`; mirrors its `wg_prefill_body<3>`.
pub(crate) const WG_STAGES: usize = 3;
/// Threads of a wgmma prefill block (two warpgroups).
pub(super) const WG_THREADS: u32 = 256;

/// Dynamic shared memory of the wgmma kernel: 1024 bytes of alignment slack, Q [128][128],
/// `WG_STAGES` K and V tiles [128][128], bf16, and the TMA forms' 2 `WG_STAGES` mbarriers.
pub(crate) fn wg_smem() -> u32 {
    (1024 + FA2_ROWS * 128 * 2 + WG_STAGES * 2 * WG_KEY_TILE * 128 * 2 + 2 * WG_STAGES * 8) as u32
}

/// Kernel names of the tensor-core decode kernels, in `mma_index` order.
pub(crate) const DMMA_NAMES: [&str; 2] = ["paged_attention_dmma_d64", "paged_attention_dmma_d128"];
/// Keys per shared-memory tile and pipeline stages of `paged_attention_dmma_d*`; mirrors the
/// DM_KERNEL lines of attention_decode_mma.cu.
pub(super) const DMMA_KEY_TILE: usize = 64;
const DMMA_STAGES: usize = 3;
/// Largest GQA group `paged_attention_dmma_*` takes (its 16 MMA rows).
pub(super) const DMMA_MAX_GROUP: usize = 16;

/// Dynamic shared memory of `paged_attention_dmma_d{head_dim}`: K and V tiles of
/// `DMMA_KEY_TILE` rows of head_dim + 8 bf16 in `DMMA_STAGES` stages.
pub(crate) fn dmma_smem(head_dim: usize) -> u32 {
    (2 * DMMA_STAGES * DMMA_KEY_TILE * (head_dim + 8) * 2) as u32
}

/// Kernel names of the FA2-style prefill kernels, in `mma_index` order.
pub(crate) const FA2_NAMES: [&str; 2] = ["paged_attention_fa2_d64", "paged_attention_fa2_d128"];

/// Keys per shared-memory tile and pipeline stages of `paged_attention_fa2_d{head_dim}`; mirrors
/// the FA_KERNEL lines of attention_prefill.cu (a unit test compares them).
pub(crate) fn fa2_tile(head_dim: usize) -> (usize, usize) {
    if head_dim == 64 {
        (64, 3)
    } else {
        (64, 2)
    }
}

/// Dynamic shared memory of `paged_attention_fa2_d{head_dim}`: Q rows plus 2 x stages K/V
/// tiles, rows padded to head_dim + 8 bf16.
pub(crate) fn fa2_smem(head_dim: usize) -> u32 {
    let (kt, stages) = fa2_tile(head_dim);
    fa2_smem_of(head_dim, kt, stages)
}

/// Index of the tensor-core prefill kernel for `head_dim`, if there is one.
pub(crate) fn mma_index(head_dim: usize) -> Option<usize> {
    match head_dim {
        64 => Some(0),
        128 => Some(1),
        _ => None,
    }
}

/// Kernel names of the tensor-core prefill kernels, in `mma_index` order.
pub(crate) const MMA_NAMES: [&str; 2] = ["paged_attention_mma_d64", "paged_attention_mma_d128"];

/// Index of the decode2 instantiation for (group, head_dim), if there is one.
pub(crate) fn decode2_index(group: usize, head_dim: usize) -> Option<usize> {
    let g = match group {
        1 => 0,
        2 => 1,
        4 => 2,
        8 => 3,
        _ => return None,
    };
    match head_dim {
        64 => Some(g),
        128 => Some(4 + g),
        _ => None,
    }
}

/// Alternative decode2 kernels for group 4 / head_dim 128 (unroll and pipelining variants),
/// timed beside the default by `strata gpu bench`.
pub const DECODE2_VARIANTS: [&str; 11] = [
    "paged_attention_decode2_var_perkey_u4",
    "paged_attention_decode2_var_u4",
    "paged_attention_decode2_var_u8",
    "paged_attention_decode2_var_p4",
    "paged_attention_decode2_var_lb6",
    "paged_attention_decode2_var_lb8",
    "paged_attention_decode2_var_u2lb8",
    "paged_attention_decode2_var_regs",
    "paged_attention_decode2_var_async_t32s2",
    "paged_attention_decode2_var_async_t16s3",
    "paged_attention_decode2_var_async_t8s6",
];

/// Kernel names of the decode2 instantiations, in `decode2_index` order.
pub(crate) const DECODE2_NAMES: [&str; 8] = [
    "paged_attention_decode2_g1_d64",
    "paged_attention_decode2_g2_d64",
    "paged_attention_decode2_g4_d64",
    "paged_attention_decode2_g8_d64",
    "paged_attention_decode2_g1_d128",
    "paged_attention_decode2_g2_d128",
    "paged_attention_decode2_g4_d128",
    "paged_attention_decode2_g8_d128",
];

/// Kernel names of the decode2 cluster form, in `decode2_index` order.
pub(crate) const DECODE2C_NAMES: [&str; 8] = [
    "paged_attention_decode2c_g1_d64",
    "paged_attention_decode2c_g2_d64",
    "paged_attention_decode2c_g4_d64",
    "paged_attention_decode2c_g8_d64",
    "paged_attention_decode2c_g1_d128",
    "paged_attention_decode2c_g2_d128",
    "paged_attention_decode2c_g4_d128",
    "paged_attention_decode2c_g8_d128",
];

/// Kernel names of the head-split register cluster form (two clusters per row and KV head,
/// each with half the group's query heads), in `decode2h_index` order.
pub(crate) const DECODE2RH_NAMES: [&str; 6] = [
    "paged_attention_decode2rh_g2_d64",
    "paged_attention_decode2rh_g4_d64",
    "paged_attention_decode2rh_g8_d64",
    "paged_attention_decode2rh_g2_d128",
    "paged_attention_decode2rh_g4_d128",
    "paged_attention_decode2rh_g8_d128",
];

/// Index into [`DECODE2RH_NAMES`] of a GQA group (2, 4 or 8) and head size (64 or 128).
pub(crate) fn decode2h_index(group: usize, head_dim: usize) -> Option<usize> {
    decode2_index(group, head_dim)
        .filter(|_| group >= 2)
        .map(|i| if head_dim == 64 { i - 1 } else { i - 2 })
}

/// Kernel names of the decode2 register cluster form, in `decode2_index` order.
pub(crate) const DECODE2R_NAMES: [&str; 8] = [
    "paged_attention_decode2r_g1_d64",
    "paged_attention_decode2r_g2_d64",
    "paged_attention_decode2r_g4_d64",
    "paged_attention_decode2r_g8_d64",
    "paged_attention_decode2r_g1_d128",
    "paged_attention_decode2r_g2_d128",
    "paged_attention_decode2r_g4_d128",
    "paged_attention_decode2r_g8_d128",
];
