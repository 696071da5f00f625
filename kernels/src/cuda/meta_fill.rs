//! A decode graph's batch metadata as the parameters of the graph's first node
//! (`decode_meta_fill` in kernels/cuda/elementwise.cu) instead of copies on the stream.
//!
//! A graph replay reads each row's input id, position, KV slot and key count from device
//! buffers. Copying them up before every replay puts two host-to-device copies (metadata, plan
//! tiles) and a device copy (ids from the previous forward's tokens) on the stream between two
//! replays. Here the capture starts with one small kernel whose by-value parameter block holds
//! the rows; before a replay the host sets that block on the graph's executable
//! (`cuGraphExecKernelNodeSetParams`, host work only: launches already queued keep the values
//! they were queued with), and the node writes the rows into the buffers the captured kernels
//! read, the ids of rows continuing a queued forward read from that forward's tokens on the
//! device. Graphs of more rows than [`META_FILL_ROWS`] are captured without the node and copy as
//! before (as do LoRA batches, whose graphs have none). The page tables still go up as their
//! changes (once per page of new tokens).

use std::ffi::c_void;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{sys, CudaGraph};

use super::error::{CudaError, Result};
use super::ops::CudaOps;
use super::tensor::DTensor;

/// Most rows the parameter block holds (`META_FILL_ROWS` in elementwise.cu).
pub const META_FILL_ROWS: usize = 64;

/// The kernel's parameter block, field for field `struct MetaFill` in elementwise.cu.
#[derive(Clone, Copy)]
#[repr(C)]
struct MetaFill {
    n: i32,
    bs: i32,
    ids: u64,
    pos: u64,
    slots: u64,
    tiles: u64,
    prev: u64,
    rows: [[i32; 4]; META_FILL_ROWS],
}

/// One row for the node: its input id (or the index of the previous forward's token that is
/// its id), position, KV slot and key count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FillRow {
    /// The input token, or where in the previous forward's tokens it is.
    pub id: FillId,
    /// The token's position.
    pub pos: i32,
    /// Its KV slot in the pool.
    pub slot: i32,
    /// Keys it attends to, its own included.
    pub kv_len: i32,
}

/// A row's input id: known on the host, or the previous forward's sampled token of that row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillId {
    /// The token id.
    Host(u32),
    /// The previous forward's token at this index.
    Prev(usize),
}

/// Where a graph's metadata node writes: the buffers its captured kernels read.
#[derive(Clone, Copy)]
pub struct MetaBufs<'a> {
    /// A fixed decode plan's tiles ([`super::AttnPlan::tiles`]).
    pub tiles: &'a DTensor,
    /// Input ids, positions and KV slots, `rows` i32 each.
    pub ids: &'a DTensor,
    pub pos: &'a DTensor,
    pub slots: &'a DTensor,
    /// The graph's rows (at most [`META_FILL_ROWS`]).
    pub rows: usize,
}

/// A captured graph's metadata node: where its rows go, and the node to set before a replay.
pub struct MetaNode {
    node: sys::CUgraphNode,
    /// The node's launch (function, grid) as captured.
    base: sys::CUDA_KERNEL_NODE_PARAMS,
    fill: MetaFill,
}

// SAFETY: the node handle belongs to a graph owned by the same runner, used from one thread at
// a time (the graph's own rule); the pointers in `base` are the driver's, read only by it.
unsafe impl Send for MetaNode {}

impl CudaOps {
    /// Captures `forward`'s launches on this context's stream into a graph, after a metadata
    /// node writing into `meta` when given (writing nothing until [`MetaNode::set`]).
    pub fn capture_graph(
        &self,
        meta: Option<MetaBufs<'_>>,
        forward: impl FnOnce() -> Result<()>,
    ) -> Result<(CudaGraph, Option<MetaNode>)> {
        let stream = self.context().stream();
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let run = meta
            .map(|m| self.launch_meta_node(m))
            .transpose()
            .and_then(|launch| forward().map(|()| launch));
        let g = stream.end_capture(CUgraphInstantiate_flags(0));
        let launch = run?;
        let g = g?.ok_or_else(|| CudaError::Shape("empty graph captured".into()))?;
        let node = launch.map(|l| l.locate(&g)).transpose()?;
        Ok((g, node))
    }

    /// Launches the metadata node (n = -1: it writes nothing until set) as the first launch of
    /// a capture; [`MetaNodeLaunch::locate`] finds it in the captured graph.
    fn launch_meta_node(&self, m: MetaBufs<'_>) -> Result<MetaNodeLaunch> {
        let MetaBufs {
            tiles,
            ids,
            pos,
            slots,
            rows: bs,
        } = m;
        if bs > META_FILL_ROWS
            || [ids, pos, slots].iter().any(|t| t.numel() < bs)
            || tiles.numel() < 4 * bs
        {
            return Err(CudaError::Shape(format!(
                "metadata node: {bs} rows (at most {META_FILL_ROWS}, buffers of {} / {} / {} / {} tiles)",
                ids.numel(),
                pos.numel(),
                slots.numel(),
                tiles.numel() / 4
            )));
        }
        let mut fill = MetaFill {
            n: -1,
            bs: bs as i32,
            ids: ids.ptr(),
            pos: pos.ptr(),
            slots: slots.ptr(),
            tiles: tiles.ptr(),
            prev: ids.ptr(),
            rows: [[0; 4]; META_FILL_ROWS],
        };
        let stream = self.context().stream().cu_stream();
        self.context().cuda().bind_to_thread()?;
        let mut params = [&mut fill as *mut MetaFill as *mut c_void];
        // SAFETY: one parameter, the block the kernel declares (layout above); the pointers in
        // it address the checked buffers, and with n = -1 the kernel writes nothing.
        unsafe {
            cudarc::driver::result::launch_kernel(
                self.meta_fill.cu_function(),
                (1, 1, 1),
                (META_FILL_ROWS as u32, 1, 1),
                0,
                stream,
                &mut params,
            )?;
        }
        Ok(MetaNodeLaunch {
            fill,
            func: self.meta_fill.cu_function(),
        })
    }
}

