//! The GPU sampler's CUDA source (kernels/cuda/sampling.cu: `argmax_rows`, `sample_rows`,
//! `logprob_rows`) run on the CPU under a host-thread CUDA emulation
//! (kernels/tests/cuda_emu/shim.h, compiled with g++), against the server's host sampler
//! `sample_host`: CI has no GPU, so this is
//! where the kernels' logic (penalties, grammar allow masks, radix selection, tie groups, draw,
//! logprob top-N) is held
//! to the CPU semantics on every change; `strata gpu check` repeats it on real hardware at the
//! real vocabularies. Seeded rows (the seed is printed); one row per parameter combination, and a
//! second pass on logits rounded to 0.5 so that equal keys (tie groups) are everywhere. Skipped,
//! with a message, where no C++20 g++ exists.

use std::path::{Path, PathBuf};
use std::process::Command;
use strata_kernels::sample_rows::{
    agreement, count_tokens, pack_rows, scale_bits, unpack_logprobs, Agreement, Allow,
};
use strata_server::logprobs::from_gpu;
use strata_server::model::runner::{gpu_row, sample_host, SampleReq};
use strata_server::seeded::SplitMix64;

/// Builds the emulator; None (the test skips) when g++ is missing. 128 threads per row block
/// instead of the GPU's 1024: the kernels' logic is the same for any multiple of 32 that divides
/// 1024 (bins per thread 8 / 16 instead of 1 / 2), and host threads are expensive. The
/// 1024-thread shape was emulated when written.
fn build(dir: &Path) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let main = root.join("tests/cuda_emu/main.cpp");
    strata_kernels::emu::build_emulator(&main, &dir.join("emu"), &["SAMPLE_THREADS=128"])
}

