//! `gpu bench --only prefill`: why the attention runs slower inside the prefill forward than
//! alone. The last layer's attention is timed on the forward's own data (Q from the qkv GEMM,
//! K/V in the pool), right after that layer's gate_up GEMM (the card in the GEMMs' power draw,
//! their bytes in the L2), right after a write of 256 MiB (an L2 without its K/V), and on the
//! same buffers refilled with uniform noise of three scales (the data alone changed), each with
//! the SM clock and board power NVML reports while it runs.

use cudarc::driver::sys::CUevent_flags;
use strata_kernels::cuda::info::ClockProbe;
use strata_kernels::cuda::llama::{LlamaModel, StepInput, Workspace};
use strata_kernels::cuda::{CudaOps, DType, Gemm};

use super::bench::median;

/// Median milliseconds of `f` on the compute stream over `reps` runs, each right after `before`
/// (not timed), with the median SM clock and power sampled while `f` runs.
fn ms_after(
    ops: &CudaOps,
    probe: Option<&ClockProbe>,
    reps: usize,
    mut before: impl FnMut() -> anyhow::Result<()>,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let ctx = ops.context();
    let stream = ctx.stream();
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    for _ in 0..2 {
        before()?;
        f()?;
    }
    ctx.synchronize()?;
    let (mut v, mut mhz, mut watts) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        before()?;
        let a = stream.record_event(flags)?;
        f()?;
        let b = stream.record_event(flags)?;
        if let Some((m, w)) = probe.and_then(ClockProbe::sample) {
            mhz.push(m as f64);
            watts.push(w);
        }
        b.synchronize()?;
        v.push(a.elapsed_ms(&b)? as f64);
    }
    let clock = if mhz.is_empty() {
        String::new()
    } else {
        format!(" ({:.0} MHz, {:.0} W)", median(mhz), median(watts))
    };
    Ok(format!("{:.3} ms{clock}", median(v)))
}

/// One summary line: the last layer's attention of a `t`-token prefill in each context.
pub fn attention_in_context(
    ops: &CudaOps,
    gemm: &Gemm,
    model: &LlamaModel,
    ws: &Workspace,
    input: &StepInput,
    t: usize,
) -> anyhow::Result<String> {
    let last = model.shape.layers - 1;
    let probe = ClockProbe::new();
    let probe = probe.as_ref();
    model.forward(ops, gemm, ws, input)?;
    let attn = || Ok(model.layer_attention(ops, ws, input, last)?);
    let nothing = || Ok(());
    let own = ms_after(ops, probe, 10, nothing, attn)?;
    let gate_up = ms_after(
        ops,
        probe,
        10,
        || Ok(model.layer_gate_up(gemm, ws, last)?),
        attn,
    )?;
    let scratch = ops.context().alloc(DType::Bf16, &[128 << 20])?;
    let flushed = ms_after(
        ops,
        probe,
        10,
        || Ok(ops.fill_uniform(&scratch, 7, 1.0)?),
        attn,
    )?;
    let mut line = format!(
        "  prefill {t} attention of the last layer: on the forward's own data {own}, right after its gate_up GEMM {gate_up}, right after a 256 MiB write {flushed}; the same buffers refilled with uniform noise of scale"
    );
    for scale in [0.1f32, 1.0, 8.0] {
        model.randomize_attention_inputs(ops, ws, last, 300, scale)?;
        line += &format!(" {scale}: {}", ms_after(ops, probe, 10, nothing, attn)?);
    }
    Ok(line)
}
