//! Paged attention over one layer's KV pools: tiles and splits planned on the host, then one
//! kernel per layer (and `attention_combine` where a plan is split).
//! - Decode batches (one new token per sequence) under `DECODE_MMA_MIN_ROWS` (8) rows:
//!   `paged_attention_decode2*` (GQA group 1/2/4/8, head_dim 64/128, compile-time shapes); small
//!   batches in thread-block clusters that split each row's keys and merge inside the cluster
//!   (`decode2r`, keys read into registers; `STRATA_DECODE_CLUSTER_FORM=tiles`: the cp.async form
//!   `decode2c`), larger ones split with a combine pass; `paged_attention_decode` for other
//!   shapes with a group of at most 8.
//! - Decode batches from 8 rows go to the tensor cores (`decode_on_mma`;
//!   `STRATA_DECODE_ATTN=mma|decode2` forces either): `paged_attention_dmma_d{64,128}` for groups
//!   up to 16, else (or with `STRATA_DECODE_DMMA=0`) the prefill kernel, one token's group per
//!   128-row tile.
//! - Prompts and prefix extends: on compute 9.0 at head_dim 128 the wgmma kernel, by default its
//!   form with a TMA producer warpgroup in clusters of 2 (`paged_attention_wgc_d128`; page sizes
//!   that are not powers of two from 8 take the cp.async producer form), other forms by
//!   `STRATA_PREFILL_ATTN` ([`PrefillKernel::from_name`]); else `paged_attention_fa2_d{64,128}`;
//!   the f32 `paged_attention` for other head sizes or with `STRATA_PREFILL_ATTN=f32`.
//!
//! An `AttnPlan` is built once per batch shape from the host-side block tables (validated here:
//! every page id inside the pool, enough pages for every sequence), uploads them with the tile
//! list, and owns the split workspace, so a decode loop of fixed shape replans nothing.
//! Layout: q rows are the batch's new tokens in sequence order; pools are one layer's
//! [slots, n_kv_heads * head_dim] with slot = page * page_size + offset.
//!
//! Here the plan's types; `choice.rs` which kernel, splits and cluster a batch gets, `names.rs`
//! the kernels' names and shared-memory sizes, `plan.rs` planning, `run.rs` launching,
//! `fixed.rs` the CUDA-graph buckets' fixed decode plans.

use std::sync::OnceLock;

use super::launch::{Arg, Dims};
use super::ops::CudaOps;
use super::tensor::{DTensor, DType};
use crate::cuda::error::{ensure, Result};

mod choice;
mod fixed;
mod names;
mod plan;
mod run;
#[cfg(test)]
mod tests;

pub use choice::*;
pub use fixed::DecodeRow;
pub use names::*;

/// Rows (token x head pairs) one block serves; mirrors ATT_ROWS in attention.cu.
const ROWS: usize = 16;
/// Keys per shared-memory tile; mirrors ATT_KT.
const KEY_TILE: usize = 32;
/// Largest GQA group the decode kernel handles; mirrors DEC_MAXG.
const DECODE_MAX_GROUP: usize = 8;
/// Keys one decode block covers at least (4 warps x 32 keys).
const DECODE_MIN_SPLIT: usize = 128;
/// The same for the compile-time-shaped decode kernel (its warps step 8 or 16 keys at a time).
const DECODE2_MIN_SPLIT: usize = 64;

