// Skinny GEMM for decode: y[t, n] = sum_k x[t, k] * w[n, k], GEMV_MAX_T rows of x per block row
// (grid y = ceil(T / GEMV_MAX_T) chunks; each output element is the same fixed-order sum whatever
// the other rows of its chunk, so the result is batch-invariant: the batch-invariant fallback).
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
    pdl_enter();
    const int row = (int)((blockIdx.x * (u64)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= n) return;
    // This block's chunk of rows: x, y and T relative to it.
    const int t0 = blockIdx.y * GEMV_MAX_T;
    x += (u64)t0 * k;
    y = y_f32 ? (void*)((float*)y + (u64)t0 * n) : (void*)((bf16_t*)y + (u64)t0 * n);
    T = min(T - t0, GEMV_MAX_T);
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

// Single-row GEMV (decode at batch 1): x is staged once per block in shared memory (dynamic,
// k bf16), each warp streams one weight row with UNR 16-byte loads in flight per lane, the sum is
// reduced with shuffles. No per-load re-read of x through L1 and no unused accumulators, so it
// needs fewer registers and instructions than gemv_bf16 at T = 1.
__device__ __forceinline__ u32 silu_mul2(u32 g, u32 u) {
    // Two bf16 lanes of silu(g) * u, rounded like silu_mul (elementwise.cu) does.
    const float g0 = __uint_as_float(g << 16), g1 = __uint_as_float(g & 0xffff0000u);
    const float u0 = __uint_as_float(u << 16), u1 = __uint_as_float(u & 0xffff0000u);
    const u32 lo = f2bf(g0 / (1.f + expf(-g0)) * u0), hi = f2bf(g1 / (1.f + expf(-g1)) * u1);
    return lo | (hi << 16);
}

// SILU: x is [gate | up] of width 2k (the gate_up projection's output row) and the staged row is
// silu(gate) * up, exactly as silu_mul would have written it (the down projection's input).
template <int UNR, bool SILU>
__device__ __forceinline__ void gemv_t1_body(const bf16_t* x, const bf16_t* w, void* y, int n,
                                             int k, int y_f32) {
    extern __shared__ uint4 xs[];
    const int k8 = k / 8;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + warp;
    const bool live = row < n;
    const uint4* wr = (const uint4*)(w + (u64)(live ? row : 0) * k);
    // The weights are constant: the first UNR loads go out before waiting for x, so under PDL
    // they overlap the tail of the kernel that produces x.
    uint4 wv[UNR];
    int c = lane;
    if (live && c + 32 * (UNR - 1) < k8) {
#pragma unroll
        for (int u = 0; u < UNR; ++u) wv[u] = __ldg(wr + c + 32 * u);
    }
    pdl_enter();
    for (int i = threadIdx.x; i < k8; i += blockDim.x) {
        if (SILU) {
            const uint4 g = ((const uint4*)x)[i], u = ((const uint4*)x)[k8 + i];
            xs[i] = make_uint4(silu_mul2(g.x, u.x), silu_mul2(g.y, u.y), silu_mul2(g.z, u.z),
                               silu_mul2(g.w, u.w));
        } else {
            xs[i] = ((const uint4*)x)[i];
        }
    }
    __syncthreads();
    if (!live) return;
    float acc0 = 0.f, acc1 = 0.f;
    for (; c + 32 * (UNR - 1) < k8; c += 32 * UNR) {
        if (c != lane) {
#pragma unroll
            for (int u = 0; u < UNR; ++u) wv[u] = __ldg(wr + c + 32 * u);
        }
#pragma unroll
        for (int u = 0; u < UNR; ++u) {
            float wf[8], xf[8];
            unpack8(wv[u], wf);
            unpack8(xs[c + 32 * u], xf);
#pragma unroll
            for (int e = 0; e < 8; e += 2) {
                acc0 += wf[e] * xf[e];
                acc1 += wf[e + 1] * xf[e + 1];
            }
        }
    }
    for (; c < k8; c += 32) {
        float wf[8], xf[8];
        unpack8(__ldg(wr + c), wf);
        unpack8(xs[c], xf);
#pragma unroll
        for (int e = 0; e < 8; e += 2) {
            acc0 += wf[e] * xf[e];
            acc1 += wf[e + 1] * xf[e + 1];
        }
    }
    const float s = warp_sum(acc0 + acc1);
    if (lane == 0) {
        if (y_f32) ((float*)y)[row] = s;
        else ((bf16_t*)y)[row] = f2bf(s);
    }
}

// The same with two steps of UNR loads in flight per lane (for rows of several steps: k >= 4096
// at UNR 8): step 0 is issued before the PDL wait as above, step 1 right after it (ahead of the
// x staging), and each later step while the one before it is folded. Same sums in the same order
// as gemv_t1_body. The x staging has 4 loads in flight per thread.
template <int UNR, bool SILU>
__device__ __forceinline__ void gemv_t1_pipe_body(const bf16_t* x, const bf16_t* w, void* y, int n,
                                             int k, int y_f32) {
    extern __shared__ uint4 xs[];
    const int k8 = k / 8;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + warp;
    const bool live = row < n;
    const uint4* wr = (const uint4*)(w + (u64)(live ? row : 0) * k);
    // Full steps of UNR loads of this lane (lane + 32 (UNR i + u) < k8 for every u); the rest of
    // the row goes one load at a time after them.
    int full = 0;
    if (live) {
        const int r = k8 - 32 * (UNR - 1) - lane;
        full = r > 0 ? (r + 32 * UNR - 1) / (32 * UNR) : 0;
    }
    // Two steps' loads in flight (a while b lands): the weights are constant, so step 0 goes
    // out before waiting for x (under PDL it overlaps the tail of the kernel that produces x)
    // and step 1 right after, ahead of the x staging.
    uint4 wa[UNR], wb[UNR];
    int c = lane;
    if (full > 0) {
#pragma unroll
        for (int u = 0; u < UNR; ++u) wa[u] = __ldg(wr + c + 32 * u);
    }
    pdl_enter();
    if (full > 1) {
#pragma unroll
        for (int u = 0; u < UNR; ++u) wb[u] = __ldg(wr + c + 32 * UNR + 32 * u);
    }
    // x staging, 4 rows of loads in flight per thread.
    for (int i0 = threadIdx.x; i0 < k8; i0 += 4 * blockDim.x) {
        uint4 g[4], up[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int i = i0 + j * blockDim.x;
            if (i < k8) {
                g[j] = ((const uint4*)x)[i];
                if (SILU) up[j] = ((const uint4*)x)[k8 + i];
            }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int i = i0 + j * blockDim.x;
            if (i < k8) {
                if (SILU) {
                    xs[i] = make_uint4(silu_mul2(g[j].x, up[j].x), silu_mul2(g[j].y, up[j].y),
                                       silu_mul2(g[j].z, up[j].z), silu_mul2(g[j].w, up[j].w));
                } else {
                    xs[i] = g[j];
                }
            }
        }
    }
    __syncthreads();
    if (!live) return;
    float acc0 = 0.f, acc1 = 0.f;
    auto fold = [&](const uint4* wv, int at) {
#pragma unroll
        for (int u = 0; u < UNR; ++u) {
            float wf[8], xf[8];
            unpack8(wv[u], wf);
            unpack8(xs[at + 32 * u], xf);
#pragma unroll
            for (int e = 0; e < 8; e += 2) {
                acc0 += wf[e] * xf[e];
                acc1 += wf[e + 1] * xf[e + 1];
            }
        }
    };
    int it = 0;
    for (; it + 1 < full; it += 2) {
        fold(wa, c);
        c += 32 * UNR;
        if (it + 2 < full) {
#pragma unroll
            for (int u = 0; u < UNR; ++u) wa[u] = __ldg(wr + c + 32 * UNR + 32 * u);
        }
        fold(wb, c);
        c += 32 * UNR;
        if (it + 3 < full) {
#pragma unroll
            for (int u = 0; u < UNR; ++u) wb[u] = __ldg(wr + c + 32 * UNR + 32 * u);
        }
    }
    if (it < full) {
        fold(wa, c);
        c += 32 * UNR;
    }
    for (; c < k8; c += 32) {
        float wf[8], xf[8];
        unpack8(__ldg(wr + c), wf);
        unpack8(xs[c], xf);
#pragma unroll
        for (int e = 0; e < 8; e += 2) {
            acc0 += wf[e] * xf[e];
            acc1 += wf[e + 1] * xf[e + 1];
        }
    }
    const float s = warp_sum(acc0 + acc1);
    if (lane == 0) {
        if (y_f32) ((float*)y)[row] = s;
        else ((bf16_t*)y)[row] = f2bf(s);
    }
}

extern "C" __global__ void __launch_bounds__(256) gemv_bf16_t1(const bf16_t* x, const bf16_t* w,
                                                               void* y, int n, int k, int y_f32) {
    gemv_t1_body<8, false>(x, w, y, n, k, y_f32);
}

// y = (silu(gate) * up) * w^T for one row: gu [1, 2k] is the gate_up output; fuses silu_mul.
extern "C" __global__ void __launch_bounds__(256) gemv_bf16_t1_silu(const bf16_t* gu,
                                                                    const bf16_t* w, void* y,
                                                                    int n, int k, int y_f32) {
    gemv_t1_body<8, true>(gu, w, y, n, k, y_f32);
}

extern "C" __global__ void __launch_bounds__(256) gemv_bf16_t1_wide(const bf16_t* x,
                                                                    const bf16_t* w, void* y,
                                                                    int n, int k, int y_f32) {
    gemv_t1_body<16, false>(x, w, y, n, k, y_f32);
}

// Two steps in flight (gemv_t1_pipe_body), plain and with SiLU-mul staging.
extern "C" __global__ void __launch_bounds__(256) gemv_bf16_t1_pipe(const bf16_t* x,
                                                                    const bf16_t* w, void* y,
                                                                    int n, int k, int y_f32) {
    gemv_t1_pipe_body<8, false>(x, w, y, n, k, y_f32);
}

extern "C" __global__ void __launch_bounds__(256) gemv_bf16_t1_silu_pipe(const bf16_t* gu,
                                                                         const bf16_t* w, void* y,
                                                                         int n, int k, int y_f32) {
    gemv_t1_pipe_body<8, true>(gu, w, y, n, k, y_f32);
}
