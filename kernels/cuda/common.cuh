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
#define NEG_BIG (-1.0e30f)
#define NEG_INF (__int_as_float(0xff800000))

__device__ __forceinline__ float bf2f(bf16_t x) { return __uint_as_float(((u32)x) << 16); }

__device__ __forceinline__ bf16_t f2bf(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
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
