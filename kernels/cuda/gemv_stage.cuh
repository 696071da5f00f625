// What the single-row GEMVs of gemv.cu and the fused qkv + decode attention of
// qkv_attention.cu share: the input RMSNorm staged into a block's x and the weight loads.
// Prepended to both programs (kernels/src/cuda/nvrtc.rs).

// The input RMSNorm staged into the GEMV's x (NORM bodies with `nin.w` set): x = rmsnorm(y +
// resid) * w, where y may be null (no residual add), computed by every block exactly as the
// rmsnorm kernel's vector path computes it with hidden / 8 threads (elementwise.cu): each of
// this block's 256 threads stands for k / 2048 of those threads (one 16-byte chunk each), sums
// its chunks' squares in the same order, and each warp reduces its stand-ins' warps with the
// same butterfly, so the staged row equals rmsnorm's output bit for bit. The residual itself is
// not written (the caller adds y again in the next norm). Needs k % 2048 == 0, k <= 8192.
struct NormIn {
    const bf16_t* resid;  // residual row [k]
    const bf16_t* w;      // norm weight [k]; null: plain staging from x
    float eps;
};
// This thread's first chunk of a staged norm's weight (zero without a norm; k8 >= 256, so in
// range), loaded before the PDL wait by the kernels that stage a norm: the weight is constant,
// so the only loads after the wait are the rows themselves.
__device__ __forceinline__ uint4 norm_w0(const NormIn& nin) {
    return nin.w ? ((const uint4*)nin.w)[threadIdx.x] : make_uint4(0, 0, 0, 0);
}
// nw0: norm_w0(nin). NT: the block's threads (256; 128 stand for twice as many chunks each, the
// same stand-in warps, so the same sums).
template <int NT = 256>
__device__ __forceinline__ void gemv_stage_norm(const bf16_t* y, const NormIn& nin, int k, uint4* xs, uint4 nw0) {
    __shared__ float nsh[32];
    constexpr int MAXPER = 1024 / NT;
    const int k8 = k / 8, per = k8 / NT;  // chunks (stand-in threads) per thread, 1..MAXPER
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint4* r4 = (const uint4*)nin.resid;
    uint4 a[MAXPER];
    float ss[MAXPER];
#pragma unroll
    for (int m = 0; m < MAXPER; ++m) {
        ss[m] = 0.f;
        if (m < per) {
            const int c = threadIdx.x + NT * m;
            uint4 v = r4[c];
            if (y) {
                uint4 u = ((const uint4*)y)[c];
                bf8_add(u, v);
                v = u;
            }
            a[m] = v;
            bf8_sumsq(v, ss[m]);
        }
    }
    // Stand-in thread t + NT m is in stand-in warp warp + NT / 32 m.
#pragma unroll
    for (int m = 0; m < MAXPER; ++m) {
        if (m < per) {
            const float s = warp_sum(ss[m]);
            if (lane == 0) nsh[warp + NT / 32 * m] = s;
        }
    }
    __syncthreads();
    const float total = warp_sum(lane < k8 / 32 ? nsh[lane] : 0.f);
    const float r = rsqrtf(total / (float)k + nin.eps);
    const uint4* w4 = (const uint4*)nin.w;
#pragma unroll
    for (int m = 0; m < MAXPER; ++m) {
        if (m < per) {
            const int c = threadIdx.x + NT * m;
            xs[c] = bf8_norm(a[m], m == 0 ? nw0 : w4[c], r);
        }
    }
}

// A weight load of the GEMVs: ld.global.nc with an L2 evict-first policy (STRATA_W_EVICT_FIRST,
// the default; =0 in the environment at compile time gives plain ld.global.nc, for A/B runs):
// each weight byte is read once per step, so its lines are the ones to drop first (1B
// batch-1 step x0.981, 8B x0.992, the GEMVs-only graph x0.972, H100 2026-12-06; docs/perf.md).
// (createpolicy and cache hints need sm_80; the CPU emulation loads plainly.)
#if defined(STRATA_W_EVICT_FIRST) && !defined(STRATA_CUDA_EMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define GEMV_EVICT_FIRST 1
#else
#define GEMV_EVICT_FIRST 0
#endif
__device__ __forceinline__ u64 gemv_w_policy() {
    u64 p = 0;
#if GEMV_EVICT_FIRST
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
#endif
    return p;
}
__device__ __forceinline__ uint4 gemv_ldw(const uint4* a, u64 pol) {
#if GEMV_EVICT_FIRST
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(a), "l"(pol));
    return v;
#else
    (void)pol;
    return __ldg(a);
#endif
}

