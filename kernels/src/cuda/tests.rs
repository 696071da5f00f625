//! Tests that run everywhere (CI has no GPU): backend selection without a driver, the NVRTC
//! programs compiled where libnvrtc exists (a syntax check), the cache key, and the reference
//! ops' own invariants. The GPU comparison lives in `strata gpu check` (scripts/gpu-check.sh).

use super::nvrtc::{self, Program};
use super::select::{select, BackendKind};
use crate::reference as r;

#[test]
fn selection_reports_a_backend_without_panicking() {
    let (kind, ctx) = select(0, false);
    match kind {
        BackendKind::Cpu { reason } => {
            assert!(ctx.is_none());
            assert!(!reason.is_empty());
            println!("backend: CPU ({reason})");
        }
        BackendKind::Cuda { name, .. } => {
            assert!(ctx.is_some());
            println!("backend: CUDA on {name}");
        }
    }
    let (forced, ctx) = select(0, true);
    assert!(ctx.is_none());
    assert_eq!(
        forced,
        BackendKind::Cpu {
            reason: "CPU requested".into()
        }
    );
}

#[test]
fn absurd_gpu_id_falls_back_to_cpu() {
    let (kind, ctx) = select(10_000, false);
    assert!(ctx.is_none());
    assert!(matches!(kind, BackendKind::Cpu { .. }));
}