/// The metadata node launched first in a capture, to be found in the captured graph.
struct MetaNodeLaunch {
    fill: MetaFill,
    func: sys::CUfunction,
}

impl MetaNodeLaunch {
    /// The node in `graph`, captured from the stream this launch began: its only root (every
    /// later launch of the capture follows it), a kernel node of the metadata kernel.
    fn locate(self, graph: &CudaGraph) -> Result<MetaNode> {
        let call = |call: &'static str| move |source| CudaError::Call { call, source };
        let mut roots = [std::ptr::null_mut(); 2];
        let mut n = roots.len();
        // SAFETY: room for n root handles; the driver writes at most n and sets n to the count.
        unsafe {
            sys::cuGraphGetRootNodes(graph.cu_graph(), roots.as_mut_ptr(), &mut n)
                .result()
                .map_err(call("cuGraphGetRootNodes"))?;
        }
        if n != 1 {
            return Err(CudaError::Shape(format!(
                "metadata node: the captured graph has {n} roots"
            )));
        }
        // SAFETY: a node of `graph`; base is written by the driver (a kernel node's launch).
        let mut base: sys::CUDA_KERNEL_NODE_PARAMS = unsafe { std::mem::zeroed() };
        unsafe {
            sys::cuGraphKernelNodeGetParams_v2(roots[0], &mut base)
                .result()
                .map_err(call("cuGraphKernelNodeGetParams"))?;
        }
        if base.func != self.func {
            return Err(CudaError::Shape(
                "metadata node: the captured graph's root is another kernel".into(),
            ));
        }
        Ok(MetaNode {
            node: roots[0],
            base,
            fill: self.fill,
        })
    }
}

impl MetaNode {
    /// Sets the node in `graph` (the graph it was captured in) to write `rows` (at most the
    /// graph's rows; the others padding), ids of [`FillId::Prev`] rows read from `prev`. Host
    /// work only: replays already queued keep their parameters.
    pub fn set(
        &mut self,
        graph: &CudaGraph,
        rows: &[FillRow],
        prev: Option<&DTensor>,
    ) -> Result<()> {
        let f = &mut self.fill;
        if rows.len() > f.bs as usize {
            return Err(CudaError::Shape(format!(
                "metadata node: {} rows for a graph of {}",
                rows.len(),
                f.bs
            )));
        }
        for (dst, r) in f.rows.iter_mut().zip(rows) {
            let id = match r.id {
                FillId::Host(t) => t as i32,
                FillId::Prev(k) => match prev {
                    Some(p) if k < p.numel() => -1 - k as i32,
                    _ => {
                        return Err(CudaError::Shape(format!(
                            "metadata node: previous token {k} of {}",
                            prev.map_or(0, |p| p.numel())
                        )))
                    }
                },
            };
            *dst = [id, r.pos, r.slot, r.kv_len];
        }
        f.n = rows.len() as i32;
        f.prev = prev.map_or(f.ids, |p| p.ptr());
        let mut params = [&mut self.fill as *mut MetaFill as *mut c_void];
        let p = sys::CUDA_KERNEL_NODE_PARAMS {
            kernelParams: params.as_mut_ptr(),
            extra: std::ptr::null_mut(),
            ..self.base
        };
        // SAFETY: the parameter block is the kernel's and is copied by the driver before the
        // call returns; a graph without this node is refused by the driver (an error here).
        unsafe {
            sys::cuGraphExecKernelNodeSetParams_v2(graph.cu_graph_exec(), self.node, &p)
                .result()
                .map_err(|source| CudaError::Call {
                    call: "cuGraphExecKernelNodeSetParams",
                    source,
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameter block's layout is the kernel's: 7 header words (two i32, five pointers,
    /// 8-byte aligned) then the rows, within the 4 KiB kernel parameter limit.
    #[test]
    fn the_parameter_block_matches_the_kernel_struct() {
        assert_eq!(std::mem::offset_of!(MetaFill, ids), 8);
        assert_eq!(std::mem::offset_of!(MetaFill, prev), 40);
        assert_eq!(std::mem::offset_of!(MetaFill, rows), 48);
        assert_eq!(std::mem::size_of::<MetaFill>(), 48 + 16 * META_FILL_ROWS);
        assert!(std::mem::size_of::<MetaFill>() <= 4096);
        let src = include_str!("../../cuda/elementwise.cu");
        assert!(src.contains(&format!("#define META_FILL_ROWS {META_FILL_ROWS}")));
    }
}
