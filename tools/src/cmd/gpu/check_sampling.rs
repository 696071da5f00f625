//! The GPU sampler in `strata gpu check`: `sample_rows` + `logprob_rows` (through the server's
//! own mapping, `gpu_row` and `logprobs::from_gpu`) against the server's host sampler
//! `sample_host` on seeded random logits rows (the check's seed), for every parameter
//! combination the API offers (greedy with penalties, temperature, top-k, top-p, min-p, all of
//! them with repetition / frequency / presence penalties, logit bias and a banned token, a
//! grammar's allow mask on every third unscored row, logprobs,
//! a scored prompt row), at the vocabularies of Llama 3 (128256) and Qwen (151936), 220 rows per
//! launch. Rules: penalised logits bitwise equal; tokens equal except where `agreement` finds a
//! boundary within 1e-6 (counted, reported); logprob values within 1e-5 and top lists equal for
//! equal tokens; a second launch on the same inputs gives the same tokens (determinism).

use rand::Rng;
use strata_kernels::cuda::CudaOps;
use strata_kernels::sample_rows::{agreement, count_tokens, Agreement, Allow};
use strata_server::logprobs::from_gpu;
use strata_server::model::runner::{gpu_row, sample_host, SampleReq, Sampled};

use super::check::Checker;

const EPS: f64 = 1e-6;

/// Logits like a model's: a noisy body and, in most rows, a few peaked tokens.
fn row(ck: &mut Checker, v: usize, r: usize) -> Vec<f32> {
    let sigma = [1.0f32, 2.0, 3.0][r % 3];
    let mut l: Vec<f32> = (0..v)
        .map(|_| {
            let s: f32 = (0..4).map(|_| ck.rng.random_range(-1.0f32..1.0)).sum();
            s * sigma * 0.87
        })
        .collect();
    if r % 4 != 3 {
        for _ in 0..(1 + r % 6) {
            let i = ck.rng.random_range(0..v);
            l[i] = ck.rng.random_range(6.0f32..14.0);
        }
    }
    // An exact tie somewhere.
    let (a, b) = (ck.rng.random_range(0..v), ck.rng.random_range(0..v));
    l[a] = l[b];
    l
}

