//! Paged attention launcher: plans tiles and splits on the host, then launches
//! `paged_attention` (any batch) or, when every sequence has one new token, a decode kernel:
//! `paged_attention_decode2_g{G}_d{HD}` (GQA group 1/2/4/8, head_dim 64/128: compile-time
//! shapes, bandwidth-shaped loads) or `paged_attention_decode` (other shapes, group <= 8); and
//! `attention_combine` when the sequence is split. Prompts and prefix-extends run a tensor-core
//! kernel: the wgmma one `paged_attention_wg_d128` (attention_prefill_wg.cu) where the device
//! is compute 9.0 and head_dim is 128 (the default), else `paged_attention_fa2_d{64,128}`
//! (attention_prefill.cu; forced with `STRATA_PREFILL_ATTN=fa2`), or the first
//! `paged_attention_mma_d{64,128}` (`STRATA_PREFILL_ATTN=mma`); `STRATA_PREFILL_ATTN=f32` picks
//! the f32 one. Default-mode decode batches of `DECODE_MMA_MIN_ROWS` (8) rows or more run on
//! the tensor cores (`decode_on_mma`, `STRATA_DECODE_ATTN=mma|decode2` forces either): on
//! `paged_attention_dmma_d{64,128}` (attention_decode_mma.cu: the GQA group's heads of one token
//! as one 16-row MMA tile, the warps splitting the keys) for groups up to 16, else, or with
//! `STRATA_DECODE_DMMA=0`, on the prefill kernel with one token's group per 128-row tile.
//!
//! An `AttnPlan` is built once per batch shape from the host-side block tables (validated here:
//! every page id inside the pool, enough pages for every sequence), uploads them with the tile
//! list, and owns the split workspace, so a decode loop of fixed shape replans nothing.
//! Layout: q rows are the batch's new tokens in sequence order; pools are one layer's
//! [slots, n_kv_heads * head_dim] with slot = page * page_size + offset.

use std::sync::OnceLock;

use super::error::{ensure, Result};
use super::launch::{Arg, Dims};
use super::ops::CudaOps;
use super::tensor::{DTensor, DType};

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

/// Default-mode decode batches of at least this many rows run on the tensor cores (the decode
/// MMA kernel, [`decode_dmma`], or the prefill kernel) instead of decode2 (see
/// [`decode_on_mma`]). Set when the prefill kernel took them (docs/perf.md): the graph step was
/// x0.92-0.98 from 8 rows (8B at 1K and 4K context, 1B at 4K; 1B b8 at 1K even) and served
/// output tok/s +20 % at c=16 (8B) and c=32 (1B); below 8 rows decode2 (the cluster form at
/// batch 1-4) is as fast or faster (1B b1-b4 x1.06 on the prefill kernel). With the decode MMA
/// kernel (2026-12-03): from 8 rows x0.80-0.97 against the prefill kernel; at 2-4 rows it beats
/// decode2 at 4K context (x0.88-0.98) but not at 1K (x1.01-1.04), so the threshold stayed.
pub const DECODE_MMA_MIN_ROWS: usize = 8;

/// A boolean a program may force for later plans (`Some`) or leave to its default (`None`).
struct Override(std::sync::atomic::AtomicU8);

impl Override {
    const fn new() -> Self {
        Self(std::sync::atomic::AtomicU8::new(0))
    }
    fn set(&self, v: Option<bool>) {
        let b = v.map_or(0, |on| 1 + on as u8);
        self.0.store(b, std::sync::atomic::Ordering::Relaxed);
    }
    fn get(&self) -> Option<bool> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            b => Some(b == 2),
        }
    }
}

/// Forced: the tensor cores (true) or decode2; else `STRATA_DECODE_ATTN` or the row count.
static DECODE_ATTN: Override = Override::new();

/// Forces decode batches onto the tensor cores (`Some(true)`), onto decode2
/// (`Some(false)`), or back to the default (`None`), for plans made after the call.
pub fn set_decode_attn(mma: Option<bool>) {
    DECODE_ATTN.set(mma);
}

/// Whether a default-mode decode batch of `rows` one-token rows runs on the tensor cores: as
/// forced by [`set_decode_attn`], else `STRATA_DECODE_ATTN` (`mma` or `decode2`), else from
/// [`DECODE_MMA_MIN_ROWS`] rows.
pub fn decode_on_mma(rows: usize) -> bool {
    DECODE_ATTN.get().unwrap_or_else(|| {
        static ENV: OnceLock<Option<String>> = OnceLock::new();
        match env_once(&ENV, "STRATA_DECODE_ATTN") {
            Some("mma") => true,
            Some("decode2") => false,
            _ => rows >= DECODE_MMA_MIN_ROWS,
        }
    })
}

/// Forced: the decode MMA kernel (true) or the prefill kernel; else `STRATA_DECODE_DMMA`.
static DECODE_DMMA: Override = Override::new();

/// Whether decode batches planned on the tensor cores ([`decode_on_mma`]) run
/// `paged_attention_dmma_*` (`Some(true)`) or, as before it, the prefill kernel (`Some(false)`);
/// `None`: the default (on, unless `STRATA_DECODE_DMMA=0`). For plans made after the call.
pub fn set_decode_dmma(on: Option<bool>) {
    DECODE_DMMA.set(on);
}

/// See [`set_decode_dmma`].
pub fn decode_dmma() -> bool {
    DECODE_DMMA.get().unwrap_or_else(|| {
        static ENV: OnceLock<Option<String>> = OnceLock::new();
        env_once(&ENV, "STRATA_DECODE_DMMA") != Some("0")
    })
}