/// Every program compiles for sm_90; the attention one also for sm_80 (the tensor-core prefill
/// kernels' oldest target). ptxas' report (through NVRTC) must show the FA2-style prefill kernels
/// and their timed alternatives within 255 registers and without spills (the sampler's kernels
/// within their 1024-thread bound); printed so a CI log shows the register counts.
#[test]
fn nvrtc_programs_compile_where_nvrtc_exists() {
    if !nvrtc::nvrtc_present() {
        println!("SKIPPED: libnvrtc not found, .cu sources not compiled here");
        return;
    }
    for p in Program::ALL {
        if matches!(
            p,
            Program::Attention | Program::AttentionWg | Program::GemmWg
        ) {
            continue;
        }
        let cubin = nvrtc::compile(p, "sm_90").unwrap_or_else(|e| panic!("{e}"));
        assert!(cubin.len() > 100, "{}: empty cubin", p.name());
    }
    // Kernel `name`'s ptxas report in `log` shows no spills (printed).
    let no_spills = |arch: &str, log: &str, name: &str| {
        let at = log
            .find(&format!("'{name}'"))
            .unwrap_or_else(|| panic!("{arch}: no ptxas report for {name}:\n{log}"));
        let report: String = log[at..].lines().take(4).collect::<Vec<_>>().join(" | ");
        println!("{arch} {report}");
        assert!(
            report.contains(" 0 bytes spill stores") && report.contains(" 0 bytes spill loads"),
            "{arch} {name} spills: {report}"
        );
    };
    for arch in ["sm_80", "sm_90"] {
        let (cubin, log) = nvrtc::compile_with(Program::Attention, arch, &["--ptxas-options=-v"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(cubin.len() > 100, "{arch}: empty attention cubin");
        for name in super::attention::FA2_NAMES {
            no_spills(arch, &log, name);
        }
        // The register cluster forms (unsplit and split by query heads) hold iterations of K/V
        // rows in registers.
        if arch == "sm_90" {
            for name in super::attention::DECODE2R_NAMES
                .iter()
                .chain(&super::attention::DECODE2RH_NAMES)
            {
                no_spills(arch, &log, name);
            }
        }
    }
    // The sampler: one 1024-thread block per row (at most 64 registers); logprob_rows keeps
    // each thread's best LP_TOP candidates in registers.
    let (_, log) = nvrtc::compile_with(Program::Sampling, "sm_90", &["--ptxas-options=-v"])
        .unwrap_or_else(|e| panic!("{e}"));
    for name in ["logprob_rows", "sample_rows", "argmax_rows"] {
        no_spills("sm_90", &log, name);
    }
    // The wgmma prefill kernel: sm_90a only, no spills, and no wgmma ptxas had to serialize
    // (its warning names the kernel).
    let (cubin, log) = nvrtc::compile_with(Program::AttentionWg, "sm_90a", &["--ptxas-options=-v"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(cubin.len() > 100, "sm_90a: empty wgmma attention cubin");
    for name in super::attention::WG_NAMES {
        no_spills("sm_90a", &log, name);
    }
    assert!(!log.contains("serialized"), "wgmma serialized:\n{log}");
    // The wgmma + TMA gate_up GEMM: the same conditions.
    let (cubin, log) = nvrtc::compile_with(Program::GemmWg, "sm_90a", &["--ptxas-options=-v"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(cubin.len() > 100, "sm_90a: empty wgmma GEMM cubin");
    no_spills("sm_90a", &log, super::gemm_wg::GATE_NAME);
    assert!(!log.contains("serialized"), "wgmma serialized:\n{log}");
}

/// The launcher's shared-memory size for the FA2 prefill kernels matches the tile shapes the
/// kernels are instantiated with (FA_KERNEL(HD, KT, KS, NST, MINB) lines of attention_prefill.cu).
#[test]
fn fa2_launch_shared_memory_matches_the_kernel_instantiations() {
    let src = include_str!("../../cuda/attention_prefill.cu");
    let mut seen = 0;
    for line in src.lines().filter(|l| l.starts_with("FA_KERNEL(")) {
        let nums: Vec<usize> = line["FA_KERNEL(".len()..line.len() - 1]
            .split(',')
            .map(|v| v.trim().parse().expect("numeric FA_KERNEL arguments"))
            .collect();
        let (hd, kt, ks, nst) = (nums[0], nums[1], nums[2], nums[3]);
        assert!(
            kt % ks == 0 && ks % 16 == 0,
            "d{hd}: compute step {ks} of a {kt}-key tile"
        );
        assert_eq!(super::attention::fa2_tile(hd), (kt, nst), "d{hd}");
        assert_eq!(
            super::attention::fa2_smem(hd) as usize,
            (128 + 2 * nst * kt) * (hd + 8) * 2,
            "d{hd}"
        );
        assert!(
            super::attention::fa2_smem(hd) <= 227 * 1024,
            "d{hd}: above sm_90's limit"
        );
        seen += 1;
    }
    assert_eq!(seen, super::attention::FA2_NAMES.len());
}

/// The same for the decode MMA kernels (DM_KERNEL(HD, KT, NST, MINB) lines of
/// attention_decode_mma.cu), whose warps' shared-memory merge must fit in the stages.
#[test]
fn dmma_launch_shared_memory_matches_the_kernel_instantiations() {
    let src = include_str!("../../cuda/attention_decode_mma.cu");
    let mut seen = 0;
    for line in src.lines().filter(|l| l.starts_with("DM_KERNEL(")) {
        let nums: Vec<usize> = line["DM_KERNEL(".len()..line.len() - 1]
            .split(',')
            .map(|v| v.trim().parse().expect("numeric DM_KERNEL arguments"))
            .collect();
        let (hd, kt, nst, minb) = (nums[0], nums[1], nums[2], nums[3]);
        let smem = super::attention::dmma_smem(hd) as usize;
        assert_eq!(smem, 2 * nst * kt * (hd + 8) * 2, "d{hd}");
        // The merge: (max, sum) of 16 rows and 16 rows of head_dim f32 per warp (4 warps).
        assert!(
            (4 * 16 * 2 + 4 * 16 * hd) * 4 <= smem,
            "d{hd}: merge outgrows the stages"
        );
        assert!(
            minb * smem <= 227 * 1024,
            "d{hd}: {minb} blocks per SM do not fit"
        );
        assert_eq!(kt % 64, 0, "d{hd}: 16 keys per warp and step");
        seen += 1;
    }
    assert_eq!(seen, super::attention::DMMA_NAMES.len());
}

#[test]
fn decode_chain_defines_are_on_unless_the_environment_turns_them_off() {
    // The GEMVs' evict-first weight loads and the early PDL trigger are compiled in by default;
    // `NAME=0` in the environment leaves one out (an A/B switch), and the cubin cache keys on it.
    let o = nvrtc::options("sm_90");
    for k in ["STRATA_PDL_EARLY", "STRATA_W_EVICT_FIRST"] {
        let off = std::env::var(k).is_ok_and(|v| v == "0");
        assert_eq!(o.contains(&format!("-D{k}")), !off, "{k}: {o:?}");
    }
}

#[test]
fn cache_key_depends_on_every_input() {
    let a = nvrtc::cache_key(Program::Attention, "sm_90", (13, 0), 13000);
    assert_eq!(
        a,
        nvrtc::cache_key(Program::Attention, "sm_90", (13, 0), 13000)
    );
    assert_ne!(
        a,
        nvrtc::cache_key(Program::Attention, "sm_80", (13, 0), 13000)
    );
    assert_ne!(
        a,
        nvrtc::cache_key(Program::Attention, "sm_90", (13, 1), 13000)
    );
    assert_ne!(
        a,
        nvrtc::cache_key(Program::Attention, "sm_90", (13, 0), 13010)
    );
    assert_ne!(
        a,
        nvrtc::cache_key(Program::Sampling, "sm_90", (13, 0), 13000)
    );
}

#[test]
fn reference_rmsnorm_normalises() {
    let x = vec![3.0, 4.0, 0.0, 0.0];
    let w = vec![1.0; 4];
    let y = r::rmsnorm(&x, None, &w, 0.0);
    let ms: f32 = y.iter().map(|v| v * v).sum::<f32>() / 4.0;
    assert!((ms - 1.0).abs() < 1e-5);
    let mut res = vec![1.0, 1.0, 1.0, 1.0];
    let _ = r::rmsnorm(&x, Some(&mut res), &w, 0.0);
    assert_eq!(res, vec![4.0, 5.0, 1.0, 1.0]);
}

#[test]
fn reference_rope_preserves_norm_and_scaling_slows_low_frequencies() {
    let inv = r::rope_inv_freq(8, 10000.0, None);
    let mut x: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
    let n0: f32 = x.iter().map(|v| v * v).sum();
    r::rope(&mut x, 8, 0, 1, 8, &[17], &inv);
    let n1: f32 = x.iter().map(|v| v * v).sum();
    assert!((n0 - n1).abs() < 1e-3);
    let plain = r::rope_inv_freq(128, 500000.0, None);
    let scaled = r::rope_inv_freq(128, 500000.0, Some(r::Llama3Scaling::default()));
    assert_eq!(plain[0], scaled[0]);
    assert!((scaled[63] - plain[63] / 8.0).abs() <= plain[63] * 1e-6);
}

#[test]
fn reference_linear_and_silu() {
    let x = vec![1.0, 2.0, 3.0, 4.0];
    let w = vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
    assert_eq!(r::linear(&x, &w, 2), vec![1.0, 2.0, 3.0, 3.0, 4.0, 7.0]);
    let y = r::silu_mul(&[0.0, 2.0], 1);
    assert_eq!(y, vec![0.0]);
}

#[test]
fn reference_attention_single_key_returns_value() {
    let q = vec![1.0; 32];
    let k = vec![0.5; 32];
    let v: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let seqs = [r::RefSeq {
        q_len: 1,
        kv_len: 1,
        pages: vec![0],
    }];
    let out = r::paged_attention(&q, &k, &v, &seqs, 1, 1, 32, 1, 1.0);
    assert_eq!(out, v);
}

#[test]
fn kv_budget_honours_mem_fraction() {
    use super::info::kv_budget;
    let gib = 1usize << 30;
    // 80 GiB card, 20 GiB already used by weights, 0.9 static fraction -> 52 GiB for KV.
    assert_eq!(kv_budget(80 * gib, 60 * gib, 0.9), 52 * gib);
    assert_eq!(kv_budget(80 * gib, 10 * gib, 0.5), 0);
    assert_eq!(kv_budget(80 * gib, 80 * gib, 2.0), 80 * gib);
}

#[test]
fn page_layout_sizes() {
    let l = super::PageLayout {
        layers: 32,
        pool_pages: 100,
        chunk_bytes: 16 * 8 * 128 * 2,
    };
    assert_eq!(l.host_page_bytes(), 32 * 2 * 32768);
    assert_eq!(l.pool_bytes(), 100 * l.host_page_bytes());
}

/// On a GPU machine this compares one op with the reference; elsewhere it says it skipped.
/// Never the proof: that is `strata gpu check` (docs/perf.md, GPU section).
#[test]
fn gpu_rmsnorm_matches_reference_when_a_gpu_exists() {
    let (kind, ctx) = select(0, false);
    let Some(ctx) = ctx else {
        println!("SKIPPED GPU part: {kind:?}");
        return;
    };
    let ops = super::CudaOps::new(ctx.clone()).expect("kernels");
    let (t, h) = (3, 1000);
    let x: Vec<f32> = (0..t * h)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let w: Vec<f32> = (0..h).map(|i| 0.5 + (i % 7) as f32 / 7.0).collect();
    let (x, w) = (r::round_bf16(&x), r::round_bf16(&w));
    let gx = ctx.upload_bf16(&[t, h], &x).unwrap();
    let gw = ctx.upload_bf16(&[h], &w).unwrap();
    let out = ctx.alloc(super::DType::Bf16, &[t, h]).unwrap();
    ops.rmsnorm(&gx, None, &gw, &out, 1e-5).unwrap();
    let got = ctx.download_f32(&out).unwrap();
    let err = r::rel_err(&got, &r::rmsnorm(&x, None, &w, 1e-5));
    assert!(err < 1e-2, "rel err {err}");
}

/// `CudaBackend` against `CpuBackend` on a linear (k not a multiple of 32) and a paged attention
/// call; elsewhere it says it skipped. The end-to-end proof is scripts/gpu-serve-check.sh.
#[test]
fn cuda_backend_matches_cpu_backend_when_a_gpu_exists() {
    use crate::{AttnSeq, AttnShape, Backend, CpuBackend};
    let (kind, ctx) = select(0, false);
    let Some(ctx) = ctx else {
        println!("SKIPPED GPU part: {kind:?}");
        return;
    };
    let g = super::CudaBackend::new(ctx).expect("kernels");
    let c = CpuBackend;
    let v = |n: usize, s: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * s % 113) as f32 - 56.0) / 40.0)
            .collect()
    };
    let (rows, k, n) = (5, 70, 37);
    let (x, w) = (v(rows * k, 7919), v(n * k, 104729));
    let mut want = c.alloc(rows * n).unwrap();
    c.linear(&x, rows, k, &w, n, None, &mut want).unwrap();
    let (gx, gw) = (g.upload(&x).unwrap(), g.upload(&w).unwrap());
    let mut go = g.alloc(rows * n).unwrap();
    g.linear(&gx, rows, k, &gw, n, None, &mut go).unwrap();
    let mut got = vec![0f32; rows * n];
    g.download(&go, &mut got).unwrap();
    assert_eq!(got, want, "linear must match the CPU bitwise");

    let shape = AttnShape {
        heads: 4,
        kv_heads: 2,
        head_dim: 40,
        page_size: 4,
        scale: 0.2,
    };
    let pages = [3u32, 0, 2];
    let seqs = [AttnSeq {
        q_start: 0,
        q_len: 3,
        kv_len: 10,
        pages: &pages,
    }];
    let (q, kc, vc) = (v(3 * 160, 31), v(16 * 80, 17), v(16 * 80, 13));
    let mut want = vec![0f32; 3 * 160];
    c.attention(&q, &kc, &vc, &seqs, shape, &mut want).unwrap();
    let (gq, gk, gv) = (
        g.upload(&q).unwrap(),
        g.upload(&kc).unwrap(),
        g.upload(&vc).unwrap(),
    );
    let mut go = g.alloc(3 * 160).unwrap();
    g.attention(&gq, &gk, &gv, &seqs, shape, &mut go).unwrap();
    let mut got = vec![0f32; 3 * 160];
    g.download(&go, &mut got).unwrap();
    let err = r::rel_err(&got, &want);
    assert!(err < 1e-5, "attention rel err {err}");
}

/// The sampling launcher's checks of a packed upload (the kernels index with it unchecked): a
/// packing may cover fewer rows than the logits (a padded graph bucket), never more; entries,
/// fixed tokens and draws must be in range.
#[test]
fn sampling_launcher_validates_packed_rows() {
    use super::sampling::validate;
    use crate::sample_rows::{pack_rows, RowMode, RowSpec, ROW_WORDS};
    use crate::sampling::SampleParams;
    let p = SampleParams {
        temperature: 0.7,
        top_k: None,
        top_p: 1.0,
        min_p: 0.0,
    };
    let mut s = RowSpec::plain(RowMode::Sample, p, 0.5);
    s.banned = &[3];
    let rows = [s, RowSpec::plain(RowMode::Fixed(9), p, 0.0)];
    let packed = pack_rows(&rows, 10);
    assert!(validate(&packed, 2, 10).is_ok());
    assert!(validate(&packed, 4, 10).is_ok(), "padded bucket");
    assert!(
        validate(&packed, 1, 10).is_err(),
        "more packed rows than logits rows"
    );
    assert!(
        validate(&packed, 2, 9).is_err(),
        "fixed token 9 outside a vocabulary of 9"
    );
    let mut bad = packed.clone();
    let at = bad.entries_at();
    bad.words[at] = 10;
    assert!(
        validate(&bad, 2, 10).is_err(),
        "entry token outside the vocabulary"
    );
    let mut bad = packed.clone();
    bad.words[12] = 0;
    bad.words[13] = (1.0f64.to_bits() >> 32) as u32 as i32;
    assert!(validate(&bad, 2, 10).is_err(), "draw of 1.0");
    let mut bad = packed;
    bad.words[ROW_WORDS + 9] = 5;
    assert!(validate(&bad, 2, 10).is_err(), "entries past the end");
    // Allow masks: in range, or refused.
    let bits = [0b1010_0110u32];
    let mut m = RowSpec::plain(RowMode::Greedy, p, 0.0);
    m.allow = Some(crate::sample_rows::Allow {
        bits: &bits,
        also: &[9],
    });
    let packed = pack_rows(&[m.clone(), m], 40);
    assert_eq!(packed.masks, 2);
    assert!(validate(&packed, 2, 40).is_ok());
    let mut bad = packed.clone();
    bad.words[17] += 1;
    assert!(validate(&bad, 2, 40).is_err(), "mask offset not on a mask");
    let mut bad = packed.clone();
    bad.words[ROW_WORDS + 17] = -2;
    assert!(validate(&bad, 2, 40).is_err(), "bad mask word");
    let mut bad = packed;
    bad.words.pop();
    assert!(validate(&bad, 2, 40).is_err(), "mask cut short");
}
