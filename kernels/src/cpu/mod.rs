//! The CPU backend: host `Vec<f32>` buffers, f32 math, `rayon` for parallelism.
//!
//! This is the reference every other backend is tested against. Each op checks buffer lengths
//! against the shapes it is given before touching memory.

mod attention;
mod elementwise;
pub mod gemm;

use crate::backend::{check_attention, need, AttnSeq, AttnShape, Backend, KernelError};
use crate::rope::RopeTable;

/// CPU compute backend (stateless; threads come from rayon's global pool).
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    type Buf = Vec<f32>;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>, KernelError> {
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .map_err(|_| KernelError::OutOfMemory(len))?;
        advise_huge(v.as_ptr(), v.capacity());
        v.resize(len, 0.0);
        Ok(v)
    }

    fn upload(&self, host: &[f32]) -> Result<Vec<f32>, KernelError> {
        Ok(host.to_vec())
    }

    fn download(&self, buf: &Vec<f32>, out: &mut [f32]) -> Result<(), KernelError> {
        need("download", "src", buf.len(), out.len())?;
        out.copy_from_slice(&buf[..out.len()]);
        Ok(())
    }

    fn host_ptr(&self, buf: &Vec<f32>) -> Option<*const u8> {
        Some(buf.as_ptr().cast())
    }

    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn embedding(
        &self,
        table: &Vec<f32>,
        dim: usize,
        ids: &[u32],
        out: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        need("embedding", "out", out.len(), ids.len() * dim)?;
        let vocab = table.len() / dim.max(1);
        for (i, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= vocab {
                return Err(KernelError::Shape {
                    op: "embedding",
                    detail: format!("token id {id} >= vocab {vocab}"),
                });
            }
            out[i * dim..(i + 1) * dim].copy_from_slice(&table[id * dim..(id + 1) * dim]);
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &Vec<f32>,
        weight: &Vec<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        need("rms_norm", "x", x.len(), rows * dim)?;
        need("rms_norm", "weight", weight.len(), dim)?;
        need("rms_norm", "out", out.len(), rows * dim)?;
        elementwise::rms_norm(x, weight, rows, dim, eps, out);
        Ok(())
    }

    fn linear(
        &self,
        x: &Vec<f32>,
        rows: usize,
        k: usize,
        w: &Vec<f32>,
        n: usize,
        bias: Option<&Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        need("linear", "x", x.len(), rows * k)?;
        need("linear", "w", w.len(), n * k)?;
        need("linear", "out", out.len(), rows * n)?;
        if let Some(b) = bias {
            need("linear", "bias", b.len(), n)?;
        }
        gemm::linear(x, rows, k, w, n, bias.map(|b| b.as_slice()), out);
        Ok(())
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        heads: usize,
        head_dim: usize,
        positions: &[u32],
        table: &RopeTable,
    ) -> Result<(), KernelError> {
        need("rope", "x", x.len(), positions.len() * heads * head_dim)?;
        if let Some(&p) = positions.iter().max() {
            need(
                "rope",
                "table positions",
                table.max_positions,
                p as usize + 1,
            )?;
        }
        need("rope", "table width", table.half, head_dim / 2)?;
        elementwise::rope(x, heads, head_dim, positions, table);
        Ok(())
    }

    fn silu_mul(
        &self,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        len: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        need("silu_mul", "gate", gate.len(), len)?;
        need("silu_mul", "up", up.len(), len)?;
        need("silu_mul", "out", out.len(), len)?;
        elementwise::silu_mul(&gate[..len], &up[..len], &mut out[..len]);
        Ok(())
    }

    fn add_inplace(&self, x: &mut Vec<f32>, y: &Vec<f32>, len: usize) -> Result<(), KernelError> {
        need("add", "x", x.len(), len)?;
        need("add", "y", y.len(), len)?;
        elementwise::add_inplace(&mut x[..len], &y[..len]);
        Ok(())
    }

    fn store_kv(
        &self,
        k_cache: &mut Vec<f32>,
        v_cache: &mut Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        kv_dim: usize,
        slots: &[u32],
    ) -> Result<(), KernelError> {
        need("store_kv", "k", k.len(), slots.len() * kv_dim)?;
        need("store_kv", "v", v.len(), slots.len() * kv_dim)?;
        for (i, &s) in slots.iter().enumerate() {
            let s = s as usize;
            need(
                "store_kv",
                "cache",
                k_cache.len().min(v_cache.len()),
                (s + 1) * kv_dim,
            )?;
            k_cache[s * kv_dim..(s + 1) * kv_dim].copy_from_slice(&k[i * kv_dim..(i + 1) * kv_dim]);
            v_cache[s * kv_dim..(s + 1) * kv_dim].copy_from_slice(&v[i * kv_dim..(i + 1) * kv_dim]);
        }
        Ok(())
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        k_cache: &Vec<f32>,
        v_cache: &Vec<f32>,
        seqs: &[AttnSeq<'_>],
        shape: AttnShape,
        out: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        let cache = k_cache.len().min(v_cache.len());
        check_attention(q.len(), out.len(), cache, seqs, shape)?;
        attention::attention(q, k_cache, v_cache, seqs, shape, out);
        Ok(())
    }

    fn gather_rows(
        &self,
        src: &Vec<f32>,
        row_len: usize,
        src_rows: &[usize],
        out: &mut Vec<f32>,
    ) -> Result<(), KernelError> {
        need("gather_rows", "out", out.len(), src_rows.len() * row_len)?;
        for (i, &r) in src_rows.iter().enumerate() {
            need("gather_rows", "src", src.len(), (r + 1) * row_len)?;
            out[i * row_len..(i + 1) * row_len]
                .copy_from_slice(&src[r * row_len..(r + 1) * row_len]);
        }
        Ok(())
    }

    fn read_range(
        &self,
        buf: &Vec<f32>,
        offset: usize,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        need("read_range", "buf", buf.len(), offset + out.len())?;
        out.copy_from_slice(&buf[offset..offset + out.len()]);
        Ok(())
    }

    fn write_range(
        &self,
        buf: &mut Vec<f32>,
        offset: usize,
        data: &[f32],
    ) -> Result<(), KernelError> {
        need("write_range", "buf", buf.len(), offset + data.len())?;
        buf[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn copy_pages(
        &self,
        cache: &mut Vec<f32>,
        page_floats: usize,
        pairs: &[(u32, u32)],
    ) -> Result<(), KernelError> {
        for &(src, dst) in pairs {
            let (s, d) = (src as usize * page_floats, dst as usize * page_floats);
            need("copy_pages", "cache", cache.len(), s.max(d) + page_floats)?;
            cache.copy_within(s..s + page_floats, d);
        }
        Ok(())
    }
}

/// Asks for transparent huge pages on a large buffer before its first touch (a no-op where THP
/// is off or the buffer is small): the KV cache is read by other processes page run by page run
/// (the PD same-host copy pins every 4 KiB page it crosses; a huge page once), and attention
/// walks it with fewer TLB misses.
fn advise_huge(ptr: *const f32, capacity: usize) {
    const HUGE: usize = 2 << 20;
    let (start, len) = (ptr as usize, capacity * 4);
    if len < 4 * HUGE {
        return;
    }
    let lo = start.next_multiple_of(HUGE);
    let hi = (start + len) / HUGE * HUGE;
    if hi > lo {
        // SAFETY: advice only, on whole pages inside this process's own allocation.
        unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
    }
}
