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
// RES: y is the residual stream [n] bf16 and gets the projection added in place, rounded as the
// rmsnorm kernel's residual add does (bf16(bf16(x w^T) + residual)); each element is read and
// written by one lane, so in place is safe.
template <int UNR, bool SILU, bool RES = false>
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
        if (RES) {
            bf16_t* r = (bf16_t*)y + row;
            *r = f2bf(bf2f(f2bf(s)) + bf2f(*r));
        } else if (y_f32) {
            ((float*)y)[row] = s;
        } else {
            ((bf16_t*)y)[row] = f2bf(s);
        }
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

// resid += x w^T for one row (the o and down projections at batch 1, `fused.rs`): the residual
// add of the next rmsnorm moved into this epilogue, so the next fused norm reads one row.
extern "C" __global__ void __launch_bounds__(256) gemv_bf16_t1_res(const bf16_t* x,
                                                                   const bf16_t* w, bf16_t* resid,
                                                                   int n, int k) {
    gemv_t1_body<8, false, true>(x, w, resid, n, k, 0);
}

extern "C" __global__ void __launch_bounds__(256) gemv_bf16_t1_wide(const bf16_t* x,
                                                                    const bf16_t* w, void* y,
                                                                    int n, int k, int y_f32) {
    gemv_t1_body<16, false>(x, w, y, n, k, y_f32);
}

// ---- Single-row GEMV with fused prologue / epilogue (decode at batch 1; fewer kernels per layer).
//
// NORM prologue: the staged row is rmsnorm(y + resid_in) * nw exactly as the `rmsnorm` kernel's
// 16-byte path computes it (same bf16 rounding of the residual sum, and the sum of squares in that
// kernel's order: its block of `nvt` threads, 16-byte chunk c to thread c % nvt, warp sums, then
// the sum of the warp sums), so the result is bitwise that of rmsnorm + gemv_bf16_t1. y == 0: no residual add
// (layer 0 normalises the embedding). Every block normalises the row itself (it is 2-28 KB, read
// from L2; the norm weight is staged in shared memory before the PDL wait, so the dynamic shared
// memory is 2 * k bf16); block 0 also writes the new residual to resid_out (never resid_in: other blocks are
// still reading that, so the caller alternates two residual buffers).
//
// SILU epilogue (the gate_up projection): a block holds gate rows i..i+3 and their up rows
// inter + i..; it writes act[i] = silu(gate) * up (bf16-rounded inputs, as silu_mul), so the down
// projection stages a plain row (no per-block SiLU over the whole row as gemv_bf16_t1_silu does).
//
// ROPE epilogue (the fused qkv projection of one token): warps are mapped to rows so that a block
// of the rotated part (q and k heads) holds 4 rows i..i+3 of one head and their partners i+half..;
// after the dot products the block applies RoPE to the pairs exactly as rope_kv_write (bf16 round,
// rotate in f32, round), writes q and k to `out` and the token's K and V rows to the pools at
// slots[0] (slot < 0: no pool write). Blocks past the rotated part hold V rows.

__device__ __forceinline__ uint4 add_bf16x8(uint4 a, uint4 b) {
    const u32 av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
    u32 o[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const u32 lo = f2bf(bf2f((bf16_t)(av[e] & 0xffff)) + bf2f((bf16_t)(bv[e] & 0xffff)));
        const u32 hi = f2bf(bf2f((bf16_t)(av[e] >> 16)) + bf2f((bf16_t)(bv[e] >> 16)));
        o[e] = lo | (hi << 16);
    }
    return make_uint4(o[0], o[1], o[2], o[3]);
}

__device__ __forceinline__ uint4 scale_bf16x8(uint4 a, float r, uint4 w) {
    const u32 av[4] = {a.x, a.y, a.z, a.w}, wv[4] = {w.x, w.y, w.z, w.w};
    u32 o[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const u32 lo =
            f2bf(bf2f((bf16_t)(av[e] & 0xffff)) * r * bf2f((bf16_t)(wv[e] & 0xffff)));
        const u32 hi = f2bf(bf2f((bf16_t)(av[e] >> 16)) * r * bf2f((bf16_t)(wv[e] >> 16)));
        o[e] = lo | (hi << 16);
    }
    return make_uint4(o[0], o[1], o[2], o[3]);
}