/// The environment variable `name` as the process started with it: read once into `cell`
/// (plans are made per forward; the overrides are start-up settings).
fn env_once(cell: &'static OnceLock<Option<String>>, name: &str) -> Option<&'static str> {
    cell.get_or_init(|| std::env::var(name).ok()).as_deref()
}

/// 0 = follow `STRATA_ATTN_MMA`, else 1 + the forced kernel's index.
static PREFILL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The prefill kernel later plans use: the one forced by [`set_prefill_kernel`], else
/// `STRATA_PREFILL_ATTN` (`wgc`, `wgp`, `wgq`, `wg`, `wgs`, `fa2`, `mma`, `f32`), else
/// `STRATA_ATTN_MMA` (0 = f32, 1 = first mma kernel, 2 = FA2-style kernel), else the wgmma
/// kernel's TMA cluster form where it runs (8K prompts on the H200: the wgmma kernel's forward
/// 215 vs 241 ms with FA2, 2026-12-03; the TMA cluster form x0.975-0.989 of that on an H100,
/// 2026-12-06). Head sizes without a tensor-core kernel (not 64 or 128) always plan the f32 one.
pub fn prefill_kernel() -> PrefillKernel {
    match PREFILL.load(std::sync::atomic::Ordering::Relaxed) {
        1 => PrefillKernel::General,
        2 => PrefillKernel::Mma,
        3 => PrefillKernel::Fa2,
        4 => PrefillKernel::Wgmma,
        5 => PrefillKernel::WgmmaSmemQ,
        6 => PrefillKernel::WgmmaProducer,
        7 => PrefillKernel::WgmmaCluster,
        8 => PrefillKernel::WgmmaProducerCp,
        _ => {
            static PREFILL_ENV: OnceLock<Option<String>> = OnceLock::new();
            static MMA_ENV: OnceLock<Option<String>> = OnceLock::new();
            match env_once(&PREFILL_ENV, "STRATA_PREFILL_ATTN").and_then(PrefillKernel::from_name) {
                Some(k) => k,
                None => match env_once(&MMA_ENV, "STRATA_ATTN_MMA") {
                    Some("0") => PrefillKernel::General,
                    Some("1") => PrefillKernel::Mma,
                    Some("2") => PrefillKernel::Fa2,
                    _ => PrefillKernel::WgmmaCluster,
                },
            }
        }
    }
}

/// Forces the prefill kernel of plans made after this call (None: back to the environment and
/// the default); for checks and side-by-side timing.
pub fn set_prefill_kernel(k: Option<PrefillKernel>) {
    let v = match k {
        None => 0,
        Some(PrefillKernel::General) => 1,
        Some(PrefillKernel::Mma) => 2,
        Some(PrefillKernel::Fa2) => 3,
        Some(PrefillKernel::Wgmma) => 4,
        Some(PrefillKernel::WgmmaSmemQ) => 5,
        Some(PrefillKernel::WgmmaProducer) => 6,
        Some(PrefillKernel::WgmmaCluster) => 7,
        Some(PrefillKernel::WgmmaProducerCp) => 8,
    };
    PREFILL.store(v, std::sync::atomic::Ordering::Relaxed);
}

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
const WG_KEY_TILE: usize = 128;
/// Pipeline stages of `paged_attention_wg_d128`; mirrors its `wg_prefill_body<3>`.
pub(crate) const WG_STAGES: usize = 3;
/// Threads of a wgmma prefill block (two warpgroups).
const WG_THREADS: u32 = 256;

/// Dynamic shared memory of the wgmma kernel: 1024 bytes of alignment slack, Q [128][128],
/// `WG_STAGES` K and V tiles [128][128], bf16, and the TMA forms' 2 `WG_STAGES` mbarriers.
pub(crate) fn wg_smem() -> u32 {
    (1024 + FA2_ROWS * 128 * 2 + WG_STAGES * 2 * WG_KEY_TILE * 128 * 2 + 2 * WG_STAGES * 8) as u32
}

/// Kernel names of the tensor-core decode kernels, in `mma_index` order.
pub(crate) const DMMA_NAMES: [&str; 2] = ["paged_attention_dmma_d64", "paged_attention_dmma_d128"];
/// Keys per shared-memory tile and pipeline stages of `paged_attention_dmma_d*`; mirrors the
/// DM_KERNEL lines of attention_decode_mma.cu.
const DMMA_KEY_TILE: usize = 64;
const DMMA_STAGES: usize = 3;
/// Largest GQA group `paged_attention_dmma_*` takes (its 16 MMA rows).
const DMMA_MAX_GROUP: usize = 16;

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

static CLUSTER_FORM_ENV: OnceLock<Option<String>> = OnceLock::new();

/// The cluster form new plans launch: the register form (`paged_attention_decode2r_*`) unless
/// `STRATA_DECODE_CLUSTER_FORM=tiles` asks for the cp.async-tile form (`decode2c`).
fn cluster_regs_default() -> bool {
    env_once(&CLUSTER_FORM_ENV, "STRATA_DECODE_CLUSTER_FORM") != Some("tiles")
}

/// Blocks per cluster of the decode2 cluster form for a decode of `blocks` (row, KV head) pairs
/// and rows of up to `max_kv` keys (0: the split kernel instead). Only small batches, where the
/// split kernel's combine launch and partial round trip are a large part of the attention: as
/// many blocks per pair as keep the grid within about two blocks per SM, at least 2, at most the
/// device's largest cluster, and no more than one 16-key tile per block.
pub(crate) fn choose_cluster(blocks: usize, sm_count: usize, max_kv: usize, max: usize) -> usize {
    let blocks = blocks.max(1);
    if max < 2 || 2 * blocks > sm_count {
        return 0;
    }
    let mut n = max;
    while n > 2 && (blocks * n > 2 * sm_count || n * 16 > max_kv) {
        n /= 2;
    }
    n
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
    /// Largest cluster the device takes (0: no cluster form).
    max_cluster: usize,
    /// The form a `PrefillWg` plan runs.
    wg_form: WgForm,
    /// What a fixed decode plan's page tables hold on the GPU, where known: a replay writes only
    /// the entries that changed (the tables are `--context-length` pages wide per row).
    table_mirror: std::sync::Mutex<Option<super::plan_tables::TableMirror>>,
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
    /// The plan's tiles (4 i32 per tile: sequence, first q row, q rows, first key), which a
    /// decode graph's metadata node writes (`meta_fill.rs`).
    pub fn tiles(&self) -> &DTensor {
        &self.tiles
    }
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
    /// Keys per decode split in batch-invariant mode (0: [`super::det::SPLIT_LEN`]); a runner
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

/// Split count and split length (keys) of a plan. Batch-invariant mode (`det_len` = Some(split
/// length), 0 meaning [`super::det::SPLIT_LEN`]): decode kernels use that split length and at
/// least 2 splits (so the combine pass always runs; empty splits carry zero weight), prefill
/// kernels one split. Otherwise as many splits as fill about
/// 4 blocks per SM (`forced` overrides), never shorter than the kernel's minimum.
pub(crate) fn choose_splits(
    kernel: AttnKernel,
    blocks: usize,
    sm_count: usize,
    max_kv: usize,
    forced: Option<usize>,
    det_len: Option<usize>,
    fa2_key_tile: usize,
) -> (usize, usize) {
    let max_kv = max_kv.max(1);
    let prefill = matches!(
        kernel,
        AttnKernel::PrefillMma
            | AttnKernel::PrefillFa2
            | AttnKernel::PrefillWg
            | AttnKernel::General
    );
    if let Some(len) = det_len {
        return if prefill {
            (1, max_kv.div_ceil(KEY_TILE) * KEY_TILE)
        } else {
            let len = if len == 0 {
                super::det::SPLIT_LEN
            } else {
                len.div_ceil(super::det::SPLIT_LEN) * super::det::SPLIT_LEN
            };
            (max_kv.div_ceil(len).max(2), len)
        };
    }
    let min_split = match kernel {
        AttnKernel::Decode2 => DECODE2_MIN_SPLIT,
        AttnKernel::Decode => DECODE_MIN_SPLIT,
        AttnKernel::General => 2 * KEY_TILE,
        AttnKernel::PrefillMma => 2 * MMA_ROWS,
        AttnKernel::PrefillFa2 => 2 * fa2_key_tile,
        AttnKernel::PrefillWg => 2 * WG_KEY_TILE,
        AttnKernel::DecodeMma => 2 * DMMA_KEY_TILE,
    };
    // Aim for ~4 resident blocks per SM (2 for the FA2 kernel: its shared memory and registers
    // allow two); never split below two key tiles per split.
    // The wgmma kernel: one (its shared memory).
    let per_sm = match kernel {
        AttnKernel::PrefillFa2 | AttnKernel::DecodeMma => 2,
        AttnKernel::PrefillWg => 1,
        _ => 4,
    };
    let resident = per_sm * sm_count.max(1);
    let blocks = blocks.max(1);
    let want = forced.unwrap_or_else(|| {
        if matches!(
            kernel,
            AttnKernel::Decode2
                | AttnKernel::PrefillFa2
                | AttnKernel::PrefillWg
                | AttnKernel::DecodeMma
        ) {
            // 4 blocks fit on an SM (128 registers/thread): as many splits as keep the grid
            // within one wave, since a partial second wave costs as much as a full one
            // (H100, Llama-3-8B shape: b32 83 us with 2 splits vs 100 us with 3). The FA2
            // prefill kernel (2 blocks/SM) likewise: a 1K prompt of the 8B shape is 256
            // blocks, one wave of 264 on an H200, not worth a split and a combine pass.
            (resident / blocks).max(1)
        } else if blocks >= resident {
            1
        } else {
            resident.div_ceil(blocks)
        }
    });
    let want = match forced {
        Some(_) => want.clamp(1, max_kv.div_ceil(KEY_TILE)),
        None => want.clamp(1, max_kv.div_ceil(min_split)),
    };
    let split_len = max_kv.div_ceil(want).div_ceil(KEY_TILE) * KEY_TILE;
    (max_kv.div_ceil(split_len), split_len)
}

impl CudaOps {
    /// Plans attention for `seqs`. `splits` forces the split count (None picks one that fills the
    /// GPU: decode of few sequences is split, prefill is not).
    pub fn attention_plan(
        &self,
        shape: AttnShape,
        seqs: &[AttnSeq],
        splits: Option<usize>,
    ) -> Result<AttnPlan> {
        let opts = PlanOpts {
            splits,
            ..PlanOpts::default()
        };
        self.attention_plan_with(shape, seqs, opts)
    }

    /// Plans attention for `seqs` with `opts` (see [`PlanOpts`]).
    pub fn attention_plan_with(
        &self,
        shape: AttnShape,
        seqs: &[AttnSeq],
        opts: PlanOpts,
    ) -> Result<AttnPlan> {
        let s = shape;
        ensure(
            s.head_dim % 32 == 0 && s.head_dim <= 128 && s.head_dim > 0,
            || {
                format!(
                    "head_dim {} must be a multiple of 32, at most 128",
                    s.head_dim
                )
            },
        )?;
        ensure(s.n_kv_heads > 0 && s.n_heads % s.n_kv_heads == 0, || {
            "n_heads must be a multiple of n_kv_heads".into()
        })?;
        let group = s.n_heads / s.n_kv_heads;
        ensure(ROWS % group == 0, || {
            format!("GQA group {group} must divide {ROWS}")
        })?;
        ensure(s.page_size > 0 && !seqs.is_empty(), || {
            "empty batch or page size".into()
        })?;
        // A default-mode decode batch may go to the tensor cores (decode_on_mma): the decode MMA
        // kernel where it loaded and takes the group, else the prefill kernel.
        let one_token = seqs.iter().all(|q| q.q_len == 1);
        let on_mma = !opts.deterministic
            && one_token
            && mma_index(s.head_dim).is_some()
            && decode_on_mma(seqs.len());
        let dmma = on_mma
            && !opts.prefill
            && group <= DMMA_MAX_GROUP
            && decode_dmma()
            && mma_index(s.head_dim).is_some_and(|i| self.attention_dmma[i].is_some());
        let decode = !opts.prefill && !on_mma && one_token && group <= DECODE_MAX_GROUP;
        let kernel = match (decode, decode2_index(group, s.head_dim)) {
            (true, Some(_)) => AttnKernel::Decode2,
            (true, None) => AttnKernel::Decode,
            (false, _) if dmma => AttnKernel::DecodeMma,
            (false, _) => match (prefill_kernel(), mma_index(s.head_dim)) {
                (pk, Some(_))
                    if s.head_dim == 128
                        && WgForm::of(pk)
                            .is_some_and(|f| self.attention_wg[f as usize].is_some()) =>
                {
                    AttnKernel::PrefillWg
                }
                (pk, Some(i))
                    if (pk == PrefillKernel::Fa2 || WgForm::of(pk).is_some())
                        && self.attention_fa2[i].is_some() =>
                {
                    AttnKernel::PrefillFa2
                }
                (pk, Some(_)) if pk != PrefillKernel::General => AttnKernel::PrefillMma,
                _ => AttnKernel::General,
            },
        };
        let decode_role = !opts.prefill && seqs.iter().all(|q| q.q_len == 1);
        let wg_form = WgForm::of(prefill_kernel())
            .unwrap_or(WgForm::Regs)
            .planned(s.page_size, group);
        let qt = match kernel {
            AttnKernel::PrefillMma => MMA_ROWS / group,
            AttnKernel::PrefillWg => FA2_ROWS * wg_form.cluster() / group,
            AttnKernel::PrefillFa2 | AttnKernel::DecodeMma => FA2_ROWS / group,
            _ => ROWS / group,
        };
        let max_pages = seqs.iter().map(|q| q.pages.len()).max().unwrap_or(1).max(1);
        let mut tiles = Vec::new();
        let mut tables = vec![0i32; seqs.len() * max_pages];
        let mut row = 0usize;
        let mut max_kv = 1usize;
        for (si, q) in seqs.iter().enumerate() {
            ensure(q.q_len >= 1 && q.kv_len >= q.q_len, || {
                format!("seq {si}: q_len {} kv_len {}", q.q_len, q.kv_len)
            })?;
            ensure(q.pages.len() * s.page_size >= q.kv_len, || {
                format!(
                    "seq {si}: {} pages hold fewer than {} keys",
                    q.pages.len(),
                    q.kv_len
                )
            })?;
            ensure(
                q.pages
                    .iter()
                    .all(|&p| p >= 0 && (p as usize) < s.pool_pages),
                || format!("seq {si}: page id outside pool of {}", s.pool_pages),
            )?;
            tables[si * max_pages..si * max_pages + q.pages.len()].copy_from_slice(&q.pages);
            let prefix = q.kv_len - q.q_len;
            let mut i = 0;
            while i < q.q_len {
                let n = qt.min(q.q_len - i);
                tiles.extend_from_slice(&[
                    si as i32,
                    (row + i) as i32,
                    n as i32,
                    (prefix + i) as i32,
                ]);
                i += n;
            }
            row += q.q_len;
            max_kv = max_kv.max(q.kv_len);
        }
        let n_tiles = tiles.len() / 4;
        ensure(
            !matches!(
                kernel,
                AttnKernel::PrefillFa2 | AttnKernel::PrefillWg | AttnKernel::DecodeMma
            ) || n_tiles <= FA2_MAX_TILES,
            || format!("{n_tiles} prefill tiles in one batch (at most {FA2_MAX_TILES})"),
        )?;
        // Batch-invariant mode: a decode batch on the general kernel (GQA group past
        // DECODE_MAX_GROUP) keeps the decode split policy.
        let policy_kernel = if opts.deterministic && decode_role && kernel == AttnKernel::General {
            AttnKernel::Decode
        } else {
            kernel
        };
        let pair = if kernel == AttnKernel::PrefillWg {
            wg_form.cluster()
        } else {
            1
        };
        let (splits, split_len) = choose_splits(
            policy_kernel,
            n_tiles * s.n_kv_heads * pair,
            self.ctx.sm_count(),
            max_kv,
            opts.splits,
            opts.deterministic.then_some(opts.det_split_len),
            fa2_tile(s.head_dim).0,
        );
        // Small decode batches in default mode (not forced splits): the cluster form.
        let cluster = if kernel == AttnKernel::Decode2
            && !opts.deterministic
            && !opts.no_cluster
            && opts.splits.is_none()
        {
            choose_cluster(
                n_tiles * s.n_kv_heads,
                self.ctx.sm_count(),
                max_kv,
                self.decode2_max_cluster,
            )
        } else {
            0
        };
        let (splits, split_len) = if cluster > 0 {
            (1, max_kv.div_ceil(KEY_TILE) * KEY_TILE)
        } else {
            (splits, split_len)
        };
        let (part_acc, part_ml) = if splits > 1 {
            let n = splits * row * s.n_heads;
            (
                Some(self.ctx.alloc(DType::F32, &[n * s.head_dim])?),
                Some(self.ctx.alloc(DType::F32, &[n * 2])?),
            )
        } else {
            (None, None)
        };
        Ok(AttnPlan {
            shape,
            tiles: self.ctx.upload_i32(&[tiles.len()], &tiles)?,
            n_tiles,
            tables: self.ctx.upload_i32(&[tables.len()], &tables)?,
            max_pages,
            total_rows: row,
            splits,
            split_len,
            part_acc,
            part_ml,
            kernel,
            variant: None,
            cluster,
            cluster_regs: cluster_regs_default(),
            max_cluster: self.decode2_max_cluster,
            wg_form,
            table_mirror: Default::default(),
        })
    }

    /// Attention of the q heads at column `q_col` of `q` [rows, W] over one layer's pools
    /// [pool_pages * page_size, n_kv_heads * head_dim], into out [rows, n_heads * head_dim].
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention(
        &self,
        plan: &AttnPlan,
        q: &DTensor,
        q_col: usize,
        k_pool: &DTensor,
        v_pool: &DTensor,
        out: &DTensor,
        scale: f32,
    ) -> Result<()> {
        self.paged_attention_rope(plan, q, q_col, k_pool, v_pool, out, scale, None)
    }

    /// [`CudaOps::paged_attention`] on q heads not yet rotated when `rope` is given: the kernel
    /// applies RoPE to Q as it loads it, bit for bit what `rope_kv_write` would have written
    /// (only plans for which [`AttnPlan::rotates_q`] holds; the caller's `rope_kv_write` then
    /// rotates K alone).
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention_rope(
        &self,
        plan: &AttnPlan,
        q: &DTensor,
        q_col: usize,
        k_pool: &DTensor,
        v_pool: &DTensor,
        out: &DTensor,
        scale: f32,
        rope: Option<QRope<'_>>,
    ) -> Result<()> {
        let s = plan.shape;
        let (rope_pos, rope_inv) = match rope {
            None => (0, 0),
            Some(r) => {
                ensure(plan.rotates_q(), || {
                    format!("the {:?} attention kernel cannot rotate Q", plan.kernel)
                })?;
                self.on_gpu(&[("pos", r.pos), ("inv_freq", r.inv_freq)])?;
                r.pos.expect("pos", DType::I32, &[plan.total_rows])?;
                r.inv_freq
                    .expect("inv_freq", DType::F32, &[s.head_dim / 2])?;
                (r.pos.ptr(), r.inv_freq.ptr())
            }
        };
        for (w, t) in [
            ("q", q),
            ("k_pool", k_pool),
            ("v_pool", v_pool),
            ("out", out),
        ] {
            self.ctx.check_device(w, t)?;
        }
        ensure(q.shape().len() == 2, || "q must be [rows, width]".into())?;
        let w = q.shape()[1];
        q.expect("q", DType::Bf16, &[plan.total_rows, w])?;
        ensure(q_col + s.n_heads * s.head_dim <= w, || {
            "q heads past row end".into()
        })?;
        let kv_dim = s.n_kv_heads * s.head_dim;
        let slots = s.pool_pages * s.page_size;
        k_pool.expect("k_pool", DType::Bf16, &[slots, kv_dim])?;
        v_pool.expect("v_pool", DType::Bf16, &[slots, kv_dim])?;
        let ow = s.n_heads * s.head_dim;
        out.expect("out", DType::Bf16, &[plan.total_rows, ow])?;
        let hd = s.head_dim;
        let smem = ((ROWS * hd + KEY_TILE * (hd + 1) + KEY_TILE * hd) * 4) as u32;
        let (pa, pm) = match (&plan.part_acc, &plan.part_ml) {
            (Some(a), Some(m)) => (a.ptr(), m.ptr()),
            _ => (0, 0),
        };
        let args = [
            Arg::U64(q.ptr_at(q_col)?),
            Arg::I32(w as i32),
            Arg::U64(k_pool.ptr()),
            Arg::U64(v_pool.ptr()),
            Arg::U64(plan.tables.ptr()),
            Arg::I32(plan.max_pages as i32),
            Arg::I32(s.page_size as i32),
            Arg::U64(plan.tiles.ptr()),
            Arg::I32(s.n_heads as i32),
            Arg::I32(s.n_kv_heads as i32),
            Arg::I32(hd as i32),
            Arg::F32(scale),
            Arg::I32(plan.split_len as i32),
            Arg::U64(out.ptr()),
            Arg::I32(ow as i32),
            Arg::U64(pa),
            Arg::U64(pm),
            Arg::I32(plan.total_rows as i32),
        ];
        let grid = (plan.n_tiles as u32, s.n_kv_heads as u32, plan.splits as u32);
        let decode_dims = Dims {
            grid,
            block: 128,
            smem: 0,
        };
        if plan.kernel == AttnKernel::Decode2 && plan.cluster > 0 {
            let group = s.n_heads / s.n_kv_heads;
            let idx = decode2_index(group, hd).expect("planned only for supported shapes");
            let dims = Dims {
                grid: (
                    plan.n_tiles as u32,
                    s.n_kv_heads as u32,
                    plan.cluster as u32,
                ),
                ..decode_dims
            };
            let f = if plan.cluster_regs {
                &self.attention_decode2r[idx]
            } else {
                &self.attention_decode2c[idx]
            };
            self.go_in_clusters(f, dims, Some(plan.cluster as u32), &args)?;
        } else if plan.kernel == AttnKernel::Decode2 {
            let group = s.n_heads / s.n_kv_heads;
            let idx = decode2_index(group, hd).expect("planned only for supported shapes");
            let f = match plan.variant {
                Some(v) => &self.attention_decode2_variants[v],
                None => &self.attention_decode2[idx],
            };
            self.go(f, decode_dims, &args)?;
        } else if plan.kernel == AttnKernel::Decode {
            self.go(&self.attention_decode, decode_dims, &args)?;
        } else if plan.kernel == AttnKernel::PrefillMma {
            let idx = mma_index(hd).expect("planned only for supported head sizes");
            self.go(&self.attention_mma[idx], decode_dims, &args)?;
        } else if matches!(
            plan.kernel,
            AttnKernel::PrefillFa2 | AttnKernel::PrefillWg | AttnKernel::DecodeMma
        ) {
            // Q rows are copied 16 bytes at a time.
            ensure(q.ptr_at(q_col)? % 16 == 0 && w % 8 == 0, || {
                format!(
                    "tensor-core prefill needs 16-byte aligned q rows (width {w}, column {q_col})"
                )
            })?;
            let idx = mma_index(hd).expect("planned only for supported head sizes");
            let (f, smem, block) = if plan.kernel == AttnKernel::PrefillWg {
                let form = plan.wg_form;
                (&self.attention_wg[form as usize], wg_smem(), form.threads())
            } else if plan.kernel == AttnKernel::DecodeMma {
                (&self.attention_dmma[idx], dmma_smem(hd), 128)
            } else {
                (&self.attention_fa2[idx], fa2_smem(hd), 128)
            };
            let f = f.as_ref().expect("planned only where the kernel loaded");
            let pair = plan.wg_pair();
            let dims = Dims {
                grid: (
                    s.n_kv_heads as u32,
                    plan.n_tiles as u32,
                    (plan.splits * pair) as u32,
                ),
                block,
                smem,
            };
            if plan.kernel == AttnKernel::PrefillWg {
                let mut wg_args = args.to_vec();
                wg_args.extend([Arg::U64(rope_pos), Arg::U64(rope_inv)]);
                // The pools as TMA maps: boxes of min(page, 32) keys x 64 dims (zeroed maps
                // for the forms that do not read them).
                let map = |p: &DTensor| {
                    super::gemm_wg::tensor_map(p.ptr(), slots, kv_dim, s.page_size.min(32))
                };
                let maps = if plan.wg_form.tma() {
                    [map(k_pool)?, map(v_pool)?]
                } else {
                    Default::default()
                };
                wg_args.extend(maps.map(Arg::Map));
                // (the maps cover exactly the two pools checked above)
                self.go_in_clusters(f, dims, (pair > 1).then_some(pair as u32), &wg_args)?;
            } else {
                self.go(f, dims, &args)?;
            }
        } else {
            let dims = Dims {
                grid,
                block: 128,
                smem,
            };
            self.go(&self.attention, dims, &args)?;
        }
        if plan.splits > 1 {
            let args = [
                Arg::U64(pa),
                Arg::U64(pm),
                Arg::I32(plan.splits as i32),
                Arg::I32(plan.total_rows as i32),
                Arg::I32(s.n_heads as i32),
                Arg::I32(hd as i32),
                Arg::U64(out.ptr()),
                Arg::I32(ow as i32),
                // Decode2 blocks of empty splits write nothing: the combine reads only the
                // splits that hold each row's keys (tile i is row i in a decode plan). (The
                // decode MMA kernel shares a row's keys over every split: all are read.)
                Arg::U64(if plan.kernel == AttnKernel::Decode2 {
                    plan.tiles.ptr()
                } else {
                    0
                }),
                Arg::I32(plan.split_len as i32),
            ];
            let dims = Dims {
                grid: (plan.total_rows as u32, s.n_heads as u32, 1),
                block: hd as u32,
                smem: 0,
            };
            self.go(&self.combine, dims, &args)?;
        }
        Ok(())
    }
}

impl CudaOps {
    /// A decode plan of fixed shape for CUDA-graph replay: `batch` one-token sequences with page
    /// tables of up to `max_pages` pages and up to `max_pages * page_size` keys. Split count and
    /// split length are chosen for the longest sequence; shorter ones leave later splits empty.
    /// Rewrite its device tables with [`CudaOps::update_decode_plan`] before each replay.
    pub fn decode_plan_fixed(
        &self,
        shape: AttnShape,
        batch: usize,
        max_pages: usize,
    ) -> Result<AttnPlan> {
        self.decode_plan_fixed_with(shape, batch, max_pages, PlanOpts::default())
    }

    /// [`CudaOps::decode_plan_fixed`] with the batch-invariant options of `opts`
    /// (`deterministic`, `det_split_len`, as every eager decode plan of the runner must use).
    pub fn decode_plan_fixed_with(
        &self,
        shape: AttnShape,
        batch: usize,
        max_pages: usize,
        opts: PlanOpts,
    ) -> Result<AttnPlan> {
        ensure(batch > 0 && max_pages > 0, || "empty fixed plan".into())?;
        let seq = AttnSeq {
            q_len: 1,
            kv_len: max_pages * shape.page_size,
            pages: vec![0; max_pages],
        };
        // `opts.prefill`: decode rows on the prefill kernel (batch-invariant mode with
        // STRATA_DET_ATTN=prefill); its tiles are one row each here, as the decode kernels'.
        let opts = PlanOpts {
            splits: None,
            ..opts
        };
        self.attention_plan_with(shape, &vec![seq; batch], opts)
    }

    /// Points a fixed decode plan at `rows` (at most the plan's batch, one new token each); the
    /// plan's remaining rows attend to key 0 of page 0 (padding, discarded by the caller).
    /// Stream-ordered: launches queued after this call see the new tables.
    ///
    /// Only the table entries that differ from the previous update's go up (the first update
    /// writes every sequence's pages): a decode step changes a row's table once per page of
    /// new tokens, while the whole table is `max_pages` (the context length) wide per row. Up to
    /// two runs of changes are copied as they are; more (at page size 1 every row gains an
    /// entry per step) go up as (index, page) pairs that `scatter_i32` writes. The host work is
    /// one comparison of each row's known entries plus the new ones (`plan_tables.rs`).
    pub fn update_decode_plan(&self, plan: &AttnPlan, rows: &[DecodeRow<'_>]) -> Result<()> {
        self.update_fixed_plan(plan, rows, true)
    }

    /// [`CudaOps::update_decode_plan`] without the tiles (each row's key count), which a decode
    /// graph's metadata node writes on the device (`meta_fill.rs`): the rows are checked and the
    /// page tables' changes go up.
    pub fn update_decode_tables(&self, plan: &AttnPlan, rows: &[DecodeRow<'_>]) -> Result<()> {
        self.update_fixed_plan(plan, rows, false)
    }

    fn update_fixed_plan(
        &self,
        plan: &AttnPlan,
        rows: &[DecodeRow<'_>],
        write_tiles: bool,
    ) -> Result<()> {
        let s = plan.shape;
        let batch = plan.total_rows;
        ensure(plan.n_tiles == batch && rows.len() <= batch, || {
            format!(
                "{} sequences for a fixed plan of {batch} decode rows",
                rows.len()
            )
        })?;
        let cap = plan.splits * plan.split_len;
        let mut tiles = Vec::with_capacity(if write_tiles { 4 * batch } else { 0 });
        for (si, q) in rows.iter().enumerate() {
            ensure(q.kv_len >= 1 && q.kv_len <= cap, || {
                format!(
                    "seq {si}: kv_len {} (fixed plan holds {cap} keys)",
                    q.kv_len
                )
            })?;
            ensure(
                q.pages.len() <= plan.max_pages && q.pages.len() * s.page_size >= q.kv_len,
                || format!("seq {si}: {} pages for {} keys", q.pages.len(), q.kv_len),
            )?;
            if write_tiles {
                tiles.extend_from_slice(&[si as i32, si as i32, 1, q.kv_len as i32 - 1]);
            }
        }
        if write_tiles {
            for si in rows.len()..batch {
                tiles.extend_from_slice(&[si as i32, si as i32, 1, 0]);
            }
        }
        let mut mirror = plan.table_mirror.lock().expect("plan table mirror");
        if mirror.is_none() {
            *mirror = Some(super::plan_tables::TableMirror::new(&self.ctx, batch)?);
        }
        let m = mirror.as_mut().expect("made above");
        let written = super::plan_tables::table_changes(
            &mut m.rows,
            plan.max_pages,
            s.pool_pages,
            rows.iter().map(|q| q.pages),
        )
        .map_err(|(si, p)| {
            super::error::CudaError::Shape(format!(
                "seq {si}: page id {p} outside pool of {}",
                s.pool_pages
            ))
        })
        .and_then(|ch| {
            if write_tiles {
                self.ctx.write_i32(&plan.tiles, &tiles)?;
            }
            self.write_table_changes(&plan.tables, plan.max_pages, m, ch)
        });
        if written.is_err() {
            // The mirror no longer says what the GPU holds: the next update writes every row.
            *mirror = None;
        }
        written
    }
}

/// One row of a fixed decode plan's update ([`CudaOps::update_decode_plan`]): one new token
/// attending to `kv_len` keys (its own included) on `pages`.
#[derive(Clone, Copy, Debug)]
pub struct DecodeRow<'a> {
    /// Keys visible to the token.
    pub kv_len: usize,
    /// Pool page of each `page_size` block of keys, in order.
    pub pages: &'a [u32],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::det::SPLIT_LEN;

    #[test]
    fn decode_batches_from_eight_rows_go_to_the_tensor_cores() {
        if std::env::var_os("STRATA_DECODE_ATTN").is_some() {
            return;
        }
        assert!(!decode_on_mma(1) && !decode_on_mma(DECODE_MMA_MIN_ROWS - 1));
        assert!(decode_on_mma(DECODE_MMA_MIN_ROWS) && decode_on_mma(64));
        set_decode_attn(Some(false));
        assert!(!decode_on_mma(64));
        set_decode_attn(Some(true));
        assert!(decode_on_mma(1));
        set_decode_attn(None);
        assert!(!decode_on_mma(1) && decode_on_mma(64));
        // Those batches on the decode MMA kernel unless switched back to the prefill kernel.
        if std::env::var_os("STRATA_DECODE_DMMA").is_none() {
            assert!(decode_dmma());
        }
        set_decode_dmma(Some(false));
        assert!(!decode_dmma());
        set_decode_dmma(Some(true));
        assert!(decode_dmma());
        set_decode_dmma(None);
    }

    #[test]
    fn wgmma_prefill_forms_fall_back_where_their_shapes_do_not_fit() {
        use WgForm::*;
        // (asked, page size, GQA group) -> planned: the TMA forms need power-of-two pages from
        // 8, a cluster of n blocks a group of at least n (each block takes group / n heads).
        for (asked, page, group, want) in [
            (Cluster, 16, 4, Cluster),
            (Cluster, 64, 2, Cluster),
            (Cluster, 16, 1, Producer),
            (Cluster, 8, 4, Cluster),
            (Cluster, 1, 4, ProducerCp),
            (Cluster, 7, 8, ProducerCp),
            (Producer, 4, 1, ProducerCp),
            (ProducerCp, 16, 4, ProducerCp),
            (Producer, 256, 1, Producer),
            (Regs, 1, 4, Regs),
            (SmemQ, 16, 4, SmemQ),
        ] {
            assert_eq!(
                asked.planned(page, group),
                want,
                "{asked:?} page {page} group {group}"
            );
        }
        assert_eq!(
            (Regs.threads(), Cluster.threads(), ProducerCp.threads()),
            (256, 384, 384)
        );
        assert_eq!((Producer.cluster(), Cluster.cluster()), (1, 2));
        // Each form's STRATA_PREFILL_ATTN name asks for that form.
        for f in [Regs, SmemQ, Producer, Cluster, ProducerCp] {
            let k = PrefillKernel::from_name(f.name()).expect("a kernel name");
            assert_eq!(WgForm::of(k), Some(f), "{}", f.name());
        }
        assert_eq!(PrefillKernel::from_name("wgx"), None);
    }

    #[test]
    fn cluster_form_only_for_small_decode_batches() {
        // (blocks = rows x KV heads, SMs, longest row, device's largest cluster) -> blocks per
        // cluster: within about two blocks per SM, at most one 16-key tile per block, 0 from
        // half an SM per pair or without clusters.
        for (blocks, sms, max_kv, max, want) in [
            (8, 132, 1024, 16, 16),
            (8, 132, 10240, 8, 8),
            (16, 132, 1024, 16, 16),
            (32, 132, 1024, 16, 8),
            (64, 132, 1024, 16, 4),
            (66, 132, 1024, 16, 4),
            (67, 132, 1024, 16, 0),
            (256, 132, 1024, 16, 0),
            (8, 132, 20, 16, 2),
            (8, 132, 1, 16, 2),
            (8, 132, 64, 16, 4),
            (8, 132, 1024, 0, 0),
        ] {
            assert_eq!(
                choose_cluster(blocks, sms, max_kv, max),
                want,
                "{blocks} blocks, {sms} SMs, {max_kv} keys, max {max}"
            );
        }
    }

    #[test]
    fn deterministic_splits_do_not_depend_on_the_batch() {
        // Whatever the batch (blocks), SM count or longest sequence, a decode row's keys are
        // split at multiples of SPLIT_LEN and the combine pass runs (>= 2 splits); prefill is
        // never split.
        for kernel in [AttnKernel::Decode2, AttnKernel::Decode] {
            for blocks in [1, 8, 64, 256, 4096] {
                for sms in [1, 78, 132] {
                    for max_kv in [1, 17, 255, 256, 257, 1000, 10240] {
                        for forced in [None, Some(1), Some(7)] {
                            let (n, len) =
                                choose_splits(kernel, blocks, sms, max_kv, forced, Some(0), 64);
                            assert_eq!(len, SPLIT_LEN);
                            assert_eq!(n, max_kv.div_ceil(SPLIT_LEN).max(2));
                            assert!(n * len >= max_kv);
                        }
                    }
                }
            }
        }
        for kernel in [
            AttnKernel::PrefillMma,
            AttnKernel::PrefillFa2,
            AttnKernel::PrefillWg,
            AttnKernel::General,
        ] {
            for blocks in [1, 8, 4096] {
                for max_kv in [1, 100, 2048, 8192] {
                    let (n, len) = choose_splits(kernel, blocks, 132, max_kv, Some(4), Some(0), 32);
                    assert_eq!(n, 1);
                    assert!(len >= max_kv && len % KEY_TILE == 0);
                }
            }
        }
        // A configured split length (a server's det::split_len(context)) is used as given.
        let (n, len) = choose_splits(AttnKernel::Decode2, 8, 132, 100_000, None, Some(2048), 64);
        assert_eq!((n, len), (49, 2048));
        assert_eq!(SPLIT_LEN % KEY_TILE, 0);
        assert_eq!(SPLIT_LEN % DECODE_MIN_SPLIT, 0);
        assert_eq!(SPLIT_LEN % MMA_ROWS, 0);
    }

    #[test]
    fn default_splits_follow_occupancy() {
        // The default policy does depend on the batch (that is what batch-invariant mode fixes):
        // one sequence is split, a large batch is not.
        let (one, _) = choose_splits(AttnKernel::Decode2, 8, 132, 4096, None, None, 64);
        let (many, _) = choose_splits(AttnKernel::Decode2, 64 * 8, 132, 4096, None, None, 64);
        assert!(one > 1, "{one}");
        assert_eq!(many, 1);
        // Forced splits are honoured, split lengths are whole key tiles covering every key.
        let (n, len) = choose_splits(AttnKernel::General, 8, 132, 1000, Some(3), None, 64);
        assert_eq!((n, len % KEY_TILE), (3, 0));
        assert!(n * len >= 1000);
    }
}
