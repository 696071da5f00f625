//! Chunk planning for the RDMA data path (pure, compiled without the `rdma` feature).
//!
//! The values of one request travel back to back, in item order, cut into messages of at most the
//! agreed chunk size: one SEND per chunk into one pre-posted receive buffer. Sender and receiver
//! compute the same plan from the same lengths (the PUT items, or the GET response's hit lengths),
//! so no per-chunk header travels: a chunk's spans say which bytes of which items it carries.

use crate::error::{ClusterError, ClusterResult};
use crate::proto::MAX_PAYLOAD;

/// `len` bytes of item `item` starting at offset `off` of that item's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub item: usize,
    pub off: usize,
    pub len: usize,
}

/// One message: its length and the item spans it carries, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunk {
    pub len: usize,
    pub spans: Vec<Span>,
}

/// Cuts the concatenation of values of the given lengths into chunks of at most `chunk` bytes
/// (every chunk but the last is full). Zero-length items are skipped; an empty or all-empty batch
/// has no chunks.
pub fn plan(lens: &[usize], chunk: usize) -> ClusterResult<Vec<Chunk>> {
    if chunk == 0 {
        return Err(ClusterError::Config("RDMA chunk size of 0".into()));
    }
    let total = lens
        .iter()
        .try_fold(0u64, |a, &l| a.checked_add(l as u64))
        .filter(|&t| t <= MAX_PAYLOAD)
        .ok_or_else(|| ClusterError::Protocol(format!("RDMA batch exceeds {MAX_PAYLOAD} bytes")))?;
    let mut out = Vec::with_capacity(total.div_ceil(chunk as u64) as usize);
    let mut cur = Chunk::default();
    for (item, &len) in lens.iter().enumerate() {
        let mut off = 0;
        while off < len {
            let n = (len - off).min(chunk - cur.len);
            cur.spans.push(Span { item, off, len: n });
            cur.len += n;
            off += n;
            if cur.len == chunk {
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    if cur.len > 0 {
        out.push(cur);
    }
    Ok(out)
}

/// Copies a chunk's spans out of the items' values into `out` (exactly `c.len` bytes).
pub fn gather(c: &Chunk, src: &[&[u8]], out: &mut [u8]) {
    let mut at = 0;
    for s in &c.spans {
        out[at..at + s.len].copy_from_slice(&src[s.item][s.off..s.off + s.len]);
        at += s.len;
    }
}

/// Copies a received chunk (`data`, exactly `c.len` bytes) into the items' destinations.
pub fn scatter(c: &Chunk, data: &[u8], dst: &mut [&mut [u8]]) {
    let mut at = 0;
    for s in &c.spans {
        dst[s.item][s.off..s.off + s.len].copy_from_slice(&data[at..at + s.len]);
        at += s.len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_across_items() {
        let p = plan(&[5, 0, 7, 2], 4).unwrap();
        assert_eq!(p.iter().map(|c| c.len).collect::<Vec<_>>(), [4, 4, 4, 2]);
        assert_eq!(
            p[1].spans,
            [
                Span {
                    item: 0,
                    off: 4,
                    len: 1
                },
                Span {
                    item: 2,
                    off: 0,
                    len: 3
                }
            ]
        );
        assert!(plan(&[], 4).unwrap().is_empty());
        assert!(plan(&[0, 0], 4).unwrap().is_empty());
    }

    #[test]
    fn gather_then_scatter_roundtrips() {
        let vals: Vec<Vec<u8>> = [3000usize, 1, 9000, 4096]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b * 7 + i) as u8).collect())
            .collect();
        let src: Vec<&[u8]> = vals.iter().map(|v| &v[..]).collect();
        let lens: Vec<usize> = vals.iter().map(Vec::len).collect();
        for chunk in [1, 4096, 5000, 1 << 20] {
            let mut back: Vec<Vec<u8>> = lens.iter().map(|&n| vec![0; n]).collect();
            let mut dst: Vec<&mut [u8]> = back.iter_mut().map(|v| &mut v[..]).collect();
            let mut buf = vec![0u8; chunk];
            let p = plan(&lens, chunk).unwrap();
            assert_eq!(p.len(), lens.iter().sum::<usize>().div_ceil(chunk));
            for c in &p {
                gather(c, &src, &mut buf[..c.len]);
                scatter(c, &buf[..c.len], &mut dst);
            }
            assert_eq!(back, vals);
        }
    }

    #[test]
    fn rejects_zero_chunk_and_oversize_batch() {
        assert!(matches!(plan(&[1], 0), Err(ClusterError::Config(_))));
        let over = [MAX_PAYLOAD as usize, 1];
        assert!(matches!(plan(&over, 4096), Err(ClusterError::Protocol(_))));
        assert!(plan(&[usize::MAX, usize::MAX], 4096).is_err());
    }
}
