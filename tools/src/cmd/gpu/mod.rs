//! `strata gpu ...`: the CUDA backend's device-side proof. `info` prints what the backend
//! selection sees, `check` compares every CUDA op with the CPU reference on fresh random inputs,
//! `bench` measures the page path, GEMM, copy bandwidth, decode and prefill on the GPU, `golden`
//! runs `CudaBackend`'s forward pass against the golden logits and the CPU backend.
//!
//! All three exit non-zero on failure; `check` and `bench` print a short table last and can write
//! JSON (`--json PATH`) for docs/perf.md, GPU section.

use clap::{Args as ClapArgs, Subcommand};
use strata_kernels::cuda::{self, select, BackendKind};

mod bench;
mod bench_context;
mod bench_handoff;
mod bench_model;
mod bench_pipelined;
mod bench_prefill;
mod bench_sampling;
mod bench_stream;
mod check;
mod check_attention;
mod check_det;
mod check_head;
mod check_host_copy;
mod check_lora;
mod check_ops;
mod check_pd_copy;
mod check_rows;
mod check_sampling;
mod check_tail;
mod golden;
mod runner_logits;

#[derive(ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    cmd: GpuCommand,
}

#[derive(Subcommand)]
enum GpuCommand {
    /// Backend selection, devices (NVML), driver and NVRTC versions.
    Info(Common),
    /// Every CUDA op against the CPU reference; exits 1 on any mismatch.
    Check(check::Args),
    /// Page transfer, copy bandwidth, GEMM rate, decode and prefill benchmarks.
    Bench(bench::Args),
    /// `CudaBackend`'s forward pass against the golden logits and the CPU backend.
    Golden(golden::Args),
    /// The bf16 CUDA runner's logits for token-id prompts (compared with transformers by
    /// scripts/hf_runner_compare.py).
    RunnerLogits(runner_logits::Args),
}

#[derive(ClapArgs, Clone)]
pub struct Common {
    /// GPU ordinal to use.
    #[arg(long, default_value_t = 0)]
    pub base_gpu_id: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    super::logging::init("info");
    match args.cmd {
        GpuCommand::Info(c) => info(&c),
        GpuCommand::Check(a) => check::run(a),
        GpuCommand::Bench(a) => bench::run(a),
        GpuCommand::Golden(a) => golden::run(a),
        GpuCommand::RunnerLogits(a) => runner_logits::run(a),
    }
}

fn info(c: &Common) -> anyhow::Result<()> {
    let (kind, ctx) = select(c.base_gpu_id, false);
    match &kind {
        BackendKind::Cuda { name, ordinal } => println!("backend: CUDA (GPU {ordinal}: {name})"),
        BackendKind::Cpu { reason } => println!("backend: CPU ({reason})"),
    }
    if let Some(ctx) = ctx {
        let (free, total) = ctx.mem_info()?;
        println!(
            "arch {} | {} SMs | driver {} | nvrtc {:?} | memory {:.1}/{:.1} GiB free",
            ctx.arch(),
            ctx.sm_count(),
            ctx.driver(),
            cuda::nvrtc::nvrtc_version().ok(),
            free as f64 / (1u64 << 30) as f64,
            total as f64 / (1u64 << 30) as f64
        );
    }
    match cuda::gpu_inventory() {
        Some(gpus) => {
            for g in gpus {
                println!(
                    "nvml: GPU {} {} | {:.1}/{:.1} GiB used | {}% busy",
                    g.index,
                    g.name,
                    g.memory_used as f64 / (1u64 << 30) as f64,
                    g.memory_total as f64 / (1u64 << 30) as f64,
                    g.utilization_percent
                );
            }
        }
        None => println!("nvml: unavailable"),
    }
    Ok(())
}
