//! `strata gpu check --only attention`: every attention kernel and form against the f64
//! reference (`strata_kernels::reference::paged_attention_rows`) within the bf16 bound:
//! prompts, prefix extends, decodes (split, cluster in its three forms, the timed decode2
//! alternatives, on the tensor-core kernels), GQA 1-16, head_dim 32-128, pages 1-64, 8K rows;
//! Q rotated in the kernel bit for bit against `rope` first, and the wgmma producer forms bit for
//! bit against its cp.async form, the head-split register cluster form bit for bit against the
//! unsplit one. `STRATA_CHECK_CASES=p1,p2` runs the cases whose names start
//! with one of the prefixes (each named on stderr as it starts: a hung kernel names its case).

use strata_kernels::cuda::{AttnKernel, AttnSeq, AttnShape, CudaOps, WgForm, DECODE2_VARIANTS};
use strata_kernels::reference as r;

use super::check::{shuffle, Checker};
use super::check_ops::{bf16_out, bit_diffs, BF16_TOL};

/// A case: name, heads, kv heads, head_dim, page, [(q_len, kv_len)] per sequence, forced splits.
type CaseOf<N> = (
    N,
    usize,
    usize,
    usize,
    usize,
    Vec<(usize, usize)>,
    Option<usize>,
);
type Case = CaseOf<String>;

pub fn attention(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let only: Option<Vec<String>> = std::env::var("STRATA_CHECK_CASES")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    for case in cases(ops) {
        if let Some(only) = &only {
            if !only.iter().any(|p| case.0.starts_with(p.as_str())) {
                continue;
            }
            let (name, nh, nkv, _, page, lens, _) = &case;
            eprintln!("attention case {name} h{nh}/{nkv} p{page} {lens:?}");
        }
        check_case(ops, ck, case)?;
    }
    Ok(())
}