#define EPI_STORE 0
#define EPI_ROPE 1
#define EPI_SILU 2
template <int EPI>
__device__ __forceinline__ void gemv_t1_fused_body(
    const bf16_t* y, const bf16_t* resid_in, bf16_t* resid_out, const bf16_t* nw, float eps,
    int nvt, const bf16_t* w, void* out, int n, int k, int y_f32, const int* pos,
    const float* inv_freq, bf16_t* k_pool, bf16_t* v_pool, const int* slots, int n_q, int n_kv,
    int hd) {
    extern __shared__ uint4 xs[];
    __shared__ float red[32];
    const int k8 = k / 8;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    constexpr bool ROPE = EPI == EPI_ROPE;
    int row = blockIdx.x * 8 + warp;
    int head = 0, pair = 0;
    const int half = hd / 2;
    const bool rotated = ROPE && (int)blockIdx.x < (n_q + n_kv) * hd / 8;
    if (rotated) {
        const int per_head = half / 4;
        head = blockIdx.x / per_head;
        pair = (blockIdx.x % per_head) * 4;
        row = head * hd + (warp >> 2) * half + pair + (warp & 3);
    }
    if (EPI == EPI_SILU) {
        // Rows i..i+3 of the gate half and their up partners inter + i.. (n = 2 * inter).
        pair = blockIdx.x * 4;
        row = (warp >> 2) * (n >> 1) + pair + (warp & 3);
    }
    const bool live = row < n;
    const uint4* wr = (const uint4*)(w + (u64)(live ? row : 0) * k);
    constexpr int UNR = 8;
    uint4 wv[UNR];
    int c = lane;
    if (live && c + 32 * (UNR - 1) < k8) {
#pragma unroll
        for (int u = 0; u < UNR; ++u) wv[u] = __ldg(wr + c + 32 * u);
    }
    // The norm weight is constant too: staged next to x (second half of the dynamic shared
    // memory) before waiting, so the normalise pass below reads no global memory.
    uint4* nws = xs + k8;
    for (int i = threadIdx.x; i < k8; i += blockDim.x) nws[i] = ((const uint4*)nw)[i];
    pdl_enter();
    const uint4* r4 = (const uint4*)resid_in;
    const uint4* y4 = (const uint4*)y;
    for (int i = threadIdx.x; i < k8; i += blockDim.x) {
        const uint4 s = y4 ? add_bf16x8(y4[i], r4[i]) : r4[i];
        xs[i] = s;
        if (resid_out && blockIdx.x == 0) ((uint4*)resid_out)[i] = s;
    }
    __syncthreads();
    // Sum of squares in the rmsnorm kernel's order: its block of nvt threads (emulated as nvt/32
    // virtual warps), thread t summing the 16-byte chunks t, t + nvt, ... element by element.
    const int nvw = nvt >> 5;
    for (int vw = warp; vw < nvw; vw += (int)(blockDim.x >> 5)) {
        float ss = 0.f;
        for (int ch = vw * 32 + lane; ch < k8; ch += nvt) {
            const uint4 a = xs[ch];
            const u32 e[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float lo = __uint_as_float(e[j] << 16), hi = __uint_as_float(e[j] & 0xffff0000u);
                ss += lo * lo;
                ss += hi * hi;
            }
        }
        ss = warp_sum(ss);
        if (lane == 0) red[vw] = ss;
    }
    __syncthreads();
    const float total = warp_sum(lane < nvw ? red[lane] : 0.f);
    const float rs = rsqrtf(total / (float)k + eps);
    for (int i = threadIdx.x; i < k8; i += blockDim.x)
        xs[i] = scale_bf16x8(xs[i], rs, nws[i]);
    __syncthreads();
    float acc0 = 0.f, acc1 = 0.f;
    if (live) {
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
    }
    const float s = warp_sum(acc0 + acc1);
    if (EPI == EPI_SILU) {
        // out[i] = silu(gate_i) * up_i from the bf16-rounded projections, as silu_mul computes it.
        if (lane == 0) red[warp] = s;
        __syncthreads();
        if (threadIdx.x < 4 && pair + (int)threadIdx.x < (n >> 1)) {
            const float g = bf2f(f2bf(red[threadIdx.x])), u = bf2f(f2bf(red[threadIdx.x + 4]));
            ((bf16_t*)out)[pair + threadIdx.x] = f2bf(g / (1.f + expf(-g)) * u);
        }
        return;
    }
    if (!ROPE) {
        if (live && lane == 0) {
            if (y_f32) ((float*)out)[row] = s;
            else ((bf16_t*)out)[row] = f2bf(s);
        }
        return;
    }
    // Every warp reaches this barrier (no early exit above in ROPE mode); `red` is free again
    // (all its readers passed the staging barrier).
    if (lane == 0) red[warp] = s;
    __syncthreads();
    bf16_t* o = (bf16_t*)out;
    const long long slot = slots[0];
    const int kv_dim = n_kv * hd;
    if (rotated) {
        if (threadIdx.x < 4) {
            const int i = pair + threadIdx.x;
            const float p = (float)pos[0];
            float sn, cs;
            sincosf(p * inv_freq[i], &sn, &cs);
            const float x1 = bf2f(f2bf(red[threadIdx.x])), x2 = bf2f(f2bf(red[threadIdx.x + 4]));
            // The expression of rope_rot (elementwise.cu), so it rounds and contracts alike.
            const bf16_t y1 = f2bf(x1 * cs - x2 * sn), y2 = f2bf(x2 * cs + x1 * sn);
            o[head * hd + i] = y1;
            o[head * hd + half + i] = y2;
            if (head >= n_q && slot >= 0) {
                bf16_t* kp = k_pool + (u64)slot * kv_dim + (u64)(head - n_q) * hd;
                kp[i] = y1;
                kp[i + half] = y2;
            }
        }
    } else if (threadIdx.x < 8) {
        const int r = blockIdx.x * 8 + threadIdx.x;
        if (r < n) {
            const bf16_t v = f2bf(red[threadIdx.x]);
            o[r] = v;
            if (slot >= 0) v_pool[(u64)slot * kv_dim + (r - (n_q + n_kv) * hd)] = v;
        }
    }
}

