//! Batch-invariant GEMMs (`GemmPath::CublasLtDet`, `det.rs`): one algorithm per weight shape
//! (out, in, output dtype) for every row count, so a row's result does not depend on the other
//! rows of its call.
//!
//! What invariance needs is that the SAME kernel configuration (tile, stages, no split-K,
//! reduction scheme none) runs whatever the row count; a workspace does not break it (it is
//! preallocated, [`super::gemm_lt::WORKSPACE`]). The search, per shape, on first use:
//! 1. Candidates from cuBLASLt's heuristic at each of [`DET_HEUR_ROWS`] rows, with no workspace and
//!    with the whole workspace allowed, with and without the "reduction scheme none" preference,
//!    up to [`DET_RESULTS`] answers each; every answer is pinned to split-K 1 and reduction scheme
//!    none; repeats are merged (an algorithm proposed at more row counts ranks first).
//! 2. If the heuristic leaves nothing: the enumeration API (`cublasLtMatmulAlgoGetIds`,
//!    `cublasLtMatmulAlgoInit`, every tile and stage configuration the algorithm lists, split-K 1,
//!    no reduction, no CTA swizzling), at most [`ENUM_MAX_CONFIGS`] configurations.
//! 3. Kept: configurations `cublasLtMatmulAlgoCheck` accepts at every row count of
//!    [`DET_CHECK_ROWS`] (the f32 LM head up to 1024) within the workspace (at most
//!    [`DET_MAX_CANDIDATES`]), and that pass an invariance probe on the GPU: rows computed alone
//!    (1, 3, 32, 100 rows at several offsets) bitwise equal to the same rows of one
//!    [`PROBE_ROWS`]-row call (this catches a stream-K-like schedule whose split depends on the
//!    tile count).
//! 4. The kept ones are timed at 32 and 1024 rows (32 only for f32 logits); the one with the
//!    smallest worst ratio to the per-size fastest wins, recorded in the machine-wide tuning table
//!    (`lt_table.rs`) as its configuration's fingerprint under rows [`DET_TABLE_ROWS`], so every
//!    process on the machine runs the same one.
//! 5. Last resort, when nothing survives: the `gemv_bf16` kernel over chunks of 8 rows
//!    ([`DetChoice::Gemv`]), batch-invariant by construction (each output element is one warp's
//!    fixed-order sum over k, the same code whichever of the chunk's 8 row slots it occupies).
//!    Slow for prefill (the weights are read once per 8 rows), so it is logged as a warning with
//!    everything that was tried.
//!
//! A row count the pinned algorithm does not support is an error naming the shape, never a
//! silent switch.

use std::ffi::c_void;

use cudarc::cublaslt::sys;

use super::error::{CudaError, Result};
use super::gemm_lt::{Descs, GemmLt, Plan, Tuned, WORKSPACE};
use super::tensor::{DTensor, DType};

/// Row counts at which the heuristic is asked for batch-invariant candidates.
pub const DET_HEUR_ROWS: [usize; 6] = [1, 8, 32, 128, 1024, 4096];
/// Answers asked of the heuristic per query.
pub const DET_RESULTS: usize = 48;
/// Row counts at which a candidate is timed (a decode batch and a prefill chunk).
pub const DET_ROWS: [usize; 2] = [32, 1024];
/// Row counts at which a batch-invariant candidate must be supported (a row count past these is
/// checked when it first occurs; the f32 logits GEMM only up to 1024 rows, it takes one row per
/// sequence).
pub const DET_CHECK_ROWS: [usize; 5] = [1, 3, 32, 1024, 8192];
/// Most candidates probed and timed per shape.
pub const DET_MAX_CANDIDATES: usize = 24;
/// Most configurations the enumeration fallback checks per shape.
pub const ENUM_MAX_CONFIGS: usize = 4000;
/// Rows of the invariance probe's reference call (bf16 output; 256 for f32 logits).
pub const PROBE_ROWS: usize = 1024;
/// The tuning table's rows field for a batch-invariant pick (whose value is the configuration's
/// fingerprint, not a candidate index).
pub const DET_TABLE_ROWS: usize = 1 << 40;

