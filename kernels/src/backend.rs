//! The compute-backend trait: the ops of a Llama-family forward pass over backend-owned buffers.
//!
//! Shapes are passed explicitly (row-major, rows × cols); implementations check them and return
//! [`KernelError::Shape`] instead of reading out of bounds. The paged KV cache of one layer is a pair
//! of buffers of `slots × kv_heads × head_dim` values where slot = `page * page_size + offset`; a
//! sequence's pages are listed in [`AttnSeq::pages`] in position order.

use crate::rope::RopeTable;

/// Errors from a backend op.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A buffer is smaller than the shape passed with it.
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    /// The device could not allocate a buffer.
    #[error("out of device memory allocating {0} floats")]
    OutOfMemory(usize),
    /// The device or its driver failed (a GPU backend's driver, NVRTC or launch error).
    #[error("device error: {0}")]
    Device(String),
}

/// One sequence of an attention call.
///
/// Its `q_len` new tokens are rows `q_start..q_start + q_len` of the query buffer and sit at
/// positions `kv_len - q_len .. kv_len`; their K/V must already be stored. Each query attends
/// causally to positions `0..=its own`.
#[derive(Debug, Clone, Copy)]
pub struct AttnSeq<'a> {
    pub q_start: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub pages: &'a [u32],
}

/// Head geometry of an attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub page_size: usize,
    pub scale: f32,
}

/// A compute backend. All buffers hold `f32`.
pub trait Backend: Send + Sync + 'static {
    /// A buffer in the backend's memory.
    type Buf: Send + Sync;

    /// Short name for logs and `/get_server_info` ("cpu", "cuda").
    fn name(&self) -> &'static str;
    /// A zeroed buffer of `len` floats.
    fn alloc(&self, len: usize) -> Result<Self::Buf, KernelError>;
    /// Copies host data into a new buffer.
    fn upload(&self, host: &[f32]) -> Result<Self::Buf, KernelError>;
    /// Copies the first `out.len()` floats of `buf` to the host.
    fn download(&self, buf: &Self::Buf, out: &mut [f32]) -> Result<(), KernelError>;
    /// Number of floats in `buf`.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Address of `buf`'s first float in this process's memory, when the backend keeps buffers
    /// in host memory (the CPU backend); stable for the buffer's life.
    fn host_ptr(&self, _buf: &Self::Buf) -> Option<*const u8> {
        None
    }

    /// `out[i] = table[ids[i]]` (rows of `dim`).
    fn embedding(
        &self,
        table: &Self::Buf,
        dim: usize,
        ids: &[u32],
        out: &mut Self::Buf,
    ) -> Result<(), KernelError>;
    /// RMSNorm of `rows` rows of `dim`: `x / sqrt(mean(x²) + eps) * weight`.
    fn rms_norm(
        &self,
        x: &Self::Buf,
        weight: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<(), KernelError>;
    /// `out (rows × n) = x (rows × k) · wᵀ (w is n × k) + bias`.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        x: &Self::Buf,
        rows: usize,
        k: usize,
        w: &Self::Buf,
        n: usize,
        bias: Option<&Self::Buf>,
        out: &mut Self::Buf,
    ) -> Result<(), KernelError>;
    /// Rotary embedding in place on `rows × heads × head_dim` (rotate-half convention); row `i` is
    /// at position `positions[i]`.
    fn rope(
        &self,
        x: &mut Self::Buf,
        heads: usize,
        head_dim: usize,
        positions: &[u32],
        table: &RopeTable,
    ) -> Result<(), KernelError>;
    /// `out = silu(gate) * up`, elementwise over `len` values.
    fn silu_mul(
        &self,
        gate: &Self::Buf,
        up: &Self::Buf,
        len: usize,
        out: &mut Self::Buf,
    ) -> Result<(), KernelError>;
    /// `x += y` over `len` values.
    fn add_inplace(&self, x: &mut Self::Buf, y: &Self::Buf, len: usize) -> Result<(), KernelError>;
    /// Scatters rows of `k`/`v` (`slots.len() × kv_dim`) into the cache at `slots`.
    fn store_kv(
        &self,
        k_cache: &mut Self::Buf,
        v_cache: &mut Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        kv_dim: usize,
        slots: &[u32],
    ) -> Result<(), KernelError>;
    /// Causal attention over the paged cache for every sequence; writes `q rows × heads × head_dim`.
    fn attention(
        &self,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        seqs: &[AttnSeq<'_>],
        shape: AttnShape,
        out: &mut Self::Buf,
    ) -> Result<(), KernelError>;
    /// Copies `count × row_len` floats from rows `src_rows` of `src` into consecutive rows of `out`
    /// (gathers the rows whose logits are needed).
    fn gather_rows(
        &self,
        src: &Self::Buf,
        row_len: usize,
        src_rows: &[usize],
        out: &mut Self::Buf,
    ) -> Result<(), KernelError>;
    /// Copies `out.len()` floats starting at float `offset` of `buf` to the host (the hierarchical
    /// cache's device -> host page copies).
    fn read_range(
        &self,
        buf: &Self::Buf,
        offset: usize,
        out: &mut [f32],
    ) -> Result<(), KernelError>;
    /// Copies `data` into `buf` starting at float `offset` (host -> device page loads).
    fn write_range(
        &self,
        buf: &mut Self::Buf,
        offset: usize,
        data: &[f32],
    ) -> Result<(), KernelError>;
    /// Copies whole KV pages `src → dst` within one layer's cache (copy-on-write of shared pages,
    /// and the seam the hierarchical cache's page movers use).
    fn copy_pages(
        &self,
        cache: &mut Self::Buf,
        page_floats: usize,
        pairs: &[(u32, u32)],
    ) -> Result<(), KernelError>;
}

