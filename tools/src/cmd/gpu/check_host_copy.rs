//! `gpu check` step "host_copy": the HiCache L1 <-> L2 path (`HostKvCopy` over a `HostRegion`,
//! i.e. host memory owned by the caller and page-locked in place). Random page lists between a
//! random GPU pool and a random host pool, for the page_first and page_first_direct host layouts,
//! the copy kernel and (page_first_direct) the direct memcpy backend: loads (layer by layer,
//! each layer's event awaited) and stores must be byte-exact against the layouts written out on
//! the host, and bytes outside the listed pages must be untouched.

use std::sync::Arc;

use rand::Rng;
use strata_engine::AlignedBuf;
use strata_kernels::cuda::{GpuContext, HostIo, HostKvCopy, HostKvGeometry, HostRegion};

use super::check::{shuffle, Checker};

/// Byte offset of row (t, l) of page `p`'s K (`kv = 0`) or V object in the host pool.
fn host_off(g: &HostKvGeometry, p: usize, kv: usize, t: usize, l: usize) -> usize {
    kv * g.host_pages * g.obj_bytes() + p * g.obj_bytes() + t * g.tok_stride + l * g.layer_stride
}

/// Byte offset of row (slot of page `p`, token t) of layer l's K or V in the GPU pool.
fn pool_off(g: &HostKvGeometry, p: usize, kv: usize, t: usize, l: usize) -> usize {
    ((l * 2 + kv) * g.pool_pages * g.page_size + p * g.page_size + t) * g.row_bytes
}

/// The expected bytes of a copy of pages `hp[i]` <-> `dev[i]`, every row of every layer: host ->
/// pool (`to_pool`, `src` host bytes, `dst` pool bytes) or pool -> host.
fn place(g: &HostKvGeometry, dev: &[u32], hp: &[u32], src: &[u8], dst: &mut [u8], to_pool: bool) {
    let row = g.row_bytes;
    for (&d, &h) in dev.iter().zip(hp) {
        for l in 0..g.layers {
            for kv in 0..2 {
                for t in 0..g.page_size {
                    let po = pool_off(g, d as usize, kv, t, l);
                    let ho = host_off(g, h as usize, kv, t, l);
                    let (from, to) = if to_pool { (ho, po) } else { (po, ho) };
                    dst[to..to + row].copy_from_slice(&src[from..from + row]);
                }
            }
        }
    }
}

fn diff(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count() + a.len().abs_diff(b.len())
}

pub fn check_host_copy(ctx: &Arc<GpuContext>, ck: &mut Checker) -> anyhow::Result<()> {
    // (layers, page_size, row_bytes, pool pages, host pages, pages moved)
    let shapes = [
        (3, 16, 256, 29, 23, 11),
        (4, 64, 1024, 20, 12, 9),
        (2, 1, 16, 9, 9, 9),
    ];
    for (layers, ps, row, pool_pages, host_pages, n) in shapes {
        for (direct_layout, io) in [
            (false, HostIo::Kernel),
            (true, HostIo::Kernel),
            (true, HostIo::Direct),
        ] {
            let (tok_stride, layer_stride) = if direct_layout {
                (row, ps * row)
            } else {
                (layers * row, row)
            };
            let g = HostKvGeometry {
                layers,
                page_size: ps,
                row_bytes: row,
                pool_pages,
                host_pages,
                tok_stride,
                layer_stride,
            };
            let copy = HostKvCopy::new(ctx.clone(), g, io)?;
            let mut host = AlignedBuf::try_new(g.host_bytes())
                .ok_or_else(|| anyhow::anyhow!("host buffer"))?;
            ck.rng.fill(&mut host[..g.host_bytes()]);
            // SAFETY: `host` outlives `region` (dropped at the end of this iteration, after it).
            let region = unsafe { HostRegion::register(ctx, host.as_mut_ptr(), g.host_bytes())? };
            let mut pool_bytes = vec![0u8; layers * 2 * pool_pages * ps * row];
            ck.rng.fill(&mut pool_bytes[..]);
            let pool = ctx.upload_u8(&[pool_bytes.len()], &pool_bytes)?;
            let mut dev: Vec<u32> = (0..pool_pages as u32).collect();
            shuffle(&mut ck.rng, &mut dev);
            dev.truncate(n);
            let mut hp: Vec<u32> = (0..host_pages as u32).collect();
            shuffle(&mut ck.rng, &mut hp);
            hp.truncate(n);
            let shape = format!(
                "{} {io:?} L{layers} page{ps} row{row} n{n}",
                if direct_layout {
                    "page_first_direct"
                } else {
                    "page_first"
                }
            );
            // Load: host -> GPU, layer by layer.
            let ev = copy.load(&pool, &region, &hp, &dev)?;
            for l in 0..layers {
                ev.synchronize(l)?;
            }
            let got = ctx.download_u8(&pool)?;
            let mut expect = pool_bytes.clone();
            place(&g, &dev, &hp, &host[..g.host_bytes()], &mut expect, true);
            ck.exact("hicache_load", shape.clone(), diff(&got, &expect));
            // Store: GPU -> host with another pairing, into a pool poisoned with 0xA5.
            drop(ev);
            host[..g.host_bytes()].fill(0xA5);
            shuffle(&mut ck.rng, &mut hp);
            copy.store(&pool, &region, &dev, &hp)?;
            let mut expect_h = vec![0xA5u8; g.host_bytes()];
            place(&g, &dev, &hp, &expect, &mut expect_h, false);
            ck.exact(
                "hicache_store",
                shape.clone(),
                diff(&host[..g.host_bytes()], &expect_h),
            );
            drop(region);
            if io == HostIo::Kernel {
                staged(ctx, ck, &copy, &g, &pool_bytes, &dev, &hp, &shape)?;
            }
        }
    }
    Ok(())
}

/// The same moves staged through device memory laid out like the host pool (host memory that is
/// not page-locked, e.g. PD staging buffers): `load_device` from a random staging buffer and
/// `store_device` into a poisoned one, byte-exact.
#[allow(clippy::too_many_arguments)]
fn staged(
    ctx: &Arc<GpuContext>,
    ck: &mut Checker,
    copy: &HostKvCopy,
    g: &HostKvGeometry,
    pool_bytes: &[u8],
    dev: &[u32],
    hp: &[u32],
    shape: &str,
) -> anyhow::Result<()> {
    let mut src = vec![0u8; g.host_bytes()];
    ck.rng.fill(&mut src[..]);
    let pool = ctx.upload_u8(&[pool_bytes.len()], pool_bytes)?;
    let staging = ctx.upload_u8(&[src.len()], &src)?;
    let ev = copy.load_device(&pool, staging, hp, dev)?;
    for l in 0..g.layers {
        ev.synchronize(l)?;
    }
    let got = ctx.download_u8(&pool)?;
    let mut expect = pool_bytes.to_vec();
    place(g, dev, hp, &src, &mut expect, true);
    ck.exact("staged_load", shape.to_string(), diff(&got, &expect));
    let out = ctx.upload_u8(&[src.len()], &vec![0xA5u8; src.len()])?;
    copy.store_device(&pool, &out, dev, hp)?;
    let got_h = ctx.download_u8(&out)?;
    let mut expect_h = vec![0xA5u8; src.len()];
    place(g, dev, hp, &expect, &mut expect_h, false);
    ck.exact("staged_store", shape.to_string(), diff(&got_h, &expect_h));
    Ok(())
}
