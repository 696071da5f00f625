// wgmma (sm_90a) primitives shared by the programs compiled for sm_90a (the prefill attention of
// attention_prefill_wg.cu and the GEMM of gemm_wg.cu; prepended after common.cuh by
// kernels/src/cuda/nvrtc.rs): fences, commit / wait of wgmma groups, shared-memory matrix
// descriptors in the 128-byte swizzle, and the mbarrier and TMA operations of the GEMM's
// producer / consumer pipeline.
// Makes this thread's completed cp.async writes visible to wgmma's (async proxy) reads.
__device__ __forceinline__ void wg_fence_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit_mma() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wg_wait_mma() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses of an accumulator across the asynchronous wgmma.
template <int N>
__device__ __forceinline__ void wg_pin(float* d) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N>
__device__ __forceinline__ void wg_pin_u(u32* d) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+r"(d[i])::"memory");
}
// Shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride byte
// offsets (16-byte units), swizzle mode 1 in bits 62-63.
__device__ __forceinline__ u64 wg_desc(u32 addr, u32 lbo, u32 sbo) {
    return (u64)((addr & 0x3FFFFu) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32) |
           (1ull << 62);
}
// mbarrier in shared memory (address `bar`): init with `count` arrivals per phase, arrive,
// arrive + expect `bytes` of TMA transactions, and wait until the phase of parity `parity` has
// completed (try_wait in a loop: the hardware suspends the thread for a while in each try).
__device__ __forceinline__ void mb_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mb_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mb_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mb_wait(u32 bar, u32 parity) {
    u32 done = 0;
    while (!done) {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    }
}
// Arrive on the mbarrier at `bar` (a shared::cta address) in cluster block `cta`'s shared memory
// (this block's own included). Default (CTA-scope) semantics: a cluster-scope release fences
// every earlier global store of the thread (MEMBAR.ALL.GPU), and what the arrival hands back
// (shared tiles whose wgmma reads are complete) needs no ordering.
__device__ __forceinline__ void mb_arrive_cluster(u32 bar, u32 cta) {
    asm volatile(
        "{\n.reg .b32 ra;\nmapa.shared::cluster.u32 ra, %0, %1;\n"
        "mbarrier.arrive.shared::cluster.b64 _, [ra];\n}\n" ::"r"(bar),
        "r"(cta)
        : "memory");
}
// Every thread of every block of the cluster arrives and waits (divergent code allowed).
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}
__device__ __forceinline__ u32 cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}
// A tensor map (CUtensorMap, 128 bytes) passed by value as a __grid_constant__ kernel argument.
struct __align__(64) TmaMap {
    u64 v[16];
};
// TMA: the box at (c0 inner, c1 outer) of the 2-D tensor `map` into shared memory at dst,
// completing `bar`'s expected transaction bytes (zero-filled where the box leaves the tensor).
__device__ __forceinline__ void tma_load_2d(u32 dst, const TmaMap* map, int c0, int c1, u32 bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
        "l"((u64)map), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}
// tma_load_2d into the same shared-memory offset of every cluster block in `mask`, completing
// each one's mbarrier at `bar`'s offset.
__device__ __forceinline__ void tma_load_2d_mc(u32 dst, const TmaMap* map, int c0, int c1, u32 bar,
                                               unsigned short mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster"
        " [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
        "l"((u64)map), "r"(c0), "r"(c1), "r"(bar), "h"(mask)
        : "memory");
}
