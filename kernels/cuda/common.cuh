// Shared helpers for every Strata NVRTC program. Prepended to each .cu source at compile time
// (NVRTC sees one translation unit per program; no headers are needed from a CUDA toolkit).
//
// bf16 is carried as its raw 16-bit pattern: conversions are exact bit operations
// (round-to-nearest-even on the way down, NaN kept quiet), identical to `half::bf16::from_f32`.
typedef unsigned short bf16_t;
typedef unsigned int u32;
typedef unsigned long long u64;

#define FULL_MASK 0xffffffffu

// Programmatic dependent launch (sm_90+). Every kernel is launched with the PDL attribute where
// the device has it (kernels/src/cuda/launch.rs), so a kernel may start while its predecessor in
// the stream is still finishing. pdl_wait() blocks until that predecessor has completed and its
// writes are visible: every kernel calls it before touching memory an earlier kernel writes or
// reads (only constant inputs, such as weights, may be loaded before it). pdl_trigger() lets the
// successor start launching once every block of this grid has called it (or exited).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// Both, at the top of a kernel that has nothing to load before its inputs are ready.
__device__ __forceinline__ void pdl_enter() {
    pdl_wait();
    pdl_trigger();
}
// pdl_enter of the GEMVs and the row norms: built with STRATA_PDL_EARLY (the default;
// STRATA_PDL_EARLY=0 in the environment at compile time leaves it out, for A/B runs) they let
// their successor launch before they wait, so that the next kernels' weight loads go out while
// the decode attention runs (1B batch-1 step x0.980 with the evict-first weight loads of
// gemv.cu, H100 2026-12-06; docs/perf.md).
__device__ __forceinline__ void pdl_enter_chain() {
#ifdef STRATA_PDL_EARLY
    pdl_trigger();
    pdl_wait();
#else
    pdl_enter();
#endif
}
// mbarrier in shared memory (sm_90+; address `bar`): init with `count` arrivals per phase,
// arrive, arrive + expect `bytes` of asynchronous transactions (TMA copies, st.async), and wait
// until the phase of parity `parity` has completed (try_wait in a loop: the hardware suspends the
// thread for a while in each try). Used by the wgmma programs' pipelines and the decode
// attention's cluster merge.
__device__ __forceinline__ void mb_init(u32 bar, u32 count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void mb_arrive(u32 bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}
__device__ __forceinline__ void mb_expect_tx(u32 bar, u32 bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
// A wait that outlasts ~2^33 cycles (seconds: a pipeline that can never complete) traps, so a
// launch fails with an error instead of hanging the process.
__device__ __forceinline__ void mb_wait(u32 bar, u32 parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    u32 done = 0, tries = 0;
    long long t0 = 0;
    while (!done) {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
        if (!done && (++tries & 1023u) == 0) {
            if (t0 == 0)
                t0 = clock64();
            else if (clock64() - t0 > (1ll << 33))
                __trap();
        }
    }
#endif
}
// Arrives on the mbarrier at the same shared address `bar` in cluster block `rank`.
__device__ __forceinline__ void mb_arrive_remote(u32 bar, u32 rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile(
        "{\n.reg .b32 r;\nmapa.shared::cluster.u32 r, %0, %1;\nmbarrier.arrive.shared::cluster.b64 _, [r];\n}\n" ::"r"(bar),
        "r"(rank)
        : "memory");
#endif
}
// c += A B on the tensor cores, mma.sync m16n8k16 bf16 -> f32 (sm_80+): a the lane's four A
// fragment registers, b0 b1 its two of B (the attention and few-row GEMV kernels). The CPU
// emulation of kernels/tests/cuda_emu supplies its own (shim.h emu_mma16816).
__device__ __forceinline__ void mma_bf16_16816(float* c, const u32* a, u32 b0, u32 b1) {
#ifdef STRATA_CUDA_EMU
    emu_mma16816(c, a[0], a[1], a[2], a[3], b0, b1);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
// A kernel's dynamic shared memory (the CPU emulation of kernels/tests/cuda_emu defines its own).
#ifndef DYN_SHARED
#define DYN_SHARED(T, name) extern __shared__ T name[]
#endif
#define NEG_BIG (-1.0e30f)
#define NEG_INF (__int_as_float(0xff800000))

__device__ __forceinline__ float bf2f(bf16_t x) { return __uint_as_float(((u32)x) << 16); }

__device__ __forceinline__ bf16_t f2bf(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

// bf16 pair {lo, hi} in one F2FP (round to nearest even, as f2bf for every finite value).
__device__ __forceinline__ u32 pack_bf2(float lo, float hi) {
#ifdef STRATA_CUDA_EMU
    return (u32)f2bf(lo) | ((u32)f2bf(hi) << 16);
#else
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

// Arithmetic that several programs must round (and contract to FMA) identically, so a fused
// kernel equals the kernels it replaces bit for bit: bf16 pairs packed in a u32, 16-byte chunks
// of 8 bf16 (the residual add, the sum of squares and the scaling of every RMSNorm), SiLU * up
// and one rotate-half RoPE pair.
__device__ __forceinline__ float bf_lo(u32 v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf_hi(u32 v) { return __uint_as_float(v & 0xffff0000u); }
__device__ __forceinline__ u32 bf_pair(float lo, float hi) { return (u32)f2bf(lo) | ((u32)f2bf(hi) << 16); }
// a = a + b per element, rounded to bf16.
__device__ __forceinline__ void bf8_add(uint4& a, const uint4& b) {
    a.x = bf_pair(bf_lo(a.x) + bf_lo(b.x), bf_hi(a.x) + bf_hi(b.x));
    a.y = bf_pair(bf_lo(a.y) + bf_lo(b.y), bf_hi(a.y) + bf_hi(b.y));
    a.z = bf_pair(bf_lo(a.z) + bf_lo(b.z), bf_hi(a.z) + bf_hi(b.z));
    a.w = bf_pair(bf_lo(a.w) + bf_lo(b.w), bf_hi(a.w) + bf_hi(b.w));
}
// ss += the squares of the chunk's 8 values, in element order.
__device__ __forceinline__ void bf8_sumsq(const uint4& a, float& ss) {
    const u32 e[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float lo = bf_lo(e[j]), hi = bf_hi(e[j]);
        ss += lo * lo;
        ss += hi * hi;
    }
}
// a * r * g per element, rounded to bf16 (RMSNorm's output).
__device__ __forceinline__ uint4 bf8_norm(const uint4 a, const uint4 g, float r) {
    uint4 y;
    y.x = bf_pair(bf_lo(a.x) * r * bf_lo(g.x), bf_hi(a.x) * r * bf_hi(g.x));
    y.y = bf_pair(bf_lo(a.y) * r * bf_lo(g.y), bf_hi(a.y) * r * bf_hi(g.y));
    y.z = bf_pair(bf_lo(a.z) * r * bf_lo(g.z), bf_hi(a.z) * r * bf_hi(g.z));
    y.w = bf_pair(bf_lo(a.w) * r * bf_lo(g.w), bf_hi(a.w) * r * bf_hi(g.w));
    return y;
}
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.f + expf(-g)) * u; }
// One rotate-half pair: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s), rounded to bf16. The FMAs are
// spelled out: left to the compiler, `a * b - c * d` may contract either product depending on
// the kernel it is inlined into, and the fused qkv GEMV then differed from rope_kv_write in one
// f32 ulp (seen as one bf16 in a few thousand by `gpu check`).
__device__ __forceinline__ void rope_rot(float x1, float x2, float c, float s, bf16_t* y1,
                                         bf16_t* y2) {
    *y1 = f2bf(__fmaf_rn(x1, c, -__fmul_rn(x2, s)));
    *y2 = f2bf(__fmaf_rn(x2, c, __fmul_rn(x1, s)));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32). Every thread gets the total.
// `sh` holds 32 floats; the leading barrier makes back-to-back calls safe.
__device__ float block_sum(float v, float* sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    float t = lane < nw ? sh[lane] : 0.f;
    return warp_sum(t);
}
