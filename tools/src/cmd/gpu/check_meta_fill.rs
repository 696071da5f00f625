//! `gpu check` step "meta_fill": a decode graph's metadata node (strata_kernels `meta_fill.rs`).
//! A graph holding only the node is captured for 1, 5 and 64 rows; each round sets random rows
//! (ids from the host or from a "previous forward's" token buffer, positions, slots, key counts)
//! and replays it: the ids, positions, slots and plan tiles must equal what the copies would
//! have written (padding rows included), exactly. Before its first set the node writes
//! nothing, and a replay queued before the node is set again writes the rows it was queued with
//! (what overlap scheduling relies on).

use std::sync::Arc;

use rand::Rng;
use strata_kernels::cuda::meta_fill::{FillId, FillRow, MetaBufs};
use strata_kernels::cuda::{CudaOps, DType, GpuContext};

use super::check::Checker;

/// The four buffers' words the copies would write for `rows` in a graph of `bs` rows.
fn expected(rows: &[FillRow], prev: &[i32], bs: usize) -> [Vec<i32>; 4] {
    let mut out = [vec![0; bs], vec![0; bs], vec![-1; bs], Vec::new()];
    for i in 0..bs {
        let keys = match rows.get(i) {
            Some(r) => {
                out[0][i] = match r.id {
                    FillId::Host(t) => t as i32,
                    FillId::Prev(k) => prev[k],
                };
                out[1][i] = r.pos;
                out[2][i] = r.slot;
                r.kv_len
            }
            None => 1,
        };
        out[3].extend_from_slice(&[i as i32, i as i32, 1, keys - 1]);
    }
    out
}

pub fn check_meta_fill(
    ctx: &Arc<GpuContext>,
    ops: &CudaOps,
    ck: &mut Checker,
) -> anyhow::Result<()> {
    for bs in [1usize, 5, 64] {
        let prev_host: Vec<i32> = (0..bs + 3)
            .map(|_| ck.rng.random_range(0..1 << 20))
            .collect();
        let prev = ctx.upload_i32(&[prev_host.len()], &prev_host)?;
        let bufs = [
            ctx.alloc(DType::I32, &[bs])?,
            ctx.alloc(DType::I32, &[bs])?,
            ctx.alloc(DType::I32, &[bs])?,
            ctx.alloc(DType::I32, &[4 * bs])?,
        ];
        ctx.synchronize()?;
        let meta = MetaBufs {
            tiles: &bufs[3],
            ids: &bufs[0],
            pos: &bufs[1],
            slots: &bufs[2],
            rows: bs,
        };
        let (g, node) = ops.capture_graph(Some(meta), || Ok(()))?;
        let mut node = node.ok_or_else(|| anyhow::anyhow!("no metadata node captured"))?;
        let read = || -> anyhow::Result<Vec<Vec<i32>>> {
            ctx.synchronize()?;
            bufs.iter()
                .map(|b| Ok(ctx.download_i32(b)?))
                .collect::<anyhow::Result<_>>()
        };
        let diff = |got: &[Vec<i32>], want: &[Vec<i32>]| -> usize {
            got.iter()
                .zip(want)
                .map(|(g, w)| g.iter().zip(w).filter(|(a, b)| a != b).count())
                .sum()
        };
        // Not set yet: a replay writes nothing.
        let sentinel: Vec<Vec<i32>> = bufs.iter().map(|b| vec![-7; b.numel()]).collect();
        for (b, v) in bufs.iter().zip(&sentinel) {
            ctx.write_i32(b, v)?;
        }
        g.launch()?;
        let got = read()?;
        ck.exact("meta_fill", format!("bs{bs} unset"), diff(&got, &sentinel));
        for round in 0..4 {
            let n = if round == 0 {
                bs
            } else {
                ck.rng.random_range(1..=bs)
            };
            let rows: Vec<FillRow> = (0..n)
                .map(|_| FillRow {
                    id: if ck.rng.random_bool(0.5) {
                        FillId::Prev(ck.rng.random_range(0..prev_host.len()))
                    } else {
                        FillId::Host(ck.rng.random_range(0..1 << 20))
                    },
                    pos: ck.rng.random_range(0..1 << 16),
                    slot: ck.rng.random_range(0..1 << 20),
                    kv_len: ck.rng.random_range(1..1 << 16),
                })
                .collect();
            node.set(&g, &rows, Some(&prev))?;
            g.launch()?;
            let want = expected(&rows, &prev_host, bs);
            if round == 3 {
                // Set again before the queued replay has run: it keeps what it was queued with.
                let other = vec![rows[0]; n];
                node.set(&g, &other, Some(&prev))?;
            }
            let got = read()?;
            ck.exact(
                "meta_fill",
                format!("bs{bs} rows{n} round{round}"),
                diff(&got, &want),
            );
        }
    }
    Ok(())
}