/// Runs every case on one seeded row of `vocab` logits (rounded to `quant` when given) through
/// the emulated kernels; returns the failures.
fn run(exe: &Path, dir: &Path, vocab: usize, seed: u64, quant: Option<f32>) -> Vec<String> {
    let mut rng = SplitMix64(seed);
    let cases = strata_server::sampling_cases::cases();
    let n = cases.len();
    let (mut logits, mut outs, mut bans, mut us) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..n {
        let sigma = [1.0f32, 2.0, 3.0][r % 3];
        let mut l: Vec<f32> = (0..vocab)
            .map(|_| {
                let s: f64 = (0..4).map(|_| rng.next_f64()).sum();
                ((s * 2.0 - 4.0) as f32) * sigma * 0.87
            })
            .collect();
        if r % 4 != 3 {
            for _ in 0..(1 + r % 6) {
                let i = (rng.next_u64() % vocab as u64) as usize;
                l[i] = 6.0 + 8.0 * rng.next_f64() as f32;
            }
        }
        let a = (rng.next_u64() % vocab as u64) as usize;
        let b = (rng.next_u64() % vocab as u64) as usize;
        l[a] = l[b];
        // Thread 0 of a 128-thread block reads values 512 m .. 512 m + 3 of a 16-byte aligned
        // row: give it 16 of the row's best.
        if cases[r].name.ends_with("crowded") && vocab % 4 == 0 && vocab >= 2048 {
            for m in 0..4 {
                for c in 0..4 {
                    l[512 * m + c] = 12.0 - (4 * m + c) as f32 * 0.1;
                }
            }
        }
        if let Some(q) = quant {
            l.iter_mut().for_each(|x| *x = (*x / q).round() * q);
        }
        let mut top: Vec<u32> = (0..vocab as u32).collect();
        top.select_nth_unstable_by(8, |&a, &b| l[b as usize].total_cmp(&l[a as usize]));
        let mut out: Vec<u32> = (0..24)
            .map(|k| {
                let x = rng.next_u64();
                if k % 3 == 0 {
                    (x % vocab as u64) as u32
                } else {
                    top[(x % 8) as usize]
                }
            })
            .collect();
        // The newest token (left out of the counts below) new to the output on every other row
        // (its entry is the kernel's own), a repeat on the others (an entry's count gains one);
        // the other seed of the pair swaps them.
        if (r + (seed & 1) as usize) % 2 == 1 {
            while out[..23].contains(&out[23]) {
                out[23] = (out[23] + 1) % vocab as u32;
            }
        } else {
            out[23] = out[1];
        }
        outs.push(out);
        bans.push(vec![top[0]]);
        us.push(rng.next_f64());
        logits.extend(l);
    }
    // A grammar-like allow mask on every third unscored row: ~1 token in 8 (and one more id in
    // `also`), so the draw, the logprobs and the penalties all meet masked rows.
    let masks: Vec<Vec<u32>> = (0..n)
        .map(|_| {
            (0..vocab.div_ceil(32))
                .map(|_| {
                    let (a, b, c) = (rng.next_u64(), rng.next_u64(), rng.next_u64());
                    (a & b & c) as u32
                })
                .collect()
        })
        .collect();
    let also: Vec<[u32; 1]> = (0..n)
        .map(|r| [outs[r][1]]) // a generated (penalised) token
        .collect();
    let counts: Vec<Vec<(u32, u32)>> = outs.iter().map(|o| count_tokens(o)).collect();
    // Three rows in four leave their newest output token out of their counts (`uncounted`, as
    // under overlap scheduling): the kernel counts it from the device ids (`pending`, one per
    // row).
    let short: Vec<Vec<(u32, u32)>> = outs.iter().map(|o| count_tokens(&o[..23])).collect();
    let pending: Vec<u32> = outs.iter().map(|o| o[23]).collect();
    let uncounted = |r: usize| r % 4 != 3;
    let reqs: Vec<SampleReq> = (0..n)
        .map(|r| SampleReq {
            params: &cases[r].params,
            counts: if uncounted(r) { &short[r] } else { &counts[r] },
            banned: if cases[r].ban { &bans[r] } else { &[] },
            allow: (r % 3 == 1 && !cases[r].score).then(|| Allow {
                bits: &masks[r],
                also: &also[r],
            }),
            uniform: us[r],
            logprobs: cases[r].logprobs.as_ref(),
            score: cases[r].score.then_some((r * 7919 % vocab) as u32),
            embed: false,
            hidden: false,
            uncounted: uncounted(r).then_some(r),
        })
        .collect();
    let specs: Vec<_> = reqs.iter().map(gpu_row).collect();
    let p = pack_rows(&specs, vocab);
    let mut buf = Vec::new();
    let head = [
        vocab as u32,
        n as u32,
        scale_bits(vocab) as u32,
        p.words.len() as u32,
        p.lp_words as u32,
        p.ids_at() as u32,
        pending.len() as u32,
    ];
    head.iter().for_each(|h| buf.extend(h.to_le_bytes()));
    p.words.iter().for_each(|w| buf.extend(w.to_le_bytes()));
    logits.iter().for_each(|x| buf.extend(x.to_le_bytes()));
    pending.iter().for_each(|t| buf.extend(t.to_le_bytes()));
    let (inp, outp) = (dir.join("in.bin"), dir.join("out.bin"));
    std::fs::write(&inp, &buf).unwrap();
    let st = Command::new(exe).arg(&inp).arg(&outp).status().unwrap();
    assert!(st.success(), "emulator failed: {st}");
    let words: Vec<i32> = std::fs::read(&outp)
        .unwrap()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let (tokens, rest) = words.split_at(n);
    let (pen, lpw) = rest.split_at(n * vocab);
    let mut bad = Vec::new();
    for (r, req) in reqs.iter().enumerate() {
        let name = cases[r].name;
        let mut l = logits[r * vocab..(r + 1) * vocab].to_vec();
        // The host's reference counts the whole output.
        let whole = SampleReq {
            counts: &counts[r],
            uncounted: None,
            ..*req
        };
        let want = sample_host(&mut l, &whole);
        let got = tokens[r];
        let pen_diff = l
            .iter()
            .zip(&pen[r * vocab..(r + 1) * vocab])
            .filter(|(a, &b)| a.to_bits() != b as u32)
            .count();
        if pen_diff > 0 {
            bad.push(format!("{name}: {pen_diff} penalised logits differ"));
        }
        let verdict = if got as u32 == want.token {
            Agreement::Same
        } else if req.score.is_some() {
            Agreement::Differs
        } else {
            agreement(&l, &req.params.sample, req.uniform, got as usize, 1e-6)
        };
        if verdict == Agreement::Differs {
            bad.push(format!("{name}: token {got}, host {}", want.token));
        }
        if let (Some(spec), Some(w)) = (req.logprobs, &want.logprobs) {
            let g = from_gpu(
                spec.token_ids.as_deref(),
                &unpack_logprobs(&p, lpw, r).expect("logprob words"),
            );
            let ids = |v: &[(u32, f32)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
            let close = |a: Option<f32>, b: Option<f32>| match (a, b) {
                (Some(a), Some(b)) => a == b || (a - b).abs() <= 1e-5,
                _ => a == b,
            };
            if got as u32 == want.token
                && (ids(&g.top) != ids(&w.top)
                    || ids(&g.ids) != ids(&w.ids)
                    || !close(g.logprob, w.logprob)
                    || g.top
                        .iter()
                        .zip(&w.top)
                        .any(|(a, b)| !close(Some(a.1), Some(b.1)))
                    || g.ids
                        .iter()
                        .zip(&w.ids)
                        .any(|(a, b)| !close(Some(a.1), Some(b.1))))
            {
                bad.push(format!("{name}: logprobs {g:?} vs host {w:?}"));
            }
        }
    }
    bad
}

#[test]
fn emulated_kernels_sample_like_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = build(dir.path()) else {
        println!("SKIPPED: no g++ to build the CUDA emulation");
        return;
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(14, |d| d.as_nanos() as u64);
    println!("seed {seed}");
    let mut bad = run(&exe, dir.path(), 1000, seed, None);
    bad.extend(run(&exe, dir.path(), 700, seed ^ 1, Some(0.5)));
    // Rows of 16-byte multiples are read four values at a time; these are not (one by one).
    bad.extend(run(&exe, dir.path(), 999, seed ^ 2, None));
    // Long enough for a thread to hold more than its 8 candidates of a top 32 (the crowded row).
    bad.extend(run(&exe, dir.path(), 4096, seed ^ 3, None));
    assert!(bad.is_empty(), "seed {seed}: {bad:#?}");
    // The histogram weights' 64-bit adds (two 32-bit atomics and a carry), exactly.
    let out = Command::new(&exe)
        .args(["--sum64", &seed.to_string()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.matches("ok bin").count() == 3,
        "seed {seed}: {report}"
    );
}