pub fn sampling(ops: &CudaOps, ck: &mut Checker) -> anyhow::Result<()> {
    let c = ops.context();
    let cases = strata_server::sampling_cases::cases();
    let per_case = 20;
    for vocab in [128256usize, 151936] {
        let n = cases.len() * per_case;
        let mut logits = Vec::with_capacity(n * vocab);
        let mut outputs: Vec<Vec<u32>> = Vec::with_capacity(n);
        let mut banned: Vec<Vec<u32>> = Vec::with_capacity(n);
        let mut uniforms = Vec::with_capacity(n);
        for r in 0..n {
            let l = row(ck, vocab, r);
            // Generated so far: mostly the likeliest tokens (so the penalties bite), some noise.
            let mut top: Vec<u32> = (0..vocab as u32).collect();
            top.select_nth_unstable_by(8, |&a, &b| l[b as usize].total_cmp(&l[a as usize]));
            let out: Vec<u32> = (0..24)
                .map(|k| {
                    if k % 3 == 0 {
                        ck.rng.random_range(0..vocab as u32)
                    } else {
                        top[ck.rng.random_range(0..8)]
                    }
                })
                .collect();
            banned.push(vec![top[0]]);
            outputs.push(out);
            uniforms.push(ck.rng.random_range(0.0f64..1.0));
            logits.extend(l);
        }
        // A grammar-like allow mask on every third unscored row (~1 token in 8, plus one
        // generated token in `also`).
        let masks: Vec<Vec<u32>> = (0..n)
            .map(|r| {
                let words = if r % 3 == 1 { vocab.div_ceil(32) } else { 0 };
                (0..words)
                    .map(|_| {
                        ck.rng.random::<u32>() & ck.rng.random::<u32>() & ck.rng.random::<u32>()
                    })
                    .collect()
            })
            .collect();
        let also: Vec<[u32; 1]> = outputs.iter().map(|o| [o[1]]).collect();
        let counts: Vec<Vec<(u32, u32)>> = outputs.iter().map(|o| count_tokens(o)).collect();
        let reqs: Vec<SampleReq> = (0..n)
            .map(|r| {
                let case = &cases[r / per_case];
                SampleReq {
                    params: &case.params,
                    counts: &counts[r],
                    banned: if case.ban { &banned[r] } else { &[] },
                    allow: (r % 3 == 1 && !case.score).then(|| Allow {
                        bits: &masks[r],
                        also: &also[r],
                    }),
                    uniform: uniforms[r],
                    logprobs: case.logprobs.as_ref(),
                    score: case.score.then_some((r * 7919 % vocab) as u32),
                    embed: false,
                    hidden: false,
                    uncounted: None,
                }
            })
            .collect();
        let specs: Vec<_> = reqs.iter().map(gpu_row).collect();
        let gl = c.upload_f32(&[n, vocab], &logits)?;
        let (tokens, lps) = ops.sample(&gl, &specs)?;
        let penalised = c.download_f32(&gl)?;
        let gl2 = c.upload_f32(&[n, vocab], &logits)?;
        let (tokens2, _) = ops.sample(&gl2, &specs)?;

        let mut per = vec![(0usize, 0usize, 0usize); cases.len()];
        let (mut pen_bad, mut lp_err, mut top_bad) = (0usize, 0f64, 0usize);
        // The host reference (a sort of the whole row each), on every core, then in row order:
        // each row's verdict (the agreement rule sorts again only for a differing token).
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        let chunk = n.div_ceil(threads);
        let host: Vec<(Vec<f32>, Agreement, Sampled)> = std::thread::scope(|s| {
            let jobs: Vec<_> = reqs
                .chunks(chunk)
                .enumerate()
                .map(|(c, part)| {
                    let (logits, tokens) = (&logits, &tokens);
                    s.spawn(move || {
                        part.iter()
                            .enumerate()
                            .map(|(k, req)| {
                                let r = c * chunk + k;
                                let mut l = logits[r * vocab..(r + 1) * vocab].to_vec();
                                let want = sample_host(&mut l, req);
                                let got = tokens[r];
                                let verdict = if got as u32 == want.token {
                                    Agreement::Same
                                } else if req.score.is_some() {
                                    Agreement::Differs
                                } else {
                                    agreement(
                                        &l,
                                        &req.params.sample,
                                        req.uniform,
                                        got as usize,
                                        EPS,
                                    )
                                };
                                (l, verdict, want)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            jobs.into_iter()
                .flat_map(|j| j.join().expect("reference thread"))
                .collect()
        });
        for ((r, req), (l, verdict, want)) in reqs.iter().enumerate().zip(host) {
            let g = &penalised[r * vocab..(r + 1) * vocab];
            pen_bad += l
                .iter()
                .zip(g)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            let got = tokens[r];
            let e = &mut per[r / per_case];
            match verdict {
                Agreement::Same => e.0 += 1,
                Agreement::Near => e.1 += 1,
                Agreement::Differs => {
                    e.2 += 1;
                    println!(
                        "sampling V{vocab} row {r} ({}): gpu {got}, cpu {} (u {})",
                        cases[r / per_case].name,
                        want.token,
                        req.uniform
                    );
                }
            }
            if let (Some(spec), Some(w)) = (req.logprobs, &want.logprobs) {
                let Some(gp) = &lps[r] else {
                    top_bad += 1;
                    continue;
                };
                if got as u32 != want.token {
                    continue;
                }
                let p = from_gpu(spec.token_ids.as_deref(), gp);
                let d = |a: f32, b: f32| {
                    if a == b {
                        0.0
                    } else {
                        (a as f64 - b as f64).abs()
                    }
                };
                lp_err = lp_err.max(d(p.logprob.unwrap_or(0.0), w.logprob.unwrap_or(0.0)));
                for (a, b) in p.ids.iter().zip(&w.ids) {
                    lp_err = lp_err.max(d(a.1, b.1));
                }
                if p.top.len() != w.top.len() || p.ids.len() != w.ids.len() {
                    top_bad += 1;
                }
                for (a, b) in p.top.iter().zip(&w.top) {
                    if a.0 != b.0 {
                        top_bad += 1;
                    }
                    lp_err = lp_err.max(d(a.1, b.1));
                }
            }
        }
        for (case, (same, near, bad)) in cases.iter().zip(&per) {
            ck.exact(
                "sample",
                format!("V{vocab} {} {same} same {near} near", case.name),
                *bad,
            );
        }
        ck.exact(
            "sample.pen",
            format!("V{vocab} rows{n} penalised logits bitwise"),
            pen_bad,
        );
        ck.rel(
            "sample.lp",
            format!("V{vocab} rows{n} logprob abs err"),
            lp_err,
            1e-5,
        );
        ck.exact("sample.top", format!("V{vocab} rows{n} top-n ids"), top_bad);
        let nondet = tokens.iter().zip(&tokens2).filter(|(a, b)| a != b).count();
        ck.exact(
            "sample.det",
            format!("V{vocab} rows{n} second launch"),
            nondet,
        );
    }
    Ok(())
}
