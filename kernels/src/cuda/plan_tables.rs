//! A fixed decode plan's page tables (`CudaOps::update_decode_plan`): each plan keeps a host
//! mirror of what the GPU holds, and an update sends only the entries that changed, as runs
//! copied as they are or, when scattered, as (index, page) pairs written by one `scatter_i32`
//! launch. A table is `max_pages` (the context length over the page size) wide per row, while a
//! decode step changes a row once per page of new tokens.

use super::device::GpuContext;
use super::error::Result;
use super::launch::{Arg, Dims};
use super::ops::CudaOps;
use super::tensor::{DTensor, DType};

/// What a fixed decode plan's page tables hold on the GPU: per row the entries written so far
/// (a row's prefix; past it the GPU's entries are unknown and never read), so the mirror grows
/// with the pages in use, not with the context length. And the buffer that carries changed
/// entries to `scatter_i32`.
pub(crate) struct TableMirror {
    pub(crate) rows: Vec<Vec<u32>>,
    scatter: DTensor,
}

impl TableMirror {
    /// A mirror of `rows` rows none of whose entries the GPU is known to hold.
    pub(crate) fn new(ctx: &GpuContext, rows: usize) -> Result<Self> {
        Ok(TableMirror {
            rows: vec![Vec::new(); rows],
            scatter: ctx.alloc(DType::I32, &[1 + 2 * SCATTER_MAX])?,
        })
    }
}

/// Unchanged table entries between two changed ones written anyway rather than starting another
/// copy (each copy costs a driver call).
const TABLE_WRITE_GAP: usize = 16;
/// Most changed table entries a plan update scatters in one launch (more go up as runs).
const SCATTER_MAX: usize = 4096;

/// What a page-table update must send: runs (row, [start, end)) of entries that changed within
/// a row (joined across gaps of up to [`TABLE_WRITE_GAP`] entries) and the changed entries as
/// (index into the `width`-wide table, page) pairs after a count slot (`scatter_i32`'s layout,
/// the count left 0).
pub(crate) struct TableChanges {
    runs: Vec<(usize, usize, usize)>,
    pairs: Vec<i32>,
}

/// Brings the mirror's rows (`TableMirror::rows`) to `rows` (row i's pages at its first entries;
/// a row's entries past its own pages are never read, so they are neither compared nor
/// written) and returns what changed. A row whose known entries are unchanged (a decode step's
/// usual case: pages only appended) costs one slice comparison. Only entries that differ from
/// the mirror's are checked against the pool's `pool_pages` (the mirror's were checked when
/// written): `Err((row, page))` on the first outside it, the mirror then partly updated.
pub(crate) fn table_changes<'a>(
    mirror: &mut [Vec<u32>],
    width: usize,
    pool_pages: usize,
    rows: impl Iterator<Item = &'a [u32]>,
) -> std::result::Result<TableChanges, (usize, u32)> {
    let mut ch = TableChanges {
        runs: Vec::new(),
        pairs: vec![0],
    };
    for (si, (pages, known)) in rows.zip(mirror.iter_mut()).enumerate() {
        let same = known.len().min(pages.len());
        let start = if pages[..same] == known[..same] {
            same
        } else {
            0
        };
        for (k, &p) in pages.iter().enumerate().skip(start) {
            if known.get(k) == Some(&p) {
                continue;
            }
            if p as usize >= pool_pages {
                return Err((si, p));
            }
            // k is at most known.len(): the entries before it were just brought up to date.
            if k < known.len() {
                known[k] = p;
            } else {
                known.push(p);
            }
            ch.pairs.extend([(si * width + k) as i32, p as i32]);
            match ch.runs.last_mut() {
                Some(r) if r.0 == si && k <= r.2 + TABLE_WRITE_GAP => r.2 = k + 1,
                _ => ch.runs.push((si, k, k + 1)),
            }
        }
    }
    Ok(ch)
}

