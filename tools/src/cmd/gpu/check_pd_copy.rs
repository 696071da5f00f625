//! `gpu check` step "pd_copy": the copy a PD decode runs out of a prefill's GPU pool (opened over
//! CUDA IPC) straight into its own pool (`PeerCopy`, `kv_pool_copy`). In one process the source
//! is a plain allocation (a handle cannot be opened by its exporter); the kernel sees the same
//! thing. Random page lists between two pools of different page counts, chunks of 16- and
//! 64-token pages (Llama-3-8B's 8 KV heads x 128) and odd small ones, each copy after a fence on
//! the compute stream, twice through one `PeerCopy` (the reused page-list buffer, and its growth
//! when a longer list comes; the second time between timing events, as a PD decode copies): the
//! destination pool must equal the expected bytes exactly (listed pages from the source, every
//! other byte untouched).

use std::sync::Arc;

use rand::Rng;
use strata_kernels::cuda::{GpuContext, PageLayout, PeerCopy};

use super::check::{shuffle, Checker};

pub fn check_pd_copy(ctx: &Arc<GpuContext>, ck: &mut Checker) -> anyhow::Result<()> {
    let copy = PeerCopy::new(ctx.clone())?;
    // (layers, chunk bytes, source pool pages, destination pool pages, pages moved)
    let shapes: [(usize, usize, usize, usize, usize); 5] = [
        (3, 16 * 1024 * 2, 23, 17, 5),
        (2, 64 * 1024 * 2, 41, 70, 33),
        (4, 64 * 512 * 2, 12, 12, 12),
        (5, 16, 9, 30, 9),
        (2, 4112, 100, 90, 77),
    ];
    for (layers, chunk, src_pages, dst_pages, n) in shapes {
        let sl = PageLayout {
            layers,
            pool_pages: src_pages,
            chunk_bytes: chunk,
        };
        let dl = PageLayout {
            layers,
            pool_pages: dst_pages,
            chunk_bytes: chunk,
        };
        let mut src_bytes = vec![0u8; sl.pool_bytes()];
        ck.rng.fill(&mut src_bytes[..]);
        let mut dst_bytes = vec![0u8; dl.pool_bytes()];
        ck.rng.fill(&mut dst_bytes[..]);
        let src = ctx.upload_u8(&[src_bytes.len()], &src_bytes)?;
        let dst = ctx.upload_u8(&[dst_bytes.len()], &dst_bytes)?;
        let mut expect = dst_bytes;
        for round in 0..2 {
            let take = if round == 0 { n.div_ceil(2) } else { n };
            let mut sp: Vec<i32> = (0..src_pages as i32).collect();
            shuffle(&mut ck.rng, &mut sp);
            let mut dp: Vec<i32> = (0..dst_pages as i32).collect();
            shuffle(&mut ck.rng, &mut dp);
            let sp: Vec<u32> = sp[..take].iter().map(|&p| p as u32).collect();
            let dp: Vec<u32> = dp[..take].iter().map(|&p| p as u32).collect();
            let fence = ctx.stream().record_event(None)?;
            // The second round is timed as the decode times its copies (start and end events).
            let (start, done) =
                copy.copy((&src, sl), (&dst, dl), &sp, &dp, Some(&fence), round == 1)?;
            done.synchronize()?;
            if let Some(start) = start {
                let ms = start.elapsed_ms(&done)?;
                anyhow::ensure!(ms >= 0.0, "a copy timed at {ms} ms");
            }
            for (&s, &d) in sp.iter().zip(&dp) {
                for lane in 0..layers * 2 {
                    let so = (lane * src_pages + s as usize) * chunk;
                    let d0 = (lane * dst_pages + d as usize) * chunk;
                    expect[d0..d0 + chunk].copy_from_slice(&src_bytes[so..so + chunk]);
                }
            }
            let got = ctx.download_u8(&dst)?;
            let bad = got.iter().zip(&expect).filter(|(a, b)| a != b).count();
            ck.exact(
                "pd_pool_copy",
                format!("L{layers} chunk{chunk} pools{src_pages}->{dst_pages} n{take}"),
                bad,
            );
        }
    }
    Ok(())
}
