//! `CudaBackend`: the server's [`Backend`] trait on one GPU, in f32.
//!
//! Buffers are f32 device tensors ([`CudaBuf`]); ops launch the `backend_f32.cu` kernels on the
//! context's compute stream and return without waiting, so a forward pass queues back to back and
//! only `download` synchronises. Host-side arguments (token ids, positions, slots, page tables) are
//! uploaded per call. Every op checks buffer extents exactly as the CPU backend does before launching.
//!
//! The kernels follow the CPU backend's summation order (see the .cu header), so logits agree with
//! it to an ulp-level difference (from `expf`) and greedy output is identical. f32 weights cost 2x
//! the memory and bandwidth of bf16; the bf16 ops in [`super::ops`] are the later fast path.

use std::sync::Arc;

use super::device::GpuContext;
use super::f32k::{F32Kernels, ATTN_MAX_DIM, LINEAR_ROWS, WARPS};
use super::launch::{Arg, Dims};
use super::tensor::DTensor;
use crate::backend::{check_attention, need, AttnSeq, AttnShape, Backend, KernelError};
use crate::rope::RopeTable;

/// An f32 buffer in GPU memory.
pub struct CudaBuf(DTensor);

impl CudaBuf {
    fn ptr(&self) -> u64 {
        self.0.ptr()
    }
    fn len(&self) -> usize {
        self.0.numel()
    }
}

/// The CUDA compute backend (one GPU).
pub struct CudaBackend {
    k: F32Kernels,
}

type R = Result<(), KernelError>;

fn u(t: &CudaBuf) -> Arg {
    Arg::U64(t.ptr())
}
fn d(t: &DTensor) -> Arg {
    Arg::U64(t.ptr())
}
fn i(v: usize) -> Arg {
    Arg::I32(v as i32)
}
fn shape_err(op: &'static str, detail: String) -> KernelError {
    KernelError::Shape { op, detail }
}

impl CudaBackend {
    /// Loads the f32 kernels on `ctx` (compiling them on first use, then from the disk cache).
    pub fn new(ctx: Arc<GpuContext>) -> Result<Self, KernelError> {
        Ok(Self {
            k: F32Kernels::new(ctx)?,
        })
    }

