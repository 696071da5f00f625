//! `strata gpu check`: every CUDA op against the CPU reference on fresh random inputs (seeded;
//! the seed is printed for replay), several shapes each including sizes that are not multiples
//! of the tile sizes, outputs poisoned with NaN before each launch. bf16 outputs must be within
//! a relative error of 1e-2 (‖gpu − ref‖ / ‖ref‖); copies must be byte-exact. The batch-invariance
//! cases (`check_det.rs`) require bitwise-equal rows in batch-invariant mode and report the
//! default mode's count of differing rows (bound `inf`).

use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args as ClapArgs;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_kernels::cuda::{CudaOps, Gemm, GpuContext, PageLayout, PageMover, PinnedBuf};

use super::{check_det, check_ops, check_sampling, Common};

#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// RNG seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Run only these steps (comma-separated names, e.g. `attention`; default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// A named group of comparisons.
type Step<'a> = (&'static str, &'a dyn Fn(&mut Checker) -> anyhow::Result<()>);

/// One comparison.
pub struct Outcome {
    pub op: String,
    pub shape: String,
    pub metric: f64,
    pub bound: f64,
    pub pass: bool,
}

/// Collected outcomes plus a shared RNG.
pub struct Checker {
    pub rng: StdRng,
    pub out: Vec<Outcome>,
}

impl Checker {
    /// Records a relative-error comparison.
    pub fn rel(&mut self, op: &str, shape: String, err: f64, bound: f64) {
        self.out.push(Outcome {
            op: op.into(),
            shape,
            metric: err,
            bound,
            pass: err <= bound,
        });
    }
    /// Records an exact comparison (metric = number of mismatches).
    pub fn exact(&mut self, op: &str, shape: String, mismatches: usize) {
        self.out.push(Outcome {
            op: op.into(),
            shape,
            metric: mismatches as f64,
            bound: 0.0,
            pass: mismatches == 0,
        });
    }
    /// Uniform values in [-scale, scale], rounded to bf16.
    pub fn bf16_vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        let v: Vec<f32> = (0..n)
            .map(|_| self.rng.random_range(-scale..scale))
            .collect();
        strata_kernels::reference::round_bf16(&v)
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("gpu check: seed {seed}");
    let ctx = GpuContext::new(args.common.base_gpu_id).context("opening the GPU")?;
    println!(
        "device: {} ({}, {} SMs, driver {})",
        ctx.name(),
        ctx.arch(),
        ctx.sm_count(),
        ctx.driver()
    );
    let mut ck = Checker {
        rng: StdRng::seed_from_u64(seed),
        out: Vec::new(),
    };
    let t0 = std::time::Instant::now();
    let ops = CudaOps::new(ctx.clone()).context("compiling kernels")?;
    println!("kernels ready in {:.2}s", t0.elapsed().as_secs_f64());
    let gemm = Gemm::new(ctx.clone()).context("cuBLAS")?;
    let steps: [Step; 28] = [
        ("transfer", &|c| check_transfer(&ctx, c)),
        ("pd_copy", &|c| super::check_pd_copy::check_pd_copy(&ctx, c)),
        ("host_copy", &|c| {
            super::check_host_copy::check_host_copy(&ctx, c)
        }),
        ("embedding", &|c| check_ops::embedding(&ops, c)),
        ("add_rows", &|c| check_ops::add_rows(&ops, c)),
        ("lora_rows", &|c| super::check_lora::lora_rows(&ops, c)),
        ("rmsnorm", &|c| check_ops::rmsnorm(&ops, c)),
        ("rope", &|c| check_ops::rope(&ops, c)),
        ("silu_mul", &|c| check_ops::silu_mul(&ops, c)),
        ("kv_write", &|c| check_ops::kv_write(&ops, c)),
        ("rope_kv_write", &|c| check_ops::rope_kv_write(&ops, c)),
        ("gemm", &|c| check_ops::gemm(&ops, &gemm, c)),
        ("silu_linear", &|c| check_ops::silu_linear(&ops, &gemm, c)),
        ("gate_silu", &|c| check_ops::gate_silu(&ops, &gemm, c)),
        ("qkv_rope", &|c| check_ops::qkv_rope(&ops, &gemm, c)),
        ("gate_gemm", &|c| check_ops::gate_gemm(&ops, &gemm, c)),
        ("few_rows", &|c| super::check_rows::few_rows(&ops, &gemm, c)),
        ("rmsnorm_add2", &|c| check_ops::rmsnorm_add2(&ops, c)),
        ("o_norm_gate", &|c| {
            super::check_tail::o_norm_gate(&ops, &gemm, c)
        }),
        ("attention", &|c| super::check_attention::attention(&ops, c)),
        ("sampling", &|c| check_sampling::sampling(&ops, c)),
        ("qkv_bias_norm", &|c| check_ops::qkv_bias_norm(&ops, c)),
        ("argmax_rows", &|c| check_ops::argmax_rows(&ops, c)),
        ("head_argmax", &|c| {
            super::check_head::head_argmax(&ops, &gemm, c)
        }),
        ("fixed_decode_plan", &|c| {
            check_ops::fixed_decode_plan(&ops, c)
        }),
        ("gemm_rows", &|c| check_det::gemm_rows(&ops, c)),
        ("attn_decode_rows", &|c| {
            check_det::attention_decode_rows(&ops, c)
        }),
        ("attn_extend_rows", &|c| {
            check_det::attention_extend_rows(&ops, c)
        }),
    ];
    if let Some(o) = args
        .only
        .iter()
        .find(|o| !steps.iter().any(|(n, _)| n == o))
    {
        bail!("--only {o}: no such step");
    }
    for (name, f) in steps {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        if let Err(e) = f(&mut ck) {
            ck.out.push(Outcome {
                op: name.into(),
                shape: format!("error: {e:#}"),
                metric: f64::NAN,
                bound: 0.0,
                pass: false,
            });
        }
    }
    println!(
        "{:<12} {:<48} {:>11} {:>9} result",
        "op", "shape", "metric", "bound"
    );
    for o in &ck.out {
        println!(
            "{:<12} {:<48} {:>11.3e} {:>9.1e} {}",
            o.op,
            o.shape,
            o.metric,
            o.bound,
            if o.pass { "ok" } else { "FAIL" }
        );
    }
    let failed = ck.out.iter().filter(|o| !o.pass).count();
    if let Some(p) = args.json {
        let rows: Vec<_> = ck
            .out
            .iter()
            .map(|o| serde_json::json!({"op": o.op, "shape": o.shape, "metric": o.metric, "bound": o.bound, "pass": o.pass}))
            .collect();
        let doc = serde_json::json!({"device": ctx.name(), "seed": seed, "checks": rows});
        std::fs::write(&p, serde_json::to_string_pretty(&doc)?)?;
    }
    println!(
        "gpu check: {} comparisons, {failed} failed (seed {seed})",
        ck.out.len()
    );
    if failed > 0 {
        bail!("{failed} GPU check(s) failed");
    }
    Ok(())
}