impl CudaOps {
    /// Sends `ch` (already in the mirror `m`) to a plan's `tables` (rows `width` entries wide).
    pub(crate) fn write_table_changes(
        &self,
        tables: &DTensor,
        width: usize,
        m: &TableMirror,
        mut ch: TableChanges,
    ) -> Result<()> {
        let n = (ch.pairs.len() - 1) / 2;
        if ch.runs.len() > 2 && n <= SCATTER_MAX {
            // Scattered entries (a new page per row at page size 1): one copy and one launch.
            ch.pairs[0] = n as i32;
            self.ctx.write_i32(&m.scatter, &ch.pairs)?;
            let args = [
                Arg::U64(m.scatter.ptr()),
                Arg::U64(tables.ptr()),
                Arg::I32(tables.numel() as i32),
            ];
            return self.go(&self.scatter_i32, Dims::rows(n.div_ceil(256), 256), &args);
        }
        for (row, a, b) in ch.runs {
            let at = row * width + a;
            // (Page ids below the pool size, checked by table_changes: the kernels' i32s.)
            self.ctx
                .write_u32(&tables.view(at, &[b - a])?, &m.rows[row][a..b])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded random walk of page-table updates (rows grow, are replaced, or vanish): applying
    /// each update's runs (copied from the mirror) or its pairs (scattered) to a copy of what the
    /// "GPU" held leaves every row's pages there, and only changed entries are listed.
    #[test]
    fn page_table_changes_bring_the_gpu_copy_to_the_rows() {
        let mut rng = crate::seeded::SplitMix64(crate::seeded::test_seed());
        let mut range = |lo: usize, hi: usize| rng.range(lo, hi);
        let (width, batch, pool) = (300, 6, 1000);
        let mut mirror: Vec<Vec<u32>> = vec![Vec::new(); batch];
        let (mut by_runs, mut by_pairs) =
            (vec![u32::MAX; width * batch], vec![u32::MAX; width * batch]);
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); batch];
        for step in 0..200 {
            for r in rows.iter_mut() {
                match range(0, 10) {
                    0 => {
                        let len = range(1, width);
                        *r = (0..len).map(|_| range(0, pool) as u32).collect()
                    }
                    1 => r.clear(),
                    2 if !r.is_empty() => {
                        // One entry replaced in place (a prefix the mirror no longer matches).
                        let k = range(0, r.len());
                        r[k] = range(0, pool) as u32;
                    }
                    _ if r.len() < width => r.push(range(0, pool) as u32),
                    _ => {}
                }
            }
            let live = range(0, batch + 1);
            let before = mirror.clone();
            let ch = table_changes(
                &mut mirror,
                width,
                pool,
                rows[..live].iter().map(|r| &r[..]),
            )
            .expect("every page inside the pool");
            let changed: usize = rows[..live]
                .iter()
                .zip(&before)
                .map(|(r, b)| {
                    r.iter()
                        .enumerate()
                        .filter(|&(k, p)| b.get(k) != Some(p))
                        .count()
                })
                .sum();
            assert_eq!((ch.pairs.len() - 1) / 2, changed, "step {step}");
            for &(row, a, b) in &ch.runs {
                by_runs[row * width + a..row * width + b].copy_from_slice(&mirror[row][a..b]);
            }
            for pair in ch.pairs[1..].chunks_exact(2) {
                by_pairs[pair[0] as usize] = pair[1] as u32;
            }
            for (si, r) in rows[..live].iter().enumerate() {
                let at = si * width;
                assert_eq!(
                    &by_runs[at..at + r.len()],
                    &r[..],
                    "step {step} row {si} (runs)"
                );
                assert_eq!(
                    &by_pairs[at..at + r.len()],
                    &r[..],
                    "step {step} row {si} (pairs)"
                );
                assert_eq!(
                    &mirror[si][..r.len()],
                    &r[..],
                    "step {step} row {si} (mirror)"
                );
            }
            // Runs stay within a row, in order, apart by more than the gap.
            for w in ch.runs.windows(2) {
                assert!(
                    w[1].0 > w[0].0 || w[1].1 > w[0].2 + TABLE_WRITE_GAP,
                    "step {step}: {:?}",
                    ch.runs
                );
            }
        }
        // A page outside the pool is refused, in a changed entry as in a new one.
        let mut m = vec![vec![3u32, 4]];
        let bad = [3u32, 4, pool as u32];
        assert_eq!(
            table_changes(&mut m, width, pool, [&bad[..]].into_iter()).err(),
            Some((0, pool as u32))
        );
        let mut m = vec![vec![3u32, 4]];
        let bad = [pool as u32 + 7, 4];
        assert_eq!(
            table_changes(&mut m, width, pool, [&bad[..]].into_iter()).err(),
            Some((0, pool as u32 + 7))
        );
    }
}
