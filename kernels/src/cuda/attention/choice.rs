//! Which attention kernel a plan runs: the start-up overrides (environment, or forced by a
//! check or a benchmark) and the split and cluster counts chosen from the batch's shape.

use super::*;

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

static CLUSTER_FORM_ENV: OnceLock<Option<String>> = OnceLock::new();

/// The cluster form new plans launch: the register form (`paged_attention_decode2r_*`) unless
/// `STRATA_DECODE_CLUSTER_FORM=tiles` asks for the cp.async-tile form (`decode2c`).
pub(super) fn cluster_regs_default() -> bool {
    env_once(&CLUSTER_FORM_ENV, "STRATA_DECODE_CLUSTER_FORM") != Some("tiles")
}

static HALVES_ENV: OnceLock<Option<String>> = OnceLock::new();

/// The register cluster form split by query heads for new plans, where it fits: by default at
/// head_dim 64, where it gained (1B batch-1 step x0.986-0.993, served ITL 0.96 vs 0.97 ms, H100
/// 2026-12-07), not at 128, where doubling the K/V loads lost (8B x1.021);
/// `STRATA_DEC2R_HALVES=1` at every head size, `=0` never.
pub(super) fn halves_default(shape: AttnShape) -> bool {
    let on = match env_once(&HALVES_ENV, "STRATA_DEC2R_HALVES") {
        Some("1") => true,
        Some("0") => false,
        _ => shape.head_dim == 64,
    };
    on && halves_fit(shape)
}

/// True when `shape` has a head-split register cluster kernel (an even GQA group of 2, 4 or 8;
/// the form's kernels need sm_90, like every cluster form).
pub(super) fn halves_fit(shape: AttnShape) -> bool {
    shape.n_kv_heads > 0
        && decode2h_index(shape.n_heads / shape.n_kv_heads, shape.head_dim).is_some()
        && shape.n_heads % shape.n_kv_heads == 0
}

/// The cluster size for `pairs` (row, KV head) pairs ([`choose_cluster`]) and whether the
/// register form is split by query heads (`halves`: asked for and fitting the shape): only
/// where the doubled grid keeps that cluster size, since a smaller cluster gives each block a
/// longer share of the row, lengthening the chain the split shortens (in practice: one row).
pub(crate) fn cluster_and_halves(
    pairs: usize,
    sm_count: usize,
    max_kv: usize,
    max: usize,
    halves: bool,
) -> (usize, bool) {
    let c = choose_cluster(pairs, sm_count, max_kv, max);
    (
        c,
        halves && c > 0 && choose_cluster(2 * pairs, sm_count, max_kv, max) == c,
    )
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

/// Split count and split length (keys) of a plan. Batch-invariant mode (`det_len` = Some(split
/// length), 0 meaning [`crate::cuda::det::SPLIT_LEN`]): decode kernels use that split length and at
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
                crate::cuda::det::SPLIT_LEN
            } else {
                len.div_ceil(crate::cuda::det::SPLIT_LEN) * crate::cuda::det::SPLIT_LEN
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