// out = rmsnorm(y + resid_in) * nw  x  w^T for one row (see above); resid_out gets y + resid_in.
extern "C" __global__ void __launch_bounds__(256) gemv_bf16_t1_norm(
    const bf16_t* y, const bf16_t* resid_in, bf16_t* resid_out, const bf16_t* nw, float eps,
    int nvt, const bf16_t* w, void* out, int n, int k, int y_f32) {
    gemv_t1_fused_body<EPI_STORE>(y, resid_in, resid_out, nw, eps, nvt, w, out, n, k, y_f32, 0, 0,
                                  0, 0, 0, 0, 0, 2);
}

// The same for the gate_up projection (w [2 * inter, k]) with SiLU-mul in the epilogue: out is
// act [inter] = silu(gate) * up, what silu_mul would write (the down projection's input).
extern "C" __global__ void __launch_bounds__(256) gemv_bf16_t1_norm_silu(
    const bf16_t* y, const bf16_t* resid_in, bf16_t* resid_out, const bf16_t* nw, float eps,
    int nvt, const bf16_t* w, bf16_t* out, int n, int k) {
    gemv_t1_fused_body<EPI_SILU>(y, resid_in, resid_out, nw, eps, nvt, w, out, n, k, 0, 0, 0, 0,
                                 0, 0, 0, 0, 2);
}

// The same with the qkv projection's RoPE + K/V pool write fused in (out is the qkv row).
extern "C" __global__ void __launch_bounds__(256) gemv_bf16_t1_norm_rope(
    const bf16_t* y, const bf16_t* resid_in, bf16_t* resid_out, const bf16_t* nw, float eps,
    int nvt, const bf16_t* w, bf16_t* out, int n, int k, const int* pos, const float* inv_freq,
    bf16_t* k_pool, bf16_t* v_pool, const int* slots, int n_q, int n_kv, int hd) {
    gemv_t1_fused_body<EPI_ROPE>(y, resid_in, resid_out, nw, eps, nvt, w, out, n, k, 0, pos,
                                 inv_freq, k_pool, v_pool, slots, n_q, n_kv, hd);
}