/// Every case, in order: the kernels' own cases, the timed decode2 alternatives, the cluster
/// cases in both forms, then the head_dim-128 ones again on each wgmma form (compute 9.0).
fn cases(ops: &CudaOps) -> Vec<Case> {
    type Named = CaseOf<&'static str>;
    // (name, (heads, kv heads), head_dim, page, [(q_len, kv_len)], forced splits)
    let case = |name: &'static str,
                (nh, nkv): (usize, usize),
                hd: usize,
                page: usize,
                lens: &[(usize, usize)],
                splits: Option<usize>|
     -> Named { (name, nh, nkv, hd, page, lens.to_vec(), splits) };
    #[rustfmt::skip]
    let cases: Vec<Named> = vec![
        case("prefill", (8, 2), 64, 16, &[(37, 37)], None),
        case("prefill+prefix", (32, 8), 128, 16, &[(20, 100), (5, 5), (1, 300)], None),
        case("decode", (32, 8), 128, 16, &[(1, 1), (1, 300), (1, 1000)], None),
        case("decode nosplit", (32, 8), 128, 16, &[(1, 1000), (1, 33)], Some(1)),
        case("decode mha", (4, 4), 32, 7, &[(1, 77), (1, 2)], None),
        case("decode general", (32, 8), 128, 16, &[(1, 1000), (1, 33), (1, 1)], None),
        case("decode g8", (16, 2), 64, 16, &[(1, 500), (1, 129)], None),
        case("decode v1", (32, 8), 128, 16, &[(1, 1000), (1, 33), (1, 1)], None),
        case("decode g1", (8, 8), 128, 16, &[(1, 700), (1, 5)], None),
        case("decode g2 d64", (8, 4), 64, 16, &[(1, 300), (1, 64)], Some(3)),
        case("prefill long", (32, 8), 128, 64, &[(300, 1500)], None),
        case("prefill split", (32, 8), 128, 16, &[(64, 600), (7, 40)], Some(4)),
        case("prefill g8 d64", (16, 2), 64, 16, &[(50, 130), (3, 3)], None),
        case("prefill g1", (8, 8), 128, 16, &[(70, 70)], None),
        // GQA group 8 at head_dim 128 on 7-token pages, a prompt and an extend over a prefix.
        case("prefill g8 d128 p7", (16, 2), 128, 7, &[(300, 300), (45, 190)], None),
        case("prefill gen long", (32, 8), 128, 64, &[(300, 1500)], None),
        // The first tensor-core kernel (STRATA_ATTN_MMA=1) on the shapes the FA2 one runs.
        case("prefill mma long", (32, 8), 128, 64, &[(300, 1500)], None),
        case("prefill mma split", (32, 8), 128, 16, &[(64, 600), (7, 40)], Some(4)),
        case("prefill mma g8 d64", (16, 2), 64, 16, &[(50, 130), (3, 3)], None),
        // Long prompts on the Llama-3.1-8B head shape, page sizes 16 and 64 (sampled rows).
        case("prefill 8k", (32, 8), 128, 16, &[(8192, 8192)], None),
        case("prefill 8k p64", (32, 8), 128, 64, &[(8192, 8192)], None),
        case("prefill mma 8k", (32, 8), 128, 16, &[(8192, 8192)], None),
        // One-token pages (SGLang's default; the wgmma kernel's TMA forms fall back to its
        // cp.async producer form there), with a cached prefix.
        case("prefill p1", (32, 8), 128, 1, &[(300, 300), (45, 190)], None),
        // Chunked prefill: new tokens over a cached prefix, two sequences, odd lengths.
        case("extend 8k", (32, 8), 128, 16, &[(2048, 8192), (777, 3001)], None),
        case("extend 8k split", (32, 8), 128, 64, &[(1000, 8191)], Some(3)),
        case("prefill g8 d64 4k", (16, 2), 64, 64, &[(4000, 4000)], None),
        case("prefill g1 d64 p7", (8, 8), 64, 7, &[(333, 500), (129, 129)], None),
        case("prefill g4 long", (8, 2), 128, 16, &[(2500, 2500)], Some(1)),
        // GQA group 16 (8 tokens per FA2 tile) at head_dim 128 on 7-token pages, with a cached
        // prefix so tiles start mid-page.
        case("prefill g16 d128 p7", (32, 2), 128, 7, &[(200, 260), (33, 33)], None),
    ];
    // Decode batches on the tensor-core prefill kernels (`set_decode_attn`: the GQA group's heads
    // of one token as a tile's MMA rows): FA2 here, wgmma below; GQA 4 and 1, head_dim 128 and 64,
    // odd pages, forced splits, 40 rows.
    #[rustfmt::skip]
    let on_mma: Vec<Named> = vec![
        case("decode on-mma", (32, 8), 128, 16, &[(1, 1000), (1, 33), (1, 1), (1, 4099)], None),
        case("decode on-mma", (32, 8), 64, 16, &[(1, 1024), (1, 17), (1, 5)], None),
        case("decode on-mma", (8, 8), 128, 7, &[(1, 700), (1, 5)], None),
        case("decode on-mma", (32, 8), 128, 16, &[(1, 3000)], Some(4)),
        case("decode on-mma", (32, 8), 128, 16, &(0..40).map(|i| (1, 1 + 97 * i)).collect::<Vec<_>>(), None),
    ];
    // The same batches on the tensor-core decode kernel (`paged_attention_dmma_*`, the default
    // for them), and GQA 16, 2 and 1 (its 16 MMA rows full, nearly empty, one row).
    #[rustfmt::skip]
    let dmma: Vec<Named> = on_mma
        .iter()
        .map(|c| ("decode dmma", c.1, c.2, c.3, c.4, c.5.clone(), c.6))
        .chain([
            case("decode dmma", (32, 2), 128, 16, &[(1, 777), (1, 64), (1, 2)], None),
            case("decode dmma", (16, 8), 64, 16, &[(1, 300), (1, 9)], Some(3)),
            case("decode dmma", (8, 8), 128, 16, &[(1, 129), (1, 1)], None),
        ])
        .collect();
    let cases: Vec<Named> = cases.into_iter().chain(on_mma).chain(dmma).collect();
    // Every timed decode2 alternative, on the Llama-3-8B head shape it is built for.
    let variants = (0..DECODE2_VARIANTS.len()).map(|i| {
        let lens = vec![(1, 1000), (1, 33), (1, 1)];
        (format!("decode var{i}"), 32, 8, 128, 16, lens, None)
    });
    // The wgmma prefill kernel (compute 9.0, head_dim 128) on every head_dim-128 case the FA2
    // kernel runs: prompts, prefix extends, forced splits, GQA 1/4/8/16, pages 7/16/64, 8K.
    let wg = ops.has_wgmma_prefill();
    if !wg {
        println!("attention: no wgmma prefill kernel on this device (compute 9.0 only); its cases skipped");
    }
    let wg_cases: Vec<Named> = cases
        .iter()
        .filter(|c| {
            let fa2 = !c.0.starts_with("prefill gen") && !c.0.starts_with("prefill mma");
            let prefill =
                c.5.iter().any(|&(q, _)| q > 1) || c.1 / c.2 > 8 || c.0.contains("on-mma");
            wg && fa2 && prefill && c.3 == 128
        })
        .cloned()
        .collect();
    // Each again on the wgmma kernel's forms: K/V by cp.async, Q from shared memory, K/V by TMA
    // from a producer warpgroup, that in clusters of 2 (the default), and by cp.async from a
    // producer warpgroup (what the TMA forms plan at other page sizes).
    let wg_cases: Vec<_> = ["wg", "wgs", "wgp", "wgc", "wgq"]
        .iter()
        .flat_map(|k| {
            wg_cases
                .iter()
                .map(move |(n, nh, nkv, hd, page, lens, sp)| {
                    (format!("{k} {n}"), *nh, *nkv, *hd, *page, lens.clone(), *sp)
                })
        })
        .collect();
    // The decode2 cluster form at every cluster size, on the 1B and 8B head shapes, GQA 1/2/8,
    // rows shorter than one tile per block (empty blocks), odd pages.
    #[rustfmt::skip]
    let clusters: Vec<Named> = vec![
        case("decode cl2", (32, 8), 128, 16, &[(1, 1), (1, 300), (1, 1000)], None),
        case("decode cl4", (32, 8), 64, 16, &[(1, 1024), (1, 17), (1, 5)], None),
        case("decode cl8", (16, 2), 64, 16, &[(1, 500), (1, 129)], None),
        case("decode cl16", (32, 8), 64, 16, &[(1, 1024)], None),
        case("decode cl16", (32, 8), 128, 16, &[(1, 1000), (1, 16), (1, 1)], None),
        case("decode cl8", (8, 8), 128, 7, &[(1, 700), (1, 5)], None),
        case("decode cl16", (64, 8), 128, 16, &[(1, 333)], None),
        case("decode cl4", (8, 4), 64, 16, &[(1, 300), (1, 64)], None),
        case("decode cl16", (8, 4), 64, 16, &[(1, 4099)], None),
        // Served 1K-in rows past 1024 keys on the 1B shape: 80-key shares, three iterations.
        case("decode cl16", (32, 8), 64, 16, &[(1, 1152), (1, 1280)], None),
    ];
    cases
        .into_iter()
        .map(|(n, nh, nkv, hd, page, lens, sp)| (n.to_string(), nh, nkv, hd, page, lens, sp))
        .chain(variants)
        .chain(
            // Each cluster case in every form: "decode cl" the cp.async tiles, "decode rcl"
            // the registers, "decode hcl" the registers split by query heads (even groups).
            clusters
                .into_iter()
                .flat_map(|(n, nh, nkv, hd, page, lens, sp)| {
                    let r = n.replacen("decode cl", "decode rcl", 1);
                    let h = n.replacen("decode cl", "decode hcl", 1);
                    let even = matches!(nh / nkv, 2 | 4 | 8);
                    [
                        Some((n.to_string(), nh, nkv, hd, page, lens.clone(), sp)),
                        Some((r, nh, nkv, hd, page, lens.clone(), sp)),
                        even.then_some((h, nh, nkv, hd, page, lens, sp)),
                    ]
                    .into_iter()
                    .flatten()
                }),
        )
        .chain(wg_cases)
        .collect()
}