/// Which kernel a plan launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKernel {
    /// `paged_attention`: any query count.
    General,
    /// `paged_attention_decode`: one query per sequence, any head_dim the planner accepts.
    Decode,
    /// `paged_attention_decode2_*`: one query per sequence, group 1/2/4/8, head_dim 64/128.
    Decode2,
    /// `paged_attention_mma_d{64,128}`: tensor-core prefill / prefix-extend, 64 rows per tile.
    PrefillMma,
    /// `paged_attention_fa2_d{64,128}`: tensor-core prefill / prefix-extend, 128 rows per tile,
    /// cp.async-pipelined K/V tiles, ldmatrix fragments.
    PrefillFa2,
    /// `paged_attention_wg_d128`: wgmma (sm_90a) prefill / prefix-extend, 128 rows per tile as
    /// the FA2 kernel's, 128-key tiles, 2 warpgroups, one block per SM.
    PrefillWg,
    /// `paged_attention_dmma_d{64,128}`: default-mode decode batches on the tensor cores, one
    /// block per (row, KV head, split), the group's heads as one 16-row MMA tile, the 4 warps
    /// splitting every 64-key tile (attention_decode_mma.cu); the FA2 kernel's tiles and splits.
    DecodeMma,
}

/// Rows (token x head pairs) one tensor-core prefill block serves; mirrors MMA_ROWS.
const MMA_ROWS: usize = 64;
/// Rows one FA2-style prefill block serves; mirrors FA_ROWS in attention_prefill.cu.
const FA2_ROWS: usize = 128;
/// Most tiles of one FA2 launch (grid y).
const FA2_MAX_TILES: usize = 65_535;

/// Which kernel plans for prompts and prefix-extends use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefillKernel {
    /// The f32 `paged_attention` (`STRATA_ATTN_MMA=0`).
    General,
    /// `paged_attention_mma_d*` (`STRATA_ATTN_MMA=1`).
    Mma,
    /// `paged_attention_fa2_d*` (`STRATA_PREFILL_ATTN=fa2`, `STRATA_ATTN_MMA=2`).
    Fa2,
    /// `paged_attention_wg_d128` (`STRATA_PREFILL_ATTN=wg`) where it loaded (compute 9.0)
    /// and head_dim is 128, the FA2 kernel otherwise: the wgmma kernel with K/V by cp.async
    /// (the default before 2026-12-06, and where the TMA forms fell back to before the cp.async
    /// producer form).
    Wgmma,
    /// `paged_attention_wgs_d128` (`STRATA_PREFILL_ATTN=wgs`): the wgmma kernel reading Q
    /// from shared memory in every S = Q K^T wgmma (the default keeps Q's fragments in
    /// registers); timed beside it.
    WgmmaSmemQ,
    /// `paged_attention_wgp_d128` (`STRATA_PREFILL_ATTN=wgp`): the wgmma kernel with K/V tiles
    /// loaded by TMA from a producer warpgroup, the computing warpgroups free of block barriers
    /// (page sizes that are powers of two from 8; the cp.async producer form otherwise).
    WgmmaProducer,
    /// `paged_attention_wgc_d128` (`STRATA_PREFILL_ATTN=wgc`): the producer form in clusters
    /// of 2 blocks sharing each K/V tile by TMA multicast (GQA groups from 2; the producer form
    /// otherwise): the default (8K attention alone x0.87 of the cp.async form's, forward
    /// x0.975-0.989, one NVIDIA H100, 2026-12-06; docs/perf.md).
    WgmmaCluster,
    /// `paged_attention_wgq_d128` (`STRATA_PREFILL_ATTN=wgq`): the producer form copying K/V
    /// by cp.async (any page size): what the TMA forms plan at page sizes their boxes do not
    /// fit (SGLang's default 1 among them).
    WgmmaProducerCp,
}

impl PrefillKernel {
    /// The kernel a `STRATA_PREFILL_ATTN` value names (`wgc`, `wgp`, `wgq`, `wg` or `wgmma`,
    /// `wgs`, `fa2`, `mma`, `f32` or `general`).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "wgmma" | "wg" => Self::Wgmma,
            "wgs" => Self::WgmmaSmemQ,
            "wgp" => Self::WgmmaProducer,
            "wgc" => Self::WgmmaCluster,
            "wgq" => Self::WgmmaProducerCp,
            "fa2" => Self::Fa2,
            "mma" => Self::Mma,
            "f32" | "general" => Self::General,
            _ => return None,
        })
    }
}