    /// The GPU this backend runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.k.ctx
    }

    fn copy_rows(&self, src: &CudaBuf, sr: &[u32], dst: &CudaBuf, dr: &[u32], row: usize) -> R {
        let (s, t) = (self.k.upload_u32(sr)?, self.k.upload_u32(dr)?);
        let args = [u(src), d(&s), u(dst), d(&t), i(row)];
        // SAFETY: callers checked every src/dst row index against the buffers' lengths.
        unsafe {
            self.k
                .go(&self.k.copy_rows, Dims::rows(sr.len(), 128), &args)
        }?;
        Ok(())
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn alloc(&self, len: usize) -> Result<CudaBuf, KernelError> {
        self.k.zeros(len).map(CudaBuf).map_err(|e| match e {
            super::CudaError::Driver(_) => KernelError::OutOfMemory(len),
            other => other.into(),
        })
    }

    fn upload(&self, host: &[f32]) -> Result<CudaBuf, KernelError> {
        Ok(CudaBuf(self.k.ctx.upload_f32(&[host.len()], host)?))
    }

    fn download(&self, buf: &CudaBuf, out: &mut [f32]) -> R {
        need("download", "src", buf.len(), out.len())?;
        Ok(self.k.download(buf.ptr(), out)?)
    }

    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len()
    }

    fn embedding(&self, table: &CudaBuf, dim: usize, ids: &[u32], out: &mut CudaBuf) -> R {
        need("embedding", "out", out.len(), ids.len() * dim)?;
        let vocab = table.len() / dim.max(1);
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(shape_err(
                "embedding",
                format!("token id {id} >= vocab {vocab}"),
            ));
        }
        let ids_d = self.k.upload_u32(ids)?;
        let args = [d(&ids_d), u(table), u(out), i(dim)];
        // SAFETY: ids < vocab (checked), out holds ids.len() * dim floats.
        unsafe {
            self.k
                .go(&self.k.embedding, Dims::rows(ids.len(), 128), &args)
        }?;
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &CudaBuf,
        weight: &CudaBuf,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut CudaBuf,
    ) -> R {
        need("rms_norm", "x", x.len(), rows * dim)?;
        need("rms_norm", "weight", weight.len(), dim)?;
        need("rms_norm", "out", out.len(), rows * dim)?;
        let args = [u(x), u(weight), u(out), i(rows), i(dim), Arg::F32(eps)];
        let dims = Dims::rows(rows.div_ceil(WARPS), 32 * WARPS as u32);
        // SAFETY: extents checked above; one warp per row, rows beyond `rows` return early.
        unsafe { self.k.go(&self.k.rms_norm, dims, &args) }?;
        Ok(())
    }

    fn linear(
        &self,
        x: &CudaBuf,
        rows: usize,
        k: usize,
        w: &CudaBuf,
        n: usize,
        bias: Option<&CudaBuf>,
        out: &mut CudaBuf,
    ) -> R {
        need("linear", "x", x.len(), rows * k)?;
        need("linear", "w", w.len(), n * k)?;
        need("linear", "out", out.len(), rows * n)?;
        if let Some(b) = bias {
            need("linear", "bias", b.len(), n)?;
        }
        let bp = Arg::U64(bias.map_or(0, |b| b.ptr()));
        let args = [u(x), u(w), bp, u(out), i(rows), i(k), i(n)];
        let dims = Dims {
            grid: (
                n.div_ceil(WARPS) as u32,
                rows.div_ceil(LINEAR_ROWS) as u32,
                1,
            ),
            block: 32 * WARPS as u32,
            smem: 0,
        };
        // SAFETY: extents checked above; the kernel bounds columns by n and rows by `rows`.
        unsafe { self.k.go(&self.k.linear, dims, &args) }?;
        Ok(())
    }

    fn rope(
        &self,
        x: &mut CudaBuf,
        heads: usize,
        head_dim: usize,
        positions: &[u32],
        table: &RopeTable,
    ) -> R {
        need("rope", "x", x.len(), positions.len() * heads * head_dim)?;
        if let Some(&p) = positions.iter().max() {
            need(
                "rope",
                "table positions",
                table.max_positions,
                p as usize + 1,
            )?;
        }
        let half = head_dim / 2;
        need("rope", "table width", table.half, half)?;
        // Gather this call's cos/sin rows on the host: a few KiB, and no table lives on the GPU.
        let mut cs = Vec::with_capacity(positions.len() * 2 * half);
        for &p in positions {
            let o = p as usize * table.half;
            cs.extend_from_slice(&table.cos[o..o + half]);
            cs.extend_from_slice(&table.sin[o..o + half]);
        }
        let cs_d = self.k.ctx.upload_f32(&[cs.len()], &cs)?;
        let args = [u(x), d(&cs_d), i(heads), i(head_dim)];
        let threads = (heads * half).div_ceil(32).clamp(1, 8) as u32 * 32;
        // SAFETY: x holds positions.len() rows of heads*head_dim; cs holds 2*half per row.
        unsafe {
            self.k
                .go(&self.k.rope, Dims::rows(positions.len(), threads), &args)
        }?;
        Ok(())
    }

    fn silu_mul(&self, gate: &CudaBuf, up: &CudaBuf, len: usize, out: &mut CudaBuf) -> R {
        need("silu_mul", "gate", gate.len(), len)?;
        need("silu_mul", "up", up.len(), len)?;
        need("silu_mul", "out", out.len(), len)?;
        let args = [u(gate), u(up), u(out), Arg::U64(len as u64)];
        // SAFETY: all three buffers hold at least len floats.
        unsafe { self.k.go(&self.k.silu_mul, self.k.flat(len), &args) }?;
        Ok(())
    }

    fn add_inplace(&self, x: &mut CudaBuf, y: &CudaBuf, len: usize) -> R {
        need("add", "x", x.len(), len)?;
        need("add", "y", y.len(), len)?;
        let args = [u(x), u(y), Arg::U64(len as u64)];
        // SAFETY: both buffers hold at least len floats.
        unsafe { self.k.go(&self.k.add, self.k.flat(len), &args) }?;
        Ok(())
    }

    fn store_kv(
        &self,
        k_cache: &mut CudaBuf,
        v_cache: &mut CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        kv_dim: usize,
        slots: &[u32],
    ) -> R {
        need("store_kv", "k", k.len(), slots.len() * kv_dim)?;
        need("store_kv", "v", v.len(), slots.len() * kv_dim)?;
        if let Some(&s) = slots.iter().max() {
            let cache = k_cache.len().min(v_cache.len());
            need("store_kv", "cache", cache, (s as usize + 1) * kv_dim)?;
        }
        let src: Vec<u32> = (0..slots.len() as u32).collect();
        self.copy_rows(k, &src, k_cache, slots, kv_dim)?;
        self.copy_rows(v, &src, v_cache, slots, kv_dim)
    }

    fn attention(
        &self,
        q: &CudaBuf,
        k_cache: &CudaBuf,
        v_cache: &CudaBuf,
        seqs: &[AttnSeq<'_>],
        shape: AttnShape,
        out: &mut CudaBuf,
    ) -> R {
        check_attention(
            q.len(),
            out.len(),
            k_cache.len().min(v_cache.len()),
            seqs,
            shape,
        )?;
        if shape.head_dim > ATTN_MAX_DIM {
            return Err(shape_err(
                "attention",
                format!("head_dim {} > {ATTN_MAX_DIM}", shape.head_dim),
            ));
        }
        let (mut meta, mut pages) = (Vec::new(), Vec::new());
        for s in seqs {
            let used = &s.pages[..s.kv_len.div_ceil(shape.page_size)];
            let off = pages.len() as i32;
            pages.extend_from_slice(used);
            for r in 0..s.q_len {
                let pos = s.kv_len - s.q_len + r;
                meta.extend_from_slice(&[(s.q_start + r) as i32, pos as i32, off]);
            }
        }
        let rows = meta.len() / 3;
        if rows == 0 {
            return Ok(());
        }
        pages.push(0); // never empty: an upload needs at least one element
        let meta_d = self.k.ctx.upload_i32(&[meta.len()], &meta)?;
        let pages_d = self.k.upload_u32(&pages)?;
        let args = [
            u(q),
            u(k_cache),
            u(v_cache),
            d(&meta_d),
            d(&pages_d),
            u(out),
            i(shape.heads),
            i(shape.kv_heads),
            i(shape.head_dim),
            i(shape.page_size),
            Arg::F32(shape.scale),
        ];
        let dims = Dims {
            grid: (rows as u32, shape.heads as u32, 1),
            block: 32,
            smem: 0,
        };
        // SAFETY: every q/out row, page and slot the kernel reads was checked above.
        unsafe { self.k.go(&self.k.attention, dims, &args) }?;
        Ok(())
    }

    fn gather_rows(
        &self,
        src: &CudaBuf,
        row_len: usize,
        src_rows: &[usize],
        out: &mut CudaBuf,
    ) -> R {
        need("gather_rows", "out", out.len(), src_rows.len() * row_len)?;
        if let Some(&r) = src_rows.iter().max() {
            need("gather_rows", "src", src.len(), (r + 1) * row_len)?;
        }
        let sr: Vec<u32> = src_rows.iter().map(|&r| r as u32).collect();
        let dr: Vec<u32> = (0..src_rows.len() as u32).collect();
        self.copy_rows(src, &sr, out, &dr, row_len)
    }

    fn read_range(&self, buf: &CudaBuf, offset: usize, out: &mut [f32]) -> R {
        need("read_range", "buf", buf.len(), offset + out.len())?;
        Ok(self.k.download(buf.ptr() + (offset * 4) as u64, out)?)
    }

    fn write_range(&self, buf: &mut CudaBuf, offset: usize, data: &[f32]) -> R {
        need("write_range", "buf", buf.len(), offset + data.len())?;
        Ok(self.k.upload_at(buf.ptr() + (offset * 4) as u64, data)?)
    }

    fn copy_pages(&self, cache: &mut CudaBuf, page_floats: usize, pairs: &[(u32, u32)]) -> R {
        // One stream-ordered copy per pair keeps the CPU backend's sequential semantics even when
        // a page is both a destination and a later source.
        for &(src, dst) in pairs {
            let (s, t) = (src as usize * page_floats, dst as usize * page_floats);
            need("copy_pages", "cache", cache.len(), s.max(t) + page_floats)?;
            if s != t {
                let at = |o: usize| cache.ptr() + (o * 4) as u64;
                self.k.copy_d2d(at(t), at(s), page_floats * 4)?;
            }
        }
        Ok(())
    }
}