/// How a weight shape's batch-invariant GEMM runs.
#[derive(Clone, Copy)]
pub enum DetChoice {
    /// This cuBLASLt configuration at every row count.
    Lt(sys::cublasLtMatmulAlgo_t),
    /// `gemv_bf16` over chunks of 8 rows (no cuBLASLt configuration qualified).
    Gemv,
}

/// One i32/u32 configuration attribute of an algorithm.
fn algo_config(
    algo: &sys::cublasLtMatmulAlgo_t,
    attr: sys::cublasLtMatmulAlgoConfigAttributes_t,
) -> Option<u32> {
    let mut v: u32 = 0;
    let mut written: usize = 0;
    // SAFETY: a 4-byte buffer for a 4-byte attribute (split-K count, reduction scheme); cuBLASLt
    // writes at most `size_of::<u32>()` bytes and reports how many.
    let st = unsafe {
        sys::cublasLtMatmulAlgoConfigGetAttribute(
            algo,
            attr,
            &mut v as *mut u32 as *mut c_void,
            std::mem::size_of::<u32>(),
            &mut written,
        )
    };
    (st == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && written == 4).then_some(v)
}

/// Sets a 4-byte configuration attribute; false when cuBLASLt refuses the value.
fn set_config(
    algo: &mut sys::cublasLtMatmulAlgo_t,
    attr: sys::cublasLtMatmulAlgoConfigAttributes_t,
    v: u32,
) -> bool {
    // SAFETY: every attribute set here is a 4-byte integer (int32 split count, uint32 ids and
    // schemes).
    let st = unsafe {
        sys::cublasLtMatmulAlgoConfigSetAttribute(algo, attr, &v as *const u32 as *const c_void, 4)
    };
    st == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
}

/// `algo` with split-K forced to 1 and the reduction scheme to none (cuBLASLt may refuse a
/// value; [`single_pass`] and `cublasLtMatmulAlgoCheck` decide what is kept).
fn forced_single_pass(mut algo: sys::cublasLtMatmulAlgo_t) -> sys::cublasLtMatmulAlgo_t {
    use sys::cublasLtMatmulAlgoConfigAttributes_t as A;
    set_config(&mut algo, A::CUBLASLT_ALGO_CONFIG_SPLITK_NUM, 1);
    set_config(&mut algo, A::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, 0);
    algo
}

/// True when `algo` reduces each output element in one pass: split-K count 1 (or unset) and no
/// reduction scheme.
fn single_pass(algo: &sys::cublasLtMatmulAlgo_t) -> bool {
    use sys::cublasLtMatmulAlgoConfigAttributes_t as A;
    let split = algo_config(algo, A::CUBLASLT_ALGO_CONFIG_SPLITK_NUM);
    let red = algo_config(algo, A::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME);
    matches!(split, Some(0 | 1)) && red == Some(0)
}

/// A capability list of u32 ids (tile or stage ids) of an algorithm.
fn cap_ids(
    algo: &sys::cublasLtMatmulAlgo_t,
    attr: sys::cublasLtMatmulAlgoCapAttributes_t,
) -> Vec<u32> {
    let mut written: usize = 0;
    // SAFETY: a size query (null buffer of 0 bytes) writes only `written`.
    let st = unsafe {
        sys::cublasLtMatmulAlgoCapGetAttribute(algo, attr, std::ptr::null_mut(), 0, &mut written)
    };
    if st != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS || written == 0 {
        return Vec::new();
    }
    let mut ids = vec![0u32; written / 4];
    // SAFETY: `ids` holds `written` bytes, the size cuBLASLt reported for this attribute.
    let st = unsafe {
        sys::cublasLtMatmulAlgoCapGetAttribute(
            algo,
            attr,
            ids.as_mut_ptr() as *mut c_void,
            ids.len() * 4,
            &mut written,
        )
    };
    if st != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Vec::new();
    }
    ids
}

/// FNV-1a over a configuration's bytes: its identity in the machine-wide table (the same
/// configuration has the same bytes in every process with the same library).
pub fn fingerprint(algo: &sys::cublasLtMatmulAlgo_t) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in algo.data {
        for b in w.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    // Keep it a positive decimal that `lt_table` parses on any 64-bit host.
    (h >> 1) as usize
}