/// The forms of the wgmma prefill kernel, in [`WG_NAMES`] order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WgForm {
    /// Q's fragments in registers, K/V by cp.async from the computing threads.
    Regs,
    /// Q read from shared memory by every S wgmma.
    SmemQ,
    /// K/V by TMA from a producer warpgroup.
    Producer,
    /// The producer form in clusters of 2 sharing K/V tiles by multicast.
    Cluster,
    /// The producer warpgroup copying K/V by cp.async (any page size).
    ProducerCp,
}

impl WgForm {
    /// The wgmma form a prefill kernel choice asks for (None: not a wgmma choice).
    pub fn of(k: PrefillKernel) -> Option<Self> {
        match k {
            PrefillKernel::Wgmma => Some(Self::Regs),
            PrefillKernel::WgmmaSmemQ => Some(Self::SmemQ),
            PrefillKernel::WgmmaProducer => Some(Self::Producer),
            PrefillKernel::WgmmaCluster => Some(Self::Cluster),
            PrefillKernel::WgmmaProducerCp => Some(Self::ProducerCp),
            _ => None,
        }
    }
    /// The form's `STRATA_PREFILL_ATTN` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Regs => "wg",
            Self::SmemQ => "wgs",
            Self::Producer => "wgp",
            Self::Cluster => "wgc",
            Self::ProducerCp => "wgq",
        }
    }
    /// True for the forms that load K/V through TMA maps of the pools (a producer warpgroup).
    pub fn tma(self) -> bool {
        matches!(self, Self::Producer | Self::Cluster)
    }
    /// True for the forms with a producer warpgroup.
    pub fn producer(self) -> bool {
        !matches!(self, Self::Regs | Self::SmemQ)
    }
    /// Blocks per cluster (adjacent in grid z), i.e. how many blocks share a query tile.
    fn cluster(self) -> usize {
        match self {
            Self::Cluster => 2,
            _ => 1,
        }
    }
    /// The form a plan runs when `self` was asked for: the TMA forms need page sizes that
    /// [`wg_tma_pages`] takes (the cp.async producer otherwise), the cluster form a GQA group
    /// of at least 2.
    pub fn planned(self, page_size: usize, group: usize) -> Self {
        match self {
            f if f.tma() && !wg_tma_pages(page_size) => Self::ProducerCp,
            Self::Cluster if group < 2 => Self::Producer,
            f => f,
        }
    }
    /// Threads per block (the producer forms add a warpgroup).
    fn threads(self) -> u32 {
        if self.producer() {
            WG_THREADS + 128
        } else {
            WG_THREADS
        }
    }
}

/// Page sizes the TMA forms take: powers of two from 8 (a box of min(page, 32) keys never
/// crosses a page, split starts being multiples of 32 keys).
fn wg_tma_pages(page_size: usize) -> bool {
    page_size >= 8 && page_size.is_power_of_two()
}

/// One sequence of the batch.
#[derive(Clone, Debug)]
pub struct AttnSeq {
    /// New query tokens (1 for decode).
    pub q_len: usize,
    /// Keys visible to the last query: cached prefix plus the new tokens.
    pub kv_len: usize,
    /// Pool page of each `page_size` block of keys, in order.
    pub pages: Vec<i32>,
}

/// Head geometry of the attention.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Query heads.
    pub n_heads: usize,
    /// KV heads (divides n_heads; n_heads / n_kv_heads divides 16).
    pub n_kv_heads: usize,
    /// Head dimension (multiple of 32, at most 128).
    pub head_dim: usize,
    /// Tokens per KV page.
    pub page_size: usize,
    /// Pages in the pool.
    pub pool_pages: usize,
}

