//! Benchmark-sized checkpoints with the real shapes of public models (Llama-3.2-1B, Llama-3.1-8B,
//! Qwen3-8B), random weights, written fast: every tensor is cut into 1 Mi-element chunks, each
//! chunk drawn from its own SplitMix64 stream seeded by (seed, tensor, chunk) on all cores, and
//! streamed to `model.safetensors` (no whole-model buffer). Values are uniform with the same mean
//! and standard deviation as the small sizes' normal draws (a uniform draw is ~5x cheaper than
//! Box–Muller), so the output is still a pure function of (size, seed, dtype).

use super::DType;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use strata_server::seeded::SplitMix64;

/// A tensor to draw: name, shape, standard deviation, mean.
pub(super) struct Spec {
    pub name: String,
    pub shape: Vec<usize>,
    pub std: f64,
    pub mean: f64,
}

const CHUNK: usize = 1 << 20;

fn bytes_per(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 4,
        DType::BF16 | DType::F16 => 2,
    }
}

/// Draws chunk `c` of tensor `t` into `out` (encoded in `dtype`).
fn draw(seed: u64, t: usize, c: usize, s: &Spec, n: usize, dtype: DType, out: &mut Vec<u8>) {
    let mut rng = SplitMix64(
        seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (c as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93),
    );
    let a = (s.std * 3f64.sqrt()) as f32;
    let mean = s.mean as f32;
    out.clear();
    for _ in 0..n {
        let u = (rng.next_u64() >> 40) as f32 * (1.0 / 16_777_216.0);
        let x = mean + a * (2.0 * u - 1.0);
        match dtype {
            DType::F32 => out.extend_from_slice(&x.to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(x).to_bits().to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes()),
        }
    }
}

/// Writes `tensors` (any order; the file is sorted by name) to `path`.
pub(super) fn write(
    path: &Path,
    mut tensors: Vec<Spec>,
    seed: u64,
    dtype: DType,
) -> std::io::Result<()> {
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let tag = match dtype {
        DType::F32 => "F32",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
    };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0usize;
    for t in &tensors {
        let len = t.shape.iter().product::<usize>() * bytes_per(dtype);
        header.insert(
            t.name.clone(),
            json!({"dtype": tag, "shape": t.shape, "data_offsets": [off, off + len]}),
        );
        off += len;
    }
    let mut h = serde_json::to_string(&Value::Object(header))?;
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut f = std::io::BufWriter::with_capacity(1 << 24, std::fs::File::create(path)?);
    f.write_all(&(h.len() as u64).to_le_bytes())?;
    f.write_all(h.as_bytes())?;
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    for (ti, t) in tensors.iter().enumerate() {
        let n: usize = t.shape.iter().product();
        let chunks = n.div_ceil(CHUNK);
        // Rounds of `threads` chunks: drawn in parallel, written in order.
        let mut bufs: Vec<Vec<u8>> = (0..threads.min(chunks)).map(|_| Vec::new()).collect();
        let mut c0 = 0;
        while c0 < chunks {
            let k = bufs.len().min(chunks - c0);
            std::thread::scope(|s| {
                for (j, buf) in bufs.iter_mut().take(k).enumerate() {
                    let c = c0 + j;
                    let len = CHUNK.min(n - c * CHUNK);
                    s.spawn(move || draw(seed, ti, c, t, len, dtype, buf));
                }
            });
            for buf in bufs.iter().take(k) {
                f.write_all(buf)?;
            }
            c0 += k;
        }
    }
    f.flush()
}