/// Scatter (host -> GPU, per layer with events) and gather (GPU -> host) of random page lists,
/// byte-exact against the expected layouts, with untouched bytes left untouched.
fn check_transfer(ctx: &Arc<GpuContext>, ck: &mut Checker) -> anyhow::Result<()> {
    for (layers, pool_pages, chunk, n) in [(3, 37, 4112, 11), (2, 64, 65536, 64), (5, 9, 16, 9)] {
        let layout = PageLayout {
            layers,
            pool_pages,
            chunk_bytes: chunk,
        };
        let mover = PageMover::new(ctx.clone(), layout)?;
        let host_cap = n + 3;
        let hp_bytes = layout.host_page_bytes();
        let mut src = PinnedBuf::new(ctx, host_cap * hp_bytes)?;
        ck.rng.fill(src.as_mut_slice());
        let mut pool_bytes = vec![0u8; layout.pool_bytes()];
        ck.rng.fill(&mut pool_bytes[..]);
        let pool = ctx.upload_u8(&[pool_bytes.len()], &pool_bytes)?;
        let mut gpu_pages: Vec<i32> = (0..pool_pages as i32).collect();
        shuffle(&mut ck.rng, &mut gpu_pages);
        gpu_pages.truncate(n);
        let mut host_pages: Vec<i32> = (0..host_cap as i32).collect();
        shuffle(&mut ck.rng, &mut host_pages);
        host_pages.truncate(n);
        let pairs = mover.pairs(&gpu_pages, &host_pages, &src)?;
        let ev = mover.load(&pool, &src, &pairs)?;
        for l in 0..layers {
            ev.synchronize(l)?;
        }
        let got = ctx.download_u8(&pool)?;
        let mut expect = pool_bytes.clone();
        for (&g, &h) in gpu_pages.iter().zip(&host_pages) {
            for l in 0..layers {
                for kv in 0..2 {
                    let po = ((l * 2 + kv) * pool_pages + g as usize) * chunk;
                    let ho = ((h as usize * layers + l) * 2 + kv) * chunk;
                    expect[po..po + chunk].copy_from_slice(&src.as_slice()[ho..ho + chunk]);
                }
            }
        }
        let shape = format!("L{layers} pages{pool_pages} chunk{chunk} n{n}");
        ck.exact("kv_load", shape.clone(), diff(&got, &expect));
        // Gather back into a fresh host buffer with a different pairing.
        let mut dst = PinnedBuf::new(ctx, host_cap * hp_bytes)?;
        dst.as_mut_slice().fill(0xA5);
        shuffle(&mut ck.rng, &mut host_pages);
        let pairs = mover.pairs(&gpu_pages, &host_pages, &dst)?;
        let done = mover.store(&pool, &dst, &pairs)?;
        done.synchronize()?;
        let mut expect_h = vec![0xA5u8; dst.len()];
        for (&g, &h) in gpu_pages.iter().zip(&host_pages) {
            for l in 0..layers {
                for kv in 0..2 {
                    let po = ((l * 2 + kv) * pool_pages + g as usize) * chunk;
                    let ho = ((h as usize * layers + l) * 2 + kv) * chunk;
                    expect_h[ho..ho + chunk].copy_from_slice(&expect[po..po + chunk]);
                }
            }
        }
        ck.exact("kv_store", shape, diff(dst.as_slice(), &expect_h));
    }
    Ok(())
}

fn diff(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count() + a.len().abs_diff(b.len())
}

pub fn shuffle<T>(rng: &mut StdRng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}
