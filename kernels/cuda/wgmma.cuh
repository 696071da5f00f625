// wgmma (sm_90a) primitives shared by the programs compiled for sm_90a (the prefill attention of
// attention_prefill_wg.cu and the GEMM of gemm_wg.cu; prepended after common.cuh by
// kernels/src/cuda/nvrtc.rs): fences, commit / wait of wgmma groups, shared-memory matrix
// descriptors in the 128-byte swizzle, the wgmma instructions, and the TMA operations of the
// GEMM's producer / consumer pipeline (its mbarriers: common.cuh).
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
// wgmma's accumulator operands in inline asm: the register list text ("%0, ..., %63" and on
// to %127) and the matching "+f" constraints of d[0..64) / d[0..128).
#define WG_OPS64 \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define WG_OPS128 WG_OPS64 ", " \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define WG_F8(d, b) "+f"(d[(b) + 0]), "+f"(d[(b) + 1]), "+f"(d[(b) + 2]), "+f"(d[(b) + 3]), "+f"(d[(b) + 4]), "+f"(d[(b) + 5]), "+f"(d[(b) + 6]), "+f"(d[(b) + 7])
#define WG_ACC64(d) WG_F8(d, 0), WG_F8(d, 8), WG_F8(d, 16), WG_F8(d, 24), WG_F8(d, 32), WG_F8(d, 40), WG_F8(d, 48), WG_F8(d, 56)
#define WG_ACC128(d) WG_ACC64(d), WG_F8(d, 64), WG_F8(d, 72), WG_F8(d, 80), WG_F8(d, 88), WG_F8(d, 96), WG_F8(d, 104), WG_F8(d, 112), WG_F8(d, 120)

// d (+)= A B: A [64][16] and B [16][128] from shared memory, both K-major; d = A B when
// `acc` is 0.
__device__ __forceinline__ void wg_mma_ss(float* d, u64 da, u64 db, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" WG_OPS64 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : WG_ACC64(d)
        : "l"(da), "l"(db), "r"(acc));
}
// The same with B [16][256] (the GEMM of gemm_wg.cu: 256 weight rows per tile).
__device__ __forceinline__ void wg_mma_ss256(float* d, u64 da, u64 db, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" WG_OPS128 "}, %128, %129, p, 1, 1, 0, 0;\n}\n"
        : WG_ACC128(d)
        : "l"(da), "l"(db), "r"(acc));
}
// d (+)= A B: A [64][16] bf16 from registers (the m16n8k16 A fragment per warp), B [16][128]
// from shared memory, N-major (transposed, TB = 1: V of O += P V) or K-major (TB = 0: K of
// S = Q K^T); d = A B when `acc` is 0.
template <int TB>
__device__ __forceinline__ void wg_mma_rs(float* d, const u32* a, u64 db, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" WG_OPS64 "}, {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
        : WG_ACC64(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB));
}
// Every thread of the cluster meets (release / acquire: shared-memory writes before it are
// visible to every block of the cluster after it).
__device__ __forceinline__ void wg_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
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
// The same box written to shared address dst of every cluster block in `mask`, completing the
// mbarrier at `bar` of each.
__device__ __forceinline__ void tma_load_2d_mc(u32 dst, const TmaMap* map, int c0, int c1, u32 bar, unsigned short mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
        "l"((u64)map), "r"(c0), "r"(c1), "r"(bar), "h"(mask)
        : "memory");
}