/// Host-planned launch of one batch.
pub struct AttnPlan {
    shape: AttnShape,
    tiles: DTensor,
    n_tiles: usize,
    tables: DTensor,
    max_pages: usize,
    total_rows: usize,
    splits: usize,
    split_len: usize,
    part_acc: Option<DTensor>,
    part_ml: Option<DTensor>,
    kernel: AttnKernel,
    /// An alternative decode2 kernel (index into [`DECODE2_VARIANTS`]) set for timing.
    variant: Option<usize>,
    /// Decode2 in thread-block clusters of this many blocks per (row, KV head) (0: off): the
    /// cluster form splits each row's keys at run time and merges in the cluster (no partials,
    /// no combine); `splits` is then 1 and `split_len` the plan's key capacity.
    cluster: usize,
    /// The cluster form reads its keys into registers (`decode2r`) instead of cp.async tiles.
    cluster_regs: bool,
    /// The register cluster form split by query heads (`decode2rh`: two clusters per row and
    /// KV head; `choice::halves_default`) where the group has such a kernel (the launch keeps
    /// the unsplit one where those kernels are not loaded).
    halves: bool,
    /// Largest cluster the device takes (0: no cluster form).
    max_cluster: usize,
    /// The form a `PrefillWg` plan runs.
    wg_form: WgForm,
    /// What a fixed decode plan's page tables hold on the GPU, where known: a replay writes only
    /// the entries that changed (the tables are `--context-length` pages wide per row).
    table_mirror: std::sync::Mutex<Option<crate::cuda::plan_tables::TableMirror>>,
}

/// What the attention needs to rotate Q itself ([`CudaOps::paged_attention_rope`]): the
/// positions of q's rows and the RoPE inverse frequencies (as `rope_kv_write` takes them).
#[derive(Clone, Copy)]
pub struct QRope<'a> {
    /// i32 [rows].
    pub pos: &'a DTensor,
    /// f32 [head_dim / 2].
    pub inv_freq: &'a DTensor,
}