/// One case: the plan its name asks for (checked to be the planned kernel and form), the output
/// against the reference, and the bit-for-bit side comparisons where they apply.
fn check_case(
    ops: &CudaOps,
    ck: &mut Checker,
    (name, nh, nkv, hd, page, lens, splits): Case,
) -> anyhow::Result<()> {
    let c = ops.context();
    let pages_needed: usize = lens.iter().map(|&(_, kv)| kv.div_ceil(page)).sum();
    let pool_pages = pages_needed + 5;
    let mut ids: Vec<i32> = (0..pool_pages as i32).collect();
    shuffle(&mut ck.rng, &mut ids);
    let mut next = 0;
    let seqs: Vec<AttnSeq> = lens
        .iter()
        .map(|&(q, kv)| {
            let n = kv.div_ceil(page);
            let pages = ids[next..next + n].to_vec();
            next += n;
            AttnSeq {
                q_len: q,
                kv_len: kv,
                pages,
            }
        })
        .collect();
    let rows: usize = lens.iter().map(|&(q, _)| q).sum();
    let kvw = nkv * hd;
    let slots = pool_pages * page;
    let q = ck.bf16_vec(rows * nh * hd, 1.0);
    let k = ck.bf16_vec(slots * kvw, 1.0);
    let v = ck.bf16_vec(slots * kvw, 1.0);
    let shape = AttnShape {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        page_size: page,
        pool_pages,
    };
    // "prefill gen" cases plan the f32 kernel, "prefill mma" ones the first tensor-core
    // kernel, "wg" ones the wgmma kernel; the others the FA2-style kernel.
    use strata_kernels::cuda::{set_prefill_kernel, PrefillKernel};
    // (wg cases are named "<form's STRATA_PREFILL_ATTN name> <case>")
    let wg_kernel = name
        .starts_with("wg")
        .then(|| name.split(' ').next().and_then(PrefillKernel::from_name))
        .flatten();
    let wg_case = wg_kernel.is_some();
    let prefill_kernel = if let Some(k) = wg_kernel {
        k
    } else if name.starts_with("prefill gen") {
        PrefillKernel::General
    } else if name.starts_with("prefill mma") {
        PrefillKernel::Mma
    } else {
        PrefillKernel::Fa2
    };
    let dmma = name.contains("dmma");
    let on_mma = name.contains("on-mma") || dmma;
    // A plan with the case's kernel choices forced (back to the defaults after).
    let plan_as = |k: PrefillKernel, splits: Option<usize>| {
        set_prefill_kernel(Some(k));
        strata_kernels::cuda::set_decode_attn(Some(on_mma));
        strata_kernels::cuda::set_decode_dmma(Some(dmma));
        let plan = ops.attention_plan(shape, &seqs, splits);
        strata_kernels::cuda::set_decode_attn(None);
        strata_kernels::cuda::set_decode_dmma(None);
        set_prefill_kernel(None);
        plan
    };
    let mut plan = plan_as(prefill_kernel, splits)?;
    let prefill = lens.iter().any(|&(q, _)| q > 1) || nh / nkv > 8 || on_mma;
    let fa2_case = prefill && !name.starts_with("prefill gen") && !name.starts_with("prefill mma");
    let want_kernel = if dmma {
        AttnKernel::DecodeMma
    } else if wg_case {
        AttnKernel::PrefillWg
    } else {
        AttnKernel::PrefillFa2
    };
    if fa2_case && matches!(hd, 64 | 128) && plan.kernel() != want_kernel {
        ck.rel(
            "attention",
            format!(
                "{name}: {want_kernel:?} prefill kernel not planned ({:?})",
                plan.kernel()
            ),
            f64::INFINITY,
            BF16_TOL,
        );
    }
    // The asked form where the page size and group take it, else its fallback
    // (WgForm::planned: the TMA forms the cp.async producer, clusters the producer form).
    let want_form = wg_kernel
        .and_then(WgForm::of)
        .map(|f| f.planned(page, nh / nkv));
    if let Some(f) = want_form {
        if plan.kernel() == AttnKernel::PrefillWg && plan.wg_form() != Some(f) {
            ck.rel(
                "attention",
                format!("{name}: {f:?} form not planned ({:?})", plan.wg_form()),
                f64::INFINITY,
                BF16_TOL,
            );
        }
    }
    if name == "decode general" {
        plan.force_general_kernel();
    }
    if name == "decode v1" {
        plan.force_decode_v1();
    }
    let mut variant = "";
    let halves = name.starts_with("decode hcl");
    let regs = halves || name.starts_with("decode rcl");
    if let Some(n) = name
        .strip_prefix("decode cl")
        .or(name.strip_prefix("decode rcl"))
        .or(name.strip_prefix("decode hcl"))
    {
        let n: usize = n.parse()?;
        plan.set_cluster_regs(regs);
        // (Each name its form, whatever STRATA_DEC2R_HALVES says.)
        anyhow::ensure!(plan.set_halves(halves), "{name}: no head-split kernel");
        if !plan.set_cluster(n) {
            // (16 needs the device's non-portable cluster size; sm_80 has no clusters.)
            println!("  attention {name}: cluster of {n} not available here, skipped");
            return Ok(());
        }
    }
    if let Some(i) = name.strip_prefix("decode var") {
        let i: usize = i.parse()?;
        anyhow::ensure!(plan.set_decode2_variant(i), "variant {i} does not fit");
        variant = DECODE2_VARIANTS[i];
    }
    let gq = c.upload_bf16(&[rows, nh * hd], &q)?;
    let gk = c.upload_bf16(&[slots, kvw], &k)?;
    let gv = c.upload_bf16(&[slots, kvw], &v)?;
    let out = bf16_out(ops, &[rows, nh * hd])?;
    let scale = 1.0 / (hd as f32).sqrt();
    ops.paged_attention(&plan, &gq, 0, &gk, &gv, &out, scale)?;
    let rseqs: Vec<r::RefSeq> = seqs
        .iter()
        .map(|s| r::RefSeq {
            q_len: s.q_len,
            kv_len: s.kv_len,
            pages: s.pages.clone(),
        })
        .collect();
    // Long sequences: the first and last 8 query rows and every 61st (the f64 reference of
    // all 8K rows takes minutes), each row within the bound on its own.
    let sampled = lens.iter().any(|&(q, _)| q > 1024);
    let keep = |i: usize, n: usize| !sampled || i < 8 || i + 8 >= n || i % 61 == 0;
    let want = r::paged_attention_rows(&q, &k, &v, &rseqs, nh, nkv, hd, page, scale, &keep);
    let got = c.download_f32(&out)?;
    let err = if sampled {
        let w = nh * hd;
        let mut worst = 0.0f64;
        let mut row = 0;
        // Rows outside the sample must still have been written (outputs start as NaN).
        if got.iter().any(|x| !x.is_finite()) {
            worst = f64::INFINITY;
        }
        for rs in &rseqs {
            for i in (0..rs.q_len).filter(|&i| keep(i, rs.q_len)) {
                let at = (row + i) * w;
                worst = worst.max(r::rel_err(&got[at..at + w], &want[at..at + w]));
            }
            row += rs.q_len;
        }
        worst
    } else {
        r::rel_err(&got, &want)
    };
    let kernel = match plan.kernel() {
        AttnKernel::Decode2 if !variant.is_empty() => variant,
        AttnKernel::Decode2 if plan.halves() => "dec2rh",
        AttnKernel::Decode2 if plan.cluster_regs() => "dec2r",
        AttnKernel::Decode2 if plan.cluster() > 0 => "dec2c",
        AttnKernel::Decode2 => "dec2",
        AttnKernel::Decode => "dec",
        AttnKernel::General => "gen",
        AttnKernel::PrefillMma => "mma",
        AttnKernel::PrefillFa2 => "fa2",
        AttnKernel::PrefillWg => plan.wg_form().map_or("wg", WgForm::name),
        AttnKernel::DecodeMma => "dmma",
    };
    let desc = format!(
        "{name} h{nh}/{nkv} d{hd} p{page} {lens:?} s{} c{} {kernel}",
        plan.splits(),
        plan.cluster()
    );
    ck.rel("attention", desc.clone(), err, BF16_TOL);
    if plan.rotates_q() {
        // Q rotated by the kernel as it loads it: bit for bit the output of Q rotated by
        // `rope` first (Llama-3 frequencies, each row at its sequence position).
        let pos: Vec<i32> = lens
            .iter()
            .flat_map(|&(q, kv)| (kv - q..kv).map(|p| p as i32))
            .collect();
        let inv = r::rope_inv_freq(hd, 500000.0, Some(r::Llama3Scaling::default()));
        let gp = c.upload_i32(&[rows], &pos)?;
        let gi = c.upload_f32(&[hd / 2], &inv)?;
        let rotated = c.upload_bf16(&[rows, nh * hd], &q)?;
        ops.rope(&rotated, 0, nh, 0, 0, hd, &gp, &gi)?;
        let (a, b) = (
            bf16_out(ops, &[rows, nh * hd])?,
            bf16_out(ops, &[rows, nh * hd])?,
        );
        ops.paged_attention(&plan, &rotated, 0, &gk, &gv, &a, scale)?;
        let rope = strata_kernels::cuda::QRope {
            pos: &gp,
            inv_freq: &gi,
        };
        ops.paged_attention_rope(&plan, &gq, 0, &gk, &gv, &b, scale, Some(rope))?;
        let n = bit_diffs(&c.download_f32(&a)?, &c.download_f32(&b)?);
        ck.exact("attention", format!("{desc} Q rotated in the kernel"), n);
    }
    // The head-split form does each head's arithmetic as the unsplit register form does: bit
    // for bit its output.
    if plan.halves() {
        plan.set_halves(false);
        let other = bf16_out(ops, &[rows, nh * hd])?;
        ops.paged_attention(&plan, &gq, 0, &gk, &gv, &other, scale)?;
        let n = bit_diffs(&got, &c.download_f32(&other)?);
        ck.exact("attention", format!("{desc} equals dec2r"), n);
    }
    // The producer forms do each row's arithmetic as the cp.async form does (same key tiles
    // in the same order, same splits): bit for bit its output.
    if plan.wg_form().is_some_and(|f| f.producer()) {
        let base = plan_as(PrefillKernel::Wgmma, Some(plan.splits()))?;
        anyhow::ensure!(
            base.wg_form() == Some(WgForm::Regs),
            "{desc}: the cp.async form not planned ({:?})",
            base.kernel()
        );
        let other = bf16_out(ops, &[rows, nh * hd])?;
        ops.paged_attention(&base, &gq, 0, &gk, &gv, &other, scale)?;
        let n = bit_diffs(&got, &c.download_f32(&other)?);
        ck.exact("attention", format!("{desc} equals wg"), n);
    }
    Ok(())
}