/// Returns a shape error unless `buf_len >= need`.
pub(crate) fn need(
    op: &'static str,
    what: &str,
    buf_len: usize,
    need: usize,
) -> Result<(), KernelError> {
    if buf_len < need {
        return Err(KernelError::Shape {
            op,
            detail: format!("{what}: buffer has {buf_len} floats, needs {need}"),
        });
    }
    Ok(())
}

/// The checks every backend's `attention` makes before it reads anything: a valid head grouping
/// and page size, and per sequence that q and out hold its rows, its pages hold its keys, and
/// the caches (`cache_len` floats each) hold every page it reads.
pub(crate) fn check_attention(
    q_len: usize,
    out_len: usize,
    cache_len: usize,
    seqs: &[AttnSeq<'_>],
    shape: AttnShape,
) -> Result<(), KernelError> {
    let op = "attention";
    if shape.kv_heads == 0 || shape.heads % shape.kv_heads != 0 || shape.page_size == 0 {
        return Err(KernelError::Shape {
            op,
            detail: format!("heads {} / kv_heads {}", shape.heads, shape.kv_heads),
        });
    }
    let row_len = shape.heads * shape.head_dim;
    let kv_dim = shape.kv_heads * shape.head_dim;
    for s in seqs {
        need(op, "q", q_len, (s.q_start + s.q_len) * row_len)?;
        need(op, "out", out_len, (s.q_start + s.q_len) * row_len)?;
        need(op, "pages", s.pages.len() * shape.page_size, s.kv_len)?;
        if s.q_len > s.kv_len {
            return Err(KernelError::Shape {
                op,
                detail: format!("q_len {} > kv_len {}", s.q_len, s.kv_len),
            });
        }
        let used = &s.pages[..s.kv_len.div_ceil(shape.page_size)];
        let max_page = used.iter().copied().max().unwrap_or(0) as usize;
        need(
            op,
            "k_cache",
            cache_len,
            (max_page + 1) * shape.page_size * kv_dim,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(heads: usize, kv_heads: usize, page_size: usize) -> AttnShape {
        AttnShape {
            heads,
            kv_heads,
            head_dim: 4,
            page_size,
            scale: 0.5,
        }
    }

    /// What `check_attention` says of one sequence: `None` when it passes, else the error text.
    fn verdict(q_len: usize, cache_len: usize, seq: AttnSeq<'_>, s: AttnShape) -> Option<String> {
        check_attention(q_len, q_len, cache_len, &[seq], s)
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn attention_inputs_are_checked_before_any_read() {
        // 2 heads of 4 over 1 KV head, pages of 2 keys: a row is 8 floats, a page 8 floats.
        let s = shape(2, 1, 2);
        let seq = |q_start, q_len, kv_len, pages| AttnSeq {
            q_start,
            q_len,
            kv_len,
            pages,
        };
        // 3 rows after 5 cached keys on pages 3, 0, 1, 2 (5 keys use pages 3, 0, 1; page 2
        // unused): the cache must hold page 3.
        assert_eq!(verdict(24, 32, seq(0, 3, 5, &[3, 0, 1, 2]), s), None);
        // Pages past the keys are not read, so not checked against the cache.
        assert_eq!(verdict(24, 32, seq(0, 3, 5, &[3, 0, 1, 9]), s), None);
        let refused = [
            (verdict(24, 24, seq(0, 3, 5, &[3, 0, 1]), s), "k_cache"),
            (verdict(16, 32, seq(0, 3, 5, &[3, 0, 1]), s), "q:"),
            (verdict(24, 32, seq(0, 3, 5, &[3, 0]), s), "pages"),
            (
                verdict(48, 32, seq(0, 6, 5, &[3, 0, 1]), s),
                "q_len 6 > kv_len 5",
            ),
            (
                verdict(24, 32, seq(0, 3, 5, &[3, 0, 1]), shape(3, 2, 2)),
                "kv_heads",
            ),
            (
                verdict(24, 32, seq(0, 3, 5, &[3, 0, 1]), shape(2, 1, 0)),
                "kv_heads",
            ),
        ];
        for (i, (got, want)) in refused.iter().enumerate() {
            let got = got.as_deref().unwrap_or_else(|| panic!("case {i} passed"));
            assert!(got.contains(want), "case {i}: {got:?} lacks {want:?}");
        }
    }
}