fn capturing(g: &GemmLt) -> bool {
    !matches!(
        g.ctx.stream().capture_status(),
        Ok(cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    )
}

/// Deterministic pseudo-random bf16-range values for the probe (no RNG state shared with
/// anything else).
fn probe_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

impl GemmLt {
    /// The batch-invariant choice for weight shape (n, k) and output dtype, made on first use
    /// (see the module doc); `w` is the real weight, used for the probe and the timing.
    pub(super) fn det_choice(
        &self,
        n: usize,
        k: usize,
        y_f32: bool,
        w: &DTensor,
    ) -> Result<DetChoice> {
        let key = (n, k, y_f32);
        if let Some(a) = self
            .det_algos
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(*a);
        }
        let mut log: Vec<String> = Vec::new();
        let checks = DET_CHECK_ROWS
            .iter()
            .filter(|&&t| !y_f32 || t <= 1024)
            .map(|&t| Ok((t, Descs::new(t, n, k, y_f32)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut cands = self.det_heuristic_candidates(n, k, y_f32, &checks, &mut log)?;
        if cands.is_empty() {
            cands = self.det_enumerated_candidates(y_f32, &checks, &mut log)?;
        }
        cands.truncate(DET_MAX_CANDIDATES);
        let capture = capturing(self);
        if !cands.is_empty() && !capture {
            let before = cands.len();
            let mut kept = Vec::with_capacity(before);
            // One probe input for every candidate.
            let r = if y_f32 { 256 } else { PROBE_ROWS };
            let ydt = if y_f32 { DType::F32 } else { DType::Bf16 };
            let x = self
                .ctx
                .upload_bf16(&[r, k], &probe_values(r * k, (n * 31 + k) as u64))?;
            let y = self.ctx.alloc(ydt, &[r, n])?;
            for a in cands {
                match self.det_probe(&a, n, k, y_f32, w, &x, &y) {
                    Ok(None) => kept.push(a),
                    Ok(Some(why)) => {
                        log.push(format!("probe rejected {:x}: {why}", fingerprint(&a)))
                    }
                    Err(e) => log.push(format!("probe failed {:x}: {e}", fingerprint(&a))),
                }
            }
            log.push(format!(
                "{} of {before} passed the invariance probe",
                kept.len()
            ));
            cands = kept;
        } else if capture {
            log.push("inside a graph capture: no probe, no timing".into());
        }
        let shape_s = format!(
            "out {n}, in {k} ({} output)",
            if y_f32 { "f32" } else { "bf16" }
        );
        if cands.is_empty() {
            tracing::warn!(
                shape = %shape_s,
                tried = %log.join("; "),
                "batch-invariant GEMM: no cuBLASLt configuration qualified; using the GEMV fallback \
                 (batch-invariant by construction, slow for prefill)"
            );
            return Ok(self.keep_det(key, DetChoice::Gemv));
        }
        let shape = (DET_TABLE_ROWS, n, k, y_f32);
        let fps: Vec<usize> = cands.iter().map(fingerprint).collect();
        let known = self
            .table
            .get(shape)
            .and_then(|f| fps.iter().position(|&x| x == f));
        let pick = match known {
            Some(i) if self.tune => i,
            _ if self.tune && !capture && cands.len() > 1 => {
                match self.det_time(&cands, n, k, y_f32, w) {
                    Ok(best) => {
                        let f = self.table.record(shape, fps[best]);
                        fps.iter().position(|&x| x == f).unwrap_or(best)
                    }
                    Err(e) => {
                        // Not recorded: a later process times it again.
                        tracing::warn!(n, k, error = %e, "batch-invariant GEMM: timing failed; using the first candidate");
                        0
                    }
                }
            }
            _ => 0,
        };
        tracing::info!(
            shape = %shape_s,
            candidates = cands.len(),
            pick,
            fingerprint = fps[pick],
            "batch-invariant GEMM: one cuBLASLt configuration for every row count"
        );
        tracing::debug!(tried = %log.join("; "), "batch-invariant GEMM search");
        Ok(self.keep_det(key, DetChoice::Lt(cands[pick])))
    }

    /// True when `a` is accepted at every row count of `checks` within the workspace; otherwise
    /// records why in `log` (when `why` is given).
    fn det_supported(
        &self,
        a: &sys::cublasLtMatmulAlgo_t,
        checks: &[(usize, Descs)],
        why: Option<&mut Vec<String>>,
    ) -> bool {
        for (t, d) in checks {
            match self.check(d, a) {
                Ok(ws) if ws <= WORKSPACE => {}
                other => {
                    if let Some(log) = why {
                        log.push(format!(
                            "{:x} refused at {t} rows ({})",
                            fingerprint(a),
                            match other {
                                Ok(ws) => format!("needs {ws} B of workspace"),
                                Err(st) => format!("{st:?}"),
                            }
                        ));
                    }
                    return false;
                }
            }
        }
        true
    }

    /// Step 1 of the search: the heuristic's answers, pinned to one pass, supported everywhere.
    fn det_heuristic_candidates(
        &self,
        n: usize,
        k: usize,
        y_f32: bool,
        checks: &[(usize, Descs)],
        log: &mut Vec<String>,
    ) -> Result<Vec<sys::cublasLtMatmulAlgo_t>> {
        // (configuration, how many queries proposed it), in first-seen order.
        let mut seen: Vec<(sys::cublasLtMatmulAlgo_t, usize)> = Vec::new();
        let mut answers = 0;
        for t in DET_HEUR_ROWS {
            let d = Descs::new(t, n, k, y_f32)?;
            for ws in [0u64, WORKSPACE as u64] {
                for none_only in [true, false] {
                    let found = match self.heuristic(&d, ws, DET_RESULTS, none_only) {
                        Ok(f) => f,
                        Err(e) => {
                            log.push(format!(
                                "heuristic rows {t} workspace {ws} none-only {none_only}: {e}"
                            ));
                            continue;
                        }
                    };
                    answers += found.len();
                    for r in found {
                        let a = if single_pass(&r.algo) {
                            r.algo
                        } else {
                            forced_single_pass(r.algo)
                        };
                        if !single_pass(&a) {
                            continue;
                        }
                        match seen.iter_mut().find(|(c, _)| c.data == a.data) {
                            Some((_, n)) => *n += 1,
                            None => seen.push((a, 1)),
                        }
                    }
                }
            }
        }
        // Stable: ties keep first-seen order, so every process builds the same list.
        seen.sort_by_key(|s| std::cmp::Reverse(s.1));
        let distinct = seen.len();
        let mut refused = Vec::new();
        let cands: Vec<_> = seen
            .into_iter()
            .map(|(a, _)| a)
            .filter(|a| self.det_supported(a, checks, Some(&mut refused)))
            .collect();
        log.push(format!(
            "heuristic at rows {DET_HEUR_ROWS:?}: {answers} answers, {distinct} distinct single-pass \
             configurations, {} supported at rows {:?}",
            cands.len(),
            checks.iter().map(|c| c.0).collect::<Vec<_>>()
        ));
        log.extend(refused.into_iter().take(8));
        Ok(cands)
    }

    /// Step 2 of the search: every algorithm id of this type combination, each tile and stage
    /// configuration it lists, split-K 1, no reduction, no swizzling.
    fn det_enumerated_candidates(
        &self,
        y_f32: bool,
        checks: &[(usize, Descs)],
        log: &mut Vec<String>,
    ) -> Result<Vec<sys::cublasLtMatmulAlgo_t>> {
        use sys::cublasLtMatmulAlgoCapAttributes_t as C;
        use sys::cublasLtMatmulAlgoConfigAttributes_t as A;
        let bf = sys::cudaDataType::CUDA_R_16BF;
        let yt = if y_f32 {
            sys::cudaDataType::CUDA_R_32F
        } else {
            bf
        };
        let compute = sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let scale = sys::cudaDataType::CUDA_R_32F;
        let mut ids = vec![0i32; 256];
        let mut count: i32 = 0;
        // SAFETY: `ids` has room for 256 ids and cuBLASLt writes `count` <= 256.
        let st = unsafe {
            sys::cublasLtMatmulAlgoGetIds(
                self.handle,
                compute,
                scale,
                bf,
                bf,
                yt,
                yt,
                ids.len() as i32,
                ids.as_mut_ptr(),
                &mut count,
            )
        };
        if st != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            log.push(format!("cublasLtMatmulAlgoGetIds: {st:?}"));
            return Ok(Vec::new());
        }
        ids.truncate(count.clamp(0, 256) as usize);
        let mut tried = 0usize;
        let mut cands = Vec::new();
        'ids: for &id in &ids {
            // SAFETY: all-zero is a valid bit pattern for the opaque algorithm struct, which
            // AlgoInit fills.
            let mut base: sys::cublasLtMatmulAlgo_t = unsafe { std::mem::zeroed() };
            // SAFETY: live handle; `base` is written by the call.
            let st = unsafe {
                sys::cublasLtMatmulAlgoInit(
                    self.handle,
                    compute,
                    scale,
                    bf,
                    bf,
                    yt,
                    yt,
                    id,
                    &mut base,
                )
            };
            if st != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                continue;
            }
            let mut tiles = cap_ids(&base, C::CUBLASLT_ALGO_CAP_TILE_IDS);
            let mut stages = cap_ids(&base, C::CUBLASLT_ALGO_CAP_STAGES_IDS);
            if tiles.is_empty() {
                tiles.push(0);
            }
            if stages.is_empty() {
                stages.push(0);
            }
            for &tile in &tiles {
                for &stage in &stages {
                    if tried >= ENUM_MAX_CONFIGS || cands.len() >= DET_MAX_CANDIDATES {
                        break 'ids;
                    }
                    tried += 1;
                    let mut a = base;
                    let ok = set_config(&mut a, A::CUBLASLT_ALGO_CONFIG_TILE_ID, tile)
                        && set_config(&mut a, A::CUBLASLT_ALGO_CONFIG_STAGES_ID, stage)
                        && set_config(&mut a, A::CUBLASLT_ALGO_CONFIG_SPLITK_NUM, 1)
                        && set_config(&mut a, A::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, 0);
                    // Swizzling and the custom option are optional knobs: leave them at 0.
                    set_config(&mut a, A::CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, 0);
                    set_config(&mut a, A::CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, 0);
                    if ok
                        && single_pass(&a)
                        && !cands
                            .iter()
                            .any(|c: &sys::cublasLtMatmulAlgo_t| c.data == a.data)
                        && self.det_supported(&a, checks, None)
                    {
                        cands.push(a);
                    }
                }
            }
        }
        log.push(format!(
            "enumeration: {} algorithm ids, {tried} tile/stage configurations checked, {} supported",
            ids.len(),
            cands.len()
        ));
        Ok(cands)
    }

    /// The invariance probe on input x [r, k] (y [r, n] its scratch output): `None` when rows
    /// computed alone equal the same rows of one r-row call bitwise, else what differed.
    #[allow(clippy::too_many_arguments)]
    fn det_probe(
        &self,
        a: &sys::cublasLtMatmulAlgo_t,
        n: usize,
        k: usize,
        y_f32: bool,
        w: &DTensor,
        x: &DTensor,
        y: &DTensor,
    ) -> Result<Option<String>> {
        let r = x.shape()[0];
        let ydt = y.dtype();
        self.run(
            &Plan {
                d: Descs::new(r, n, k, y_f32)?,
                algo: *a,
            },
            x,
            w,
            y,
        )?;
        for (m, off) in [(1, 0), (1, r - 1), (3, 5), (32, 40), (100, r - 100)] {
            let xm = x.view(off * k, &[m, k])?;
            let ym = self.ctx.alloc(ydt, &[m, n])?;
            self.run(
                &Plan {
                    d: Descs::new(m, n, k, y_f32)?,
                    algo: *a,
                },
                &xm,
                w,
                &ym,
            )?;
            let got = self.ctx.download_f32(&ym)?;
            let want = self.ctx.download_f32(&y.view(off * n, &[m, n])?)?;
            if let Some(i) = got
                .iter()
                .zip(&want)
                .position(|(p, q)| p.to_bits() != q.to_bits())
            {
                return Ok(Some(format!(
                    "{m} rows at {off}: element {i} {} vs {} in the {r}-row call",
                    got[i], want[i]
                )));
            }
        }
        Ok(None)
    }

    fn keep_det(&self, key: (usize, usize, bool), c: DetChoice) -> DetChoice {
        self.det_algos
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, c);
        c
    }

    /// Times every candidate at each of DET_ROWS (only the decode size for f32 logits) on
    /// scratch inputs and returns the index with the smallest worst ratio to the fastest.
    fn det_time(
        &self,
        cands: &[sys::cublasLtMatmulAlgo_t],
        n: usize,
        k: usize,
        y_f32: bool,
        w: &DTensor,
    ) -> Result<usize> {
        let rows: &[usize] = if y_f32 { &DET_ROWS[..1] } else { &DET_ROWS };
        let ydt = if y_f32 { DType::F32 } else { DType::Bf16 };
        // times[c][r]
        let mut times = vec![vec![f64::INFINITY; rows.len()]; cands.len()];
        for (ri, &t) in rows.iter().enumerate() {
            let x = self.ctx.alloc(DType::Bf16, &[t, k])?;
            let y = self.ctx.alloc(ydt, &[t, n])?;
            self.ctx.memset(&x, 0)?;
            let mut plan = Plan {
                d: Descs::new(t, n, k, y_f32)?,
                algo: cands[0],
            };
            for (ci, c) in cands.iter().enumerate() {
                plan.algo = *c;
                times[ci][ri] = self.time(&plan, &x, w, &y).unwrap_or(f64::INFINITY);
            }
            self.ctx.synchronize()?;
        }
        let best: Vec<f64> = (0..rows.len())
            .map(|r| times.iter().map(|t| t[r]).fold(f64::INFINITY, f64::min))
            .collect();
        let score = |c: usize| {
            (0..rows.len())
                .map(|r| times[c][r] / best[r])
                .fold(0.0f64, f64::max)
        };
        let pick = (0..cands.len())
            .min_by(|&i, &j| score(i).total_cmp(&score(j)))
            .unwrap_or(0);
        let pick = if score(pick).is_finite() { pick } else { 0 };
        self.tuned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Tuned {
                shape: (0, n, k),
                candidates: cands.len(),
                heuristic_us: times[0][0],
                best_us: times[pick][0],
            });
        Ok(pick)
    }

    /// Batch-invariant y = x * w^T: the weight shape's one configuration whatever the row count
    /// (shapes checked by the caller). `Ok(false)`: the shape's choice is the GEMV fallback and
    /// nothing was launched (the caller runs it). Fails, naming the shape, if cuBLASLt does not
    /// accept the pinned configuration at this row count, rather than computing with another.
    pub fn linear_det(&self, x: &DTensor, w: &DTensor, y: &DTensor) -> Result<bool> {
        let (t, k) = (x.shape()[0], x.shape()[1]);
        let n = w.shape()[0];
        let y_f32 = y.dtype() == DType::F32;
        self.ctx.cuda().bind_to_thread()?;
        let key = (t, n, k, y_f32);
        let mut plans = self.det_plans.lock().unwrap_or_else(|e| e.into_inner());
        let p = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let algo = match self.det_choice(n, k, y_f32, w)? {
                    DetChoice::Lt(a) => a,
                    DetChoice::Gemv => return Ok(false),
                };
                let d = Descs::new(t, n, k, y_f32)?;
                match self.check(&d, &algo) {
                    Ok(ws) if ws <= WORKSPACE => {}
                    other => {
                        return Err(CudaError::Shape(format!(
                            "batch-invariant GEMM: the configuration pinned for out {n}, in {k} is \
                             not usable at {t} rows (cublasLtMatmulAlgoCheck: {})",
                            match other {
                                Ok(ws) => format!("needs {ws} bytes of workspace"),
                                Err(st) => format!("{st:?}"),
                            }
                        )))
                    }
                }
                e.insert(Plan { d, algo })
            }
        };
        self.run(p, x, w, y)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_distinguishes_configurations() {
        // SAFETY: all-zero is a valid bit pattern for the opaque struct.
        let mut a: sys::cublasLtMatmulAlgo_t = unsafe { std::mem::zeroed() };
        let z = fingerprint(&a);
        assert_eq!(z, fingerprint(&a));
        a.data[3] = 7;
        assert_ne!(fingerprint(&a), z);
        assert!(fingerprint(&a) < (1usize << 63));
        // It round-trips through the table's decimal field.
        assert_eq!(
            format!("{}", fingerprint(&a)).parse::<usize>().unwrap(),
            fingerprint(&a)
        );
    }

    #[test]
    fn probe_values_are_deterministic_and_in_range() {
        let a = probe_values(1000, 5);
        assert_eq!(a, probe_values(1000, 5));
        assert_ne!(a, probe_values(1000, 6));
        assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}