impl AttnPlan {
    /// True when this plan's kernel can apply RoPE to Q as it loads it (the wgmma prefill
    /// kernel; [`CudaOps::paged_attention_rope`]).
    pub fn rotates_q(&self) -> bool {
        self.kernel == AttnKernel::PrefillWg
    }
    /// True when a decode kernel will run.
    pub fn uses_decode_kernel(&self) -> bool {
        self.kernel != AttnKernel::General
    }
    /// The kernel this plan launches.
    pub fn kernel(&self) -> AttnKernel {
        self.kernel
    }
    /// Forces the general kernel on a decode plan (for checks); a decode kernel cannot be forced
    /// on, and a tensor-core prefill plan keeps its kernel (its tiles are larger: plan with
    /// `set_mma(false)` instead).
    pub fn force_general_kernel(&mut self) {
        if !matches!(
            self.kernel,
            AttnKernel::PrefillMma
                | AttnKernel::PrefillFa2
                | AttnKernel::PrefillWg
                | AttnKernel::DecodeMma
        ) {
            self.kernel = AttnKernel::General;
            self.cluster = 0;
        }
    }
    /// Runs alternative `DECODE2_VARIANTS[i]` instead of the default decode2 kernel (group 4,
    /// head_dim 128 plans only; false otherwise).
    pub fn set_decode2_variant(&mut self, i: usize) -> bool {
        let s = self.shape;
        let fits = self.kernel == AttnKernel::Decode2
            && s.n_heads == 4 * s.n_kv_heads
            && s.head_dim == 128
            && i < DECODE2_VARIANTS.len();
        if fits {
            self.variant = Some(i);
            self.cluster = 0;
        }
        fits
    }
    /// Uses the first decode kernel instead of decode2 (for checks and side-by-side timing); no
    /// effect on a plan that does not run decode2.
    pub fn force_decode_v1(&mut self) {
        if self.kernel == AttnKernel::Decode2 {
            self.kernel = AttnKernel::Decode;
            self.cluster = 0;
        }
    }
    /// Blocks per cluster of the decode2 cluster form (0: not used).
    pub fn cluster(&self) -> usize {
        self.cluster
    }
    /// Runs a decode2 plan as the cluster form with `n` blocks per (row, KV head) (2, 4, 8 or
    /// 16, at most what the device takes), or (0) the split kernel without splits; for checks
    /// and side-by-side timing. False, and nothing changed, where that does not apply.
    pub fn set_cluster(&mut self, n: usize) -> bool {
        let fits = self.kernel == AttnKernel::Decode2
            && self.variant.is_none()
            && (n == 0 || (n.is_power_of_two() && (2..=self.max_cluster).contains(&n)));
        if fits {
            self.split_len *= self.splits;
            self.splits = 1;
            self.part_acc = None;
            self.part_ml = None;
            self.cluster = n;
        }
        fits
    }
    /// The cluster form's kernel: registers (true, the default) or cp.async tiles; for checks
    /// and side-by-side timing.
    pub fn set_cluster_regs(&mut self, regs: bool) {
        self.cluster_regs = regs;
    }
    /// The form of the wgmma prefill kernel this plan runs (None: another kernel).
    pub fn wg_form(&self) -> Option<WgForm> {
        (self.kernel == AttnKernel::PrefillWg).then_some(self.wg_form)
    }
    /// Blocks sharing each query tile (grid z holds splits x this): the cluster form's 2.
    fn wg_pair(&self) -> usize {
        self.wg_form().map_or(1, WgForm::cluster)
    }
    /// True when a cluster plan runs the register form.
    pub fn cluster_regs(&self) -> bool {
        self.cluster > 0 && self.cluster_regs
    }
    /// The register cluster form split by query heads (two clusters per row and KV head, each
    /// with half the group's heads: `decode2rh`) or not; false where the group has no such
    /// kernel (nothing changes then). For checks and side-by-side timing.
    pub fn set_halves(&mut self, on: bool) -> bool {
        let fits = !on || halves_fit(self.shape);
        if fits {
            self.halves = on;
        }
        fits
    }
    /// True when a cluster plan runs the head-split register form.
    pub fn halves(&self) -> bool {
        self.cluster_regs() && self.halves
    }
    /// Number of query rows (tokens) the plan covers.
    pub fn rows(&self) -> usize {
        self.total_rows
    }
    /// Splits over the sequence (1 = no combine pass).
    pub fn splits(&self) -> usize {
        self.splits
    }
    /// Keys per split.
    pub fn split_len(&self) -> usize {
        self.split_len
    }
    /// Makes this plan use `other`'s split workspace (freeing its own), for plans that never run
    /// at the same time (the CUDA-graph buckets, replayed one after another on one stream).
    /// False, and nothing changed, when `other`'s workspace is too small.
    pub fn share_workspace(&mut self, other: &AttnPlan) -> Result<bool> {
        let (Some(a), Some(m), Some(oa), Some(om)) = (
            &self.part_acc,
            &self.part_ml,
            &other.part_acc,
            &other.part_ml,
        ) else {
            return Ok(false);
        };
        if oa.numel() < a.numel() || om.numel() < m.numel() {
            return Ok(false);
        }
        let (na, nm) = (a.numel(), m.numel());
        self.part_acc = Some(oa.view(0, &[na])?);
        self.part_ml = Some(om.view(0, &[nm])?);
        Ok(true)
    }
}

/// How a plan is made.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanOpts {
    /// Forces the split count (None picks one that fills the GPU: decode of few sequences is
    /// split, prefill is not). Ignored in batch-invariant mode.
    pub splits: Option<usize>,
    /// Batch-invariant mode (`det.rs`): fixed decode splits at absolute key positions, always
    /// merged by the combine pass; prefill never split.
    pub deterministic: bool,
    /// Keys per decode split in batch-invariant mode (0: [`crate::cuda::det::SPLIT_LEN`]); a runner
    /// passes `det::split_len(context_length)` to every plan.
    pub det_split_len: usize,
    /// Plans these sequences as prompt rows (the prefill kernel) even when every one has a
    /// single new token (a one-token prompt tail or extend), so a prompt row is computed by the
    /// same kernel however the prompt was chunked.
    pub prefill: bool,
    /// Plans small decode batches with the split kernel instead of the decode2 cluster form
    /// (side-by-side timing).
    pub no_cluster: bool,
}
