// Skinny GEMM for decode: y[t, n] = sum_k x[t, k] * w[n, k] for up to GEMV_MAX_T rows of x.
// Memory-bound on w: one warp streams one weight row with 16-byte loads (8 in flight per lane),
// x (a few KB, shared by every warp) is re-read through L1. f32 accumulation, warp-shuffle
// reduction; y is bf16 (y_f32 == 0) or f32. k % 8 == 0 and 16-byte aligned rows (launcher checks).

#define GEMV_MAX_T 8

__device__ __forceinline__ void unpack8(uint4 v, float* f) {
    f[0] = bf2f((bf16_t)(v.x & 0xffff)); f[1] = bf2f((bf16_t)(v.x >> 16));
    f[2] = bf2f((bf16_t)(v.y & 0xffff)); f[3] = bf2f((bf16_t)(v.y >> 16));
    f[4] = bf2f((bf16_t)(v.z & 0xffff)); f[5] = bf2f((bf16_t)(v.z >> 16));
    f[6] = bf2f((bf16_t)(v.w & 0xffff)); f[7] = bf2f((bf16_t)(v.w >> 16));
}

extern "C" __global__ void __launch_bounds__(256) gemv_bf16(const bf16_t* x, const bf16_t* w,
                                                            void* y, int T, int n, int k,
                                                            int y_f32) {
    const int row = (int)((blockIdx.x * (u64)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= n) return;
    const uint4* wr = (const uint4*)(w + (u64)row * k);
    const int k8 = k / 8;
    float acc[GEMV_MAX_T];
#pragma unroll
    for (int t = 0; t < GEMV_MAX_T; ++t) acc[t] = 0.f;
    int c = lane;
    for (; c + 224 < k8; c += 256) {
        uint4 wv[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) wv[u] = __ldg(wr + c + 32 * u);
#pragma unroll
        for (int u = 0; u < 8; ++u) {
            float wf[8];
            unpack8(wv[u], wf);
#pragma unroll
            for (int t = 0; t < GEMV_MAX_T; ++t) {
                if (t < T) {
                    float xf[8];
                    unpack8(__ldg((const uint4*)(x + (u64)t * k) + c + 32 * u), xf);
#pragma unroll
                    for (int e = 0; e < 8; ++e) acc[t] += wf[e] * xf[e];
                }
            }
        }
    }
    for (; c < k8; c += 32) {
        float wf[8];
        unpack8(__ldg(wr + c), wf);
#pragma unroll
        for (int t = 0; t < GEMV_MAX_T; ++t) {
            if (t < T) {
                float xf[8];
                unpack8(__ldg((const uint4*)(x + (u64)t * k) + c), xf);
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[t] += wf[e] * xf[e];
            }
        }
    }
#pragma unroll
    for (int t = 0; t < GEMV_MAX_T; ++t) {
        if (t < T) {
            float s = warp_sum(acc[t]);
            if (lane == 0) {
                if (y_f32) ((float*)y)[(u64)t * n + row] = s;
                else ((bf16_t*)y)[(u64)t * n + row] = f2bf(s);
            }
        }
    }
}
