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
// k bf16), each warp streams one weight row in steps of UNR 16-byte loads per lane, the sum is
// reduced with shuffles. No per-load re-read of x through L1 and no unused accumulators, so it
// needs fewer registers and instructions than gemv_bf16 at T = 1.
__device__ __forceinline__ u32 silu_mul2(u32 g, u32 u) {
    // Two bf16 lanes of silu(g) * u, rounded like silu_mul (elementwise.cu) does.
    const float g0 = __uint_as_float(g << 16), g1 = __uint_as_float(g & 0xffff0000u);
    const float u0 = __uint_as_float(u << 16), u1 = __uint_as_float(u & 0xffff0000u);
    const u32 lo = f2bf(silu_times(g0, u0)), hi = f2bf(silu_times(g1, u1));
    return lo | (hi << 16);
}

// DEPTH: steps of UNR loads in flight per lane. 1: each step's loads are issued right before it
// is folded. 2 (for rows of several steps: k >= 4096 at UNR 8): the next step's loads are in
// flight while one is folded; the second buffer costs registers, so it pays only on long rows
// (gemm.rs, GEMV_T1_PIPE_MIN_IN), and the x staging then keeps 4 loads in flight per thread.
// Whatever DEPTH, the products are summed in the same order, so the result is the same.
// SILU: x is [gate | up] of width 2k (the gate_up projection's output row) and the staged row is
// silu(gate) * up, exactly as silu_mul would have written it (the down projection's input).
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
// nw0: norm_w0(nin).
__device__ __forceinline__ void gemv_stage_norm(const bf16_t* y, const NormIn& nin, int k, uint4* xs, uint4 nw0) {
    __shared__ float nsh[32];
    const int k8 = k / 8, per = k8 / 256;  // chunks (stand-in threads) per thread, 1..4
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint4* r4 = (const uint4*)nin.resid;
    uint4 a[4];
    float ss[4];
#pragma unroll
    for (int m = 0; m < 4; ++m) {
        ss[m] = 0.f;
        if (m < per) {
            const int c = threadIdx.x + 256 * m;
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
    // Stand-in thread t + 256 m is in stand-in warp warp + 8 m.
#pragma unroll
    for (int m = 0; m < 4; ++m) {
        if (m < per) {
            const float s = warp_sum(ss[m]);
            if (lane == 0) nsh[warp + 8 * m] = s;
        }
    }
    __syncthreads();
    const float total = warp_sum(lane < k8 / 32 ? nsh[lane] : 0.f);
    const float r = rsqrtf(total / (float)k + nin.eps);
    const uint4* w4 = (const uint4*)nin.w;
#pragma unroll
    for (int m = 0; m < 4; ++m) {
        if (m < per) {
            const int c = threadIdx.x + 256 * m;
            xs[c] = bf8_norm(a[m], m == 0 ? nw0 : w4[c], r);
        }
    }
}

// The input RMSNorm of the few-row kernels: rows t < rows of (y + resid) (y null: of resid
// alone), each normalised into xs + t * stride exactly as gemv_stage_norm does one row (the
// same sums in the same order, so bit for bit its output), but with the loads of NORM_ROWS rows
// in flight at once and one barrier for every row's reduction instead of a barrier and a round
// trip to memory per row; rows t in [rows, pad) are zero. rows <= 8 (and <= pad).
#define NORM_ROWS 2
__device__ __forceinline__ void gemv_stage_norm_rows(const bf16_t* y, const NormIn& nin, int k, int rows, int pad,
                                                     uint4* xs, int stride, uint4 nw0) {
    __shared__ float nsh[8][32];
    const int k8 = k / 8, per = k8 / 256;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int t0 = 0; t0 < rows; t0 += NORM_ROWS) {
        uint4 a[NORM_ROWS][4];
#pragma unroll
        for (int j = 0; j < NORM_ROWS; ++j) {
            const int t = t0 + j;
            const uint4* r4 = (const uint4*)(nin.resid + (u64)t * k);
            const uint4* y4 = (const uint4*)(y + (u64)t * k);
#pragma unroll
            for (int m = 0; m < 4; ++m) {
                if (t < rows && m < per) {
                    const int c = threadIdx.x + 256 * m;
                    uint4 v = r4[c];
                    if (y) {
                        uint4 u = y4[c];
                        bf8_add(u, v);
                        v = u;
                    }
                    a[j][m] = v;
                }
            }
        }
#pragma unroll
        for (int j = 0; j < NORM_ROWS; ++j) {
            const int t = t0 + j;
#pragma unroll
            for (int m = 0; m < 4; ++m) {
                if (t < rows && m < per) {
                    float ss = 0.f;
                    bf8_sumsq(a[j][m], ss);
                    ss = warp_sum(ss);
                    if (lane == 0) nsh[t][warp + 8 * m] = ss;
                    xs[t * stride + threadIdx.x + 256 * m] = a[j][m];
                }
            }
        }
    }
    // The norm weights (constant; the first chunk loaded before the PDL wait) are in flight
    // across the barrier.
    const uint4* w4 = (const uint4*)nin.w;
    uint4 wv[4];
    wv[0] = nw0;
#pragma unroll
    for (int m = 1; m < 4; ++m)
        if (m < per) wv[m] = w4[threadIdx.x + 256 * m];
    __syncthreads();
    for (int t = 0; t < pad; ++t) {
        uint4* xt = xs + t * stride;
        if (t < rows) {
            const float total = warp_sum(lane < k8 / 32 ? nsh[t][lane] : 0.f);
            const float r = rsqrtf(total / (float)k + nin.eps);
#pragma unroll
            for (int m = 0; m < 4; ++m) {
                const int c = threadIdx.x + 256 * m;
                if (m < per) xt[c] = bf8_norm(xt[c], wv[m], r);
            }
        } else {
#pragma unroll
            for (int m = 0; m < 4; ++m)
                if (m < per) xt[threadIdx.x + 256 * m] = make_uint4(0, 0, 0, 0);
        }
    }
}

// 16 bytes from global to shared memory by cp.async (the CPU emulation copies at once).
__device__ __forceinline__ void gemv_cp16(uint4* dst, const uint4* src) {
#ifdef STRATA_CUDA_EMU
    *dst = *src;
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"((u32)__cvta_generic_to_shared(dst)), "l"(src)
                 : "memory");
#endif
}
// Waits for this thread's cp.async copies.
__device__ __forceinline__ void gemv_cp_wait_all() {
#ifndef STRATA_CUDA_EMU
    asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
#endif
}
// Plain staging of the few-row kernels: rows t < rows of x (row stride x_stride) into xs + t *
// stride, every 16-byte piece of every row in flight at once (cp.async), rows t in [rows, pad)
// zero. The caller's barrier makes them visible to the other threads.
__device__ __forceinline__ void gemv_stage_copy(const bf16_t* x, int x_stride, int rows, int pad, int k, uint4* xs,
                                                int stride) {
    const int k8 = k / 8;
    for (int t = 0; t < pad; ++t) {
        uint4* xt = xs + t * stride;
        const uint4* x4 = (const uint4*)(x + (u64)t * x_stride);
        for (int i = threadIdx.x; i < k8; i += blockDim.x) {
            if (t < rows) gemv_cp16(xt + i, x4 + i);
            else xt[i] = make_uint4(0, 0, 0, 0);
        }
    }
    gemv_cp_wait_all();
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

// R: weight rows per warp. Warp `row` (< n) streams weight rows wrow(row, r), r < R, each summed
// in the same order whatever R, and lane 0 hands the R sums to epi(row, sums). With R = 2 the
// epilogue can combine two rows (gemv_bf16_t1_gate: SiLU of the gate row times the up row;
// gemv_bf16_t1_qkv_rope: RoPE of a pair of rows), each sum first rounded to bf16 as the plain
// GEMV would have written it, so the result equals the unfused kernels' bit for bit.
// T: rows of x (the few-row kernels below; 1 for the single-row ones): all T are staged (row t
// of x at x + t * x_stride, or its norm of y and resid rows t), every weight load is folded
// into each row's sums in the single-row order, so row t's result equals the single-row
// kernel's on that row bit for bit; epi(row, t, sums) for t < rows (rows <= T; the staged rows
// past it are zero).
template <int T, int UNR, int DEPTH, bool SILU, int R, class WRow, class Epi>
__device__ __forceinline__ void gemv_rows_body(const bf16_t* x, int x_stride, int rows, const bf16_t* w, int n,
                                               int k, WRow wrow, Epi epi,
                                               NormIn nin = NormIn{nullptr, nullptr, 0.f}) {
    static_assert(DEPTH == 1 || DEPTH == 2, "one or two steps in flight");
    constexpr int STEP = 32 * UNR;
    constexpr int XU = DEPTH == 1 ? 1 : 4;  // x staging loads in flight per thread
    DYN_SHARED(uint4, xs);
    const int k8 = k / 8;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + warp;
    const bool live = row < n;
    const u64 pol = gemv_w_policy();
    const uint4* wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wr[r] = (const uint4*)(w + (u64)wrow(live ? row : 0, r) * k);
    // True when a whole step of UNR loads starts at x position `at` of this lane (the rest of
    // the row goes one load at a time after the whole steps).
    auto whole = [&](int at) { return at + 32 * (UNR - 1) < k8; };
    // Loads the step `ahead` steps past x position at, of every row.
    auto load = [&](uint4 (*wv)[UNR], int at, int ahead) {
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int u = 0; u < UNR; ++u) wv[r][u] = gemv_ldw(wr[r] + at + STEP * ahead + 32 * u, pol);
    };
    // The weights are constant: step 0 goes out before waiting for x (under PDL it overlaps the
    // tail of the kernel that produces x), the other steps in flight right after, ahead of the
    // x staging.
    uint4 wv[DEPTH][R][UNR];
    int c = lane;
    if (live && whole(c)) load(wv[0], c, 0);
    const uint4 nw0 = norm_w0(nin);
    pdl_enter_chain();
#pragma unroll
    for (int s = 1; s < DEPTH; ++s)
        if (live && whole(c + s * STEP)) load(wv[s], c, s);
    if (T > 1 && nin.w) {
        gemv_stage_norm_rows(x, nin, k, rows, T, xs, k8, nw0);
    } else if (T > 1 && !SILU) {
        gemv_stage_copy(x, x_stride, rows, T, k, xs, k8);
    } else {
#pragma unroll
        for (int t = 0; t < T; ++t) {
            uint4* xt = xs + t * k8;
            if (nin.w) {
                if (t > 0) __syncthreads();  // the previous row's norm has read its reduction
                if (t < rows) {
                    const NormIn nt{nin.resid + (u64)t * k, nin.w, nin.eps};
                    gemv_stage_norm(x ? x + (u64)t * k : nullptr, nt, k, xt, nw0);
                } else {
                    for (int i = threadIdx.x; i < k8; i += blockDim.x) xt[i] = make_uint4(0, 0, 0, 0);
                }
            }
            const uint4* x4 = (const uint4*)(x + (u64)t * x_stride);
            for (int i0 = threadIdx.x; !nin.w && i0 < k8; i0 += XU * blockDim.x) {
                uint4 g[XU], up[XU];
#pragma unroll
                for (int j = 0; j < XU; ++j) {
                    const int i = i0 + j * blockDim.x;
                    if (i < k8) {
                        g[j] = make_uint4(0, 0, 0, 0);
                        up[j] = g[j];
                        if (t < rows) {
                            g[j] = x4[i];
                            if (SILU) up[j] = x4[k8 + i];
                        }
                    }
                }
#pragma unroll
                for (int j = 0; j < XU; ++j) {
                    const int i = i0 + j * blockDim.x;
                    if (i < k8) {
                        if (SILU) {
                            xt[i] = make_uint4(silu_mul2(g[j].x, up[j].x), silu_mul2(g[j].y, up[j].y),
                                               silu_mul2(g[j].z, up[j].z), silu_mul2(g[j].w, up[j].w));
                        } else {
                            xt[i] = g[j];
                        }
                    }
                }
            }
        }
    }
    __syncthreads();
    if (!live) return;
    float acc0[T][R], acc1[T][R];
#pragma unroll
    for (int t = 0; t < T; ++t)
#pragma unroll
        for (int r = 0; r < R; ++r) acc0[t][r] = acc1[t][r] = 0.f;
    // Folds row r's loads wv[0..cnt) of x positions at, at + 32, ... into every x row's sums.
    auto fold = [&](int r, const uint4* wv, int at, int cnt) {
#pragma unroll
        for (int u = 0; u < cnt; ++u) {
            float wf[8];
            unpack8(wv[u], wf);
#pragma unroll
            for (int t = 0; t < T; ++t) {
                float xf[8];
                unpack8(xs[t * k8 + at + 32 * u], xf);
#pragma unroll
                for (int e = 0; e < 8; e += 2) {
                    acc0[t][r] += wf[e] * xf[e];
                    acc1[t][r] += wf[e + 1] * xf[e + 1];
                }
            }
        }
    };
    // Buffer s % DEPTH holds step s. Each step but the first starts by loading step
    // s + DEPTH - 1 into the buffer the step before it was folded from (at DEPTH 1 that is step s
    // itself, which the loop condition has just found whole).
    while (whole(c + (DEPTH - 1) * STEP)) {
#pragma unroll
        for (int s = 0; s < DEPTH; ++s) {
            if (c != lane && (DEPTH == 1 || whole(c + (DEPTH - 1) * STEP)))
                load(wv[(s + DEPTH - 1) % DEPTH], c, DEPTH - 1);
#pragma unroll
            for (int r = 0; r < R; ++r) fold(r, wv[s][r], c, UNR);
            c += STEP;
        }
    }
#pragma unroll
    for (int s = 0; s + 1 < DEPTH; ++s) {
        if (whole(c)) {
#pragma unroll
            for (int r = 0; r < R; ++r) fold(r, wv[s][r], c, UNR);
            c += STEP;
        }
    }
    for (; c < k8; c += 32) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const uint4 wl = gemv_ldw(wr[r] + c, pol);
            fold(r, &wl, c, 1);
        }
    }
#pragma unroll
    for (int t = 0; t < T; ++t) {
        float sums[R];
#pragma unroll
        for (int r = 0; r < R; ++r) sums[r] = warp_sum(acc0[t][r] + acc1[t][r]);
        if (lane == 0 && t < rows) epi(row, t, sums);
    }
}

// The single-row form: epi(row, sums).
template <int UNR, int DEPTH, bool SILU, int R, class WRow, class Epi>
__device__ __forceinline__ void gemv_t1_body(const bf16_t* x, const bf16_t* w, int n, int k,
                                             WRow wrow, Epi epi, NormIn nin = NormIn{nullptr, nullptr, 0.f}) {
    gemv_rows_body<1, UNR, DEPTH, SILU, R>(
        x, 0, 1, w, n, k, wrow, [&](int row, int, const float* s) { epi(row, s); }, nin);
}

// The few-row epilogues (shared with gemv_mma.cu): the plain GEMV's store (y [rows, n], bf16 or
// f32), the SiLU of a gate row's sum times its up row's (y bf16 [rows, n]) and qkv's RoPE + K/V
// pool write (below).
struct PlainEpi {
    void* y;
    int n, y_f32;
    __device__ __forceinline__ void operator()(int row, int t, const float* s) const {
        if (y_f32) ((float*)y)[(u64)t * n + row] = s[0];
        else ((bf16_t*)y)[(u64)t * n + row] = f2bf(s[0]);
    }
};
struct GateEpi {
    bf16_t* y;
    int n;
    __device__ __forceinline__ int wrow(int row, int r) const { return row + r * n; }
    __device__ __forceinline__ void operator()(int row, int t, const float* s) const {
        y[(u64)t * n + row] = f2bf(silu_times(bf2f(f2bf(s[0])), bf2f(f2bf(s[1]))));
    }
};

// y = x w^T for `rows` <= T rows of x ([rows, k]; y [rows, n]).
template <int T, int UNR, int DEPTH, bool SILU>
__device__ __forceinline__ void gemv_rows_plain(const bf16_t* x, const bf16_t* w, void* y, int rows, int n,
                                                int k, int y_f32) {
    gemv_rows_body<T, UNR, DEPTH, SILU, 1>(
        x, SILU ? 2 * k : k, rows, w, n, k, [](int row, int) { return row; }, PlainEpi{y, n, y_f32});
}

#define GEMV_T1(NAME, UNR, DEPTH, SILU)                                                       \
    extern "C" __global__ void __launch_bounds__(256)                                         \
        NAME(const bf16_t* x, const bf16_t* w, void* y, int n, int k, int y_f32) {            \
        gemv_rows_plain<1, UNR, DEPTH, SILU>(x, w, y, 1, n, k, y_f32);                        \
    }

GEMV_T1(gemv_bf16_t1, 8, 1, false)
GEMV_T1(gemv_bf16_t1_wide, 16, 1, false)
// Two steps in flight, for rows from GEMV_T1_PIPE_MIN_IN (gemm.rs).
GEMV_T1(gemv_bf16_t1_pipe, 8, 2, false)
// y = (silu(gate) * up) * w^T for one row: x is [1, 2k], the gate_up output; fuses silu_mul.
GEMV_T1(gemv_bf16_t1_silu, 8, 1, true)
GEMV_T1(gemv_bf16_t1_silu_pipe, 8, 2, true)

// y[t][j] = silu(x_t * gate_j^T) * (x_t * up_j^T): w is [gate; up] [2n, k] (the gate_up
// projection), y bf16 [rows, n], the down projection's input; rounded as the GEMV then silu_mul.
// With nin.w set, x row t is the MLP's input RMSNorm of nin.resid (x null), staged as
// gemv_stage_norm does (gemv_bf16_t1_gate_norm, after gemv_bf16_t1_resid has added the
// attention's output into the residual).
template <int T, int DEPTH>
__device__ __forceinline__ void gemv_gate_rows(const bf16_t* x, const bf16_t* w, bf16_t* y, int rows, int n,
                                               int k, NormIn nin = NormIn{nullptr, nullptr, 0.f}) {
    const GateEpi e{y, n};
    gemv_rows_body<T, 8, DEPTH, false, 2>(
        x, k, rows, w, n, k, [&](int row, int r) { return e.wrow(row, r); }, e, nin);
}
// (The plain kernels' arguments; y is always bf16, y_f32 unused.)
extern "C" __global__ void __launch_bounds__(256)
    gemv_bf16_t1_gate(const bf16_t* x, const bf16_t* w, void* y, int n, int k, int y_f32) {
    gemv_gate_rows<1, 1>(x, w, (bf16_t*)y, 1, n, k);
}
extern "C" __global__ void __launch_bounds__(256)
    gemv_bf16_t1_gate_pipe(const bf16_t* x, const bf16_t* w, void* y, int n, int k, int y_f32) {
    gemv_gate_rows<1, 2>(x, w, (bf16_t*)y, 1, n, k);
}

// The single-row gate GEMV with the MLP's input norm staged from the residual row (the second
// norm of a layer without its own kernel: Gemm::o_norm_gate_t1; one step in flight, as the
// plain gate GEMV at the staged width 2048).
extern "C" __global__ void __launch_bounds__(256)
    gemv_bf16_t1_gate_norm(const bf16_t* resid, const bf16_t* norm_w, float eps, const bf16_t* w, bf16_t* y,
                           int n, int k) {
    gemv_gate_rows<1, 1>(nullptr, w, y, 1, n, k, NormIn{resid, norm_w, eps});
}

// One row of the o projection added into the residual in its epilogue, instead of written to
// its own row for the next norm to add: resid[j] = (resid[j] + add[j]) + o_j (add null: no
// first term; add is the MLP output of the layer before when the qkv GEMV staged the input norm
// and left the residual alone), each sum rounded to bf16 as rmsnorm and rmsnorm_add2 round them
// (o_j itself first, as the GEMV writes it). Warp j alone reads and writes resid[j].
template <int DEPTH>
__device__ __forceinline__ void gemv_t1_resid(const bf16_t* x, const bf16_t* w, const bf16_t* add,
                                              bf16_t* resid, int n, int k) {
    gemv_t1_body<8, DEPTH, false, 1>(
        x, w, n, k, [](int row, int) { return row; },
        [&](int row, const float* s) {
            float r = bf2f(resid[row]);
            if (add) r = bf2f(f2bf(bf2f(add[row]) + r));
            resid[row] = f2bf(bf2f(f2bf(s[0])) + r);
        });
}
extern "C" __global__ void __launch_bounds__(256)
    gemv_bf16_t1_resid(const bf16_t* x, const bf16_t* w, const bf16_t* add, bf16_t* resid, int n, int k) {
    gemv_t1_resid<1>(x, w, add, resid, n, k);
}
extern "C" __global__ void __launch_bounds__(256)
    gemv_bf16_t1_resid_pipe(const bf16_t* x, const bf16_t* w, const bf16_t* add, bf16_t* resid, int n, int k) {
    gemv_t1_resid<2>(x, w, add, resid, n, k);
}

// The LM head of one row with the greedy pick in its epilogue (Gemm::head_argmax_t1,
// Fusion::HeadArgmax): y, the f32 logits, written as the plain GEMV writes them, and token[0] =
// the index of their largest value, lowest on ties, as argmax_rows picks it (0 when no logit is
// above -inf), without argmax_rows' kernel and its second pass over the row. argmax_key orders
// logits as floats (-0 as +0, equal under `>`) and equal ones by lower index; NaN and -inf are
// never candidates, as `x > v` never picks them. The live warps of a block take the max of their
// keys in shared memory, the block's last one adds it to *best (atomicMax), and the grid's last
// block (its ticket on *done) writes the token and leaves *best and *done zero for the next
// launch (the caller's scratch starts zero).
// With `tickets` set (HEAD_GROUPS u32 counters 32 words apart, zero between launches), fewer
// atomics land on one address: a block adds its key to *best only when it is above the value it
// reads there (*best only grows within a launch, so a key at or below it cannot be the pick),
// takes its ticket on its group's counter (blocks b, b + HEAD_GROUPS, ...), and only each
// group's last block takes one on *done, after zeroing its group's counter. Without it (null),
// every block makes both atomics on the same two words: ~32K same-address atomics for a 128K
// vocabulary.
// The token's other destinations (gemm_head.rs `PickOut`; each null where unused): `next_id`, an
// i32 the last block also writes it to (a decode graph's own input id: the next replay's token
// when it continues this row), and `host`, a cell holding the device address of a mapped pinned
// host word (0: none) that it is stored into, so that the host reads the token without a copy
// or another kernel after the replay; the cell is read by that one block, after every block's
// key is in, so it is whatever the stream wrote before this launch.
#define HEAD_GROUPS 32
__device__ __forceinline__ u64 argmax_key(float v, int row) {
    u32 u = __float_as_uint(v);
    if (u == 0x80000000u) u = 0;
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((u64)u << 32) | (u64)(0xffffffffu - (u32)row);
}
template <int DEPTH>
__device__ __forceinline__ void gemv_t1_argmax(const bf16_t* x, const bf16_t* w, float* y, int n, int k,
                                               u64* best, u32* done, u32* tickets, int* token,
                                               int* next_id, const u64* host) {
    __shared__ u64 blk_best;
    __shared__ u32 blk_seen;
    if (threadIdx.x == 0) {  // (read after gemv_rows_body's barrier)
        blk_best = 0;
        blk_seen = 0;
    }
    const int warps = blockDim.x >> 5;
    const u32 live = (u32)min(warps, n - (int)blockIdx.x * warps);
    gemv_t1_body<8, DEPTH, false, 1>(
        x, w, n, k, [](int row, int) { return row; },
        [&](int row, const float* s) {
            y[row] = s[0];
            if (s[0] > NEG_INF) atomicMax(&blk_best, argmax_key(s[0], row));
            __threadfence_block();
            if (atomicAdd(&blk_seen, 1u) + 1 != live) return;
            const u64 b = atomicMax(&blk_best, (u64)0);  // every live warp's key is in
            if (tickets) {
                if (b > *(volatile const u64*)best) atomicMax(best, b);
                __threadfence();
                const u32 g = blockIdx.x % HEAD_GROUPS, groups = min((u32)HEAD_GROUPS, gridDim.x);
                u32* mine = tickets + 32 * g;
                if (atomicAdd(mine, 1u) + 1 != (gridDim.x - 1 - g) / HEAD_GROUPS + 1) return;
                *mine = 0;  // its group's blocks are all in; none touches it again this launch
                __threadfence();
                if (atomicAdd(done, 1u) + 1 != groups) return;
            } else {
                if (b) atomicMax(best, b);
                __threadfence();
                if (atomicAdd(done, 1u) + 1 != gridDim.x) return;
            }
            __threadfence();  // every block's key is in *best
            const u64 all = atomicExch(best, (u64)0);
            *done = 0;
            const int pick = all ? (int)(0xffffffffu - (u32)all) : 0;
            token[0] = pick;
            if (next_id) *next_id = pick;
            if (host) {
                const u64 dst = *(volatile const u64*)host;
                if (dst) *(volatile int*)dst = pick;
            }
        });
}
extern "C" __global__ void __launch_bounds__(256)
    gemv_bf16_t1_argmax(const bf16_t* x, const bf16_t* w, float* y, int n, int k, u64* best, u32* done,
                        u32* tickets, int* token, int* next_id, const u64* host) {
    gemv_t1_argmax<1>(x, w, y, n, k, best, done, tickets, token, next_id, host);
}
extern "C" __global__ void __launch_bounds__(256)
    gemv_bf16_t1_argmax_pipe(const bf16_t* x, const bf16_t* w, float* y, int n, int k, u64* best, u32* done,
                             u32* tickets, int* token, int* next_id, const u64* host) {
    gemv_t1_argmax<2>(x, w, y, n, k, best, done, tickets, token, next_id, host);
}

// The fused qkv projection (q heads, k heads, v heads; head_dim hd) of `rows` rows with RoPE
// and the K/V pool write in the epilogue (rope_kv_write's work): warp j < (nq + 2 nk) * hd / 2
// streams weight rows c and c + hd / 2 of head h = j / (hd / 2), c = h * hd + j % (hd / 2); q and
// k pairs are rotated as rope_kv_write rotates them (the sums first rounded to bf16, as the GEMV
// writes them), v pairs kept; all written to y row t (the qkv rows, as rope_kv_write leaves
// them) and k / v also to row t's pool slot (slots[t] < 0: none), at position pos[t]. With
// norm_w set, x row t is the input RMSNorm of (x + resid) row t (x null: of resid alone), staged
// as gemv_stage_norm does.
struct QkvRopeEpi {
    bf16_t* y;
    int n, nq, nk, hd;
    const int* pos;
    const float* inv_freq;
    bf16_t *k_pool, *v_pool;
    const int* slots;
    __device__ __forceinline__ int wrow(int row, int r) const {
        const int half = hd >> 1, h = row / half;
        return h * hd + (row - h * half) + r * half;
    }
    __device__ __forceinline__ void operator()(int row, int t, const float* s) const {
        const int half = hd >> 1, h = row / half, i = row - h * half, c = h * hd + i;
        bf16_t* yt = y + (u64)t * (2 * n);
        bf16_t y1 = f2bf(s[0]), y2 = f2bf(s[1]);
        if (h < nq + nk) {
            float sn, cs;
            sincosf((float)pos[t] * inv_freq[i], &sn, &cs);
            rope_rot(bf2f(y1), bf2f(y2), cs, sn, &y1, &y2);
        }
        yt[c] = y1;
        yt[c + half] = y2;
        const long long slot = slots[t];
        if (h >= nq && slot >= 0) {
            const bool is_k = h < nq + nk;
            bf16_t* pr = (is_k ? k_pool : v_pool) + (u64)slot * (nk * hd) + (u64)(h - nq - (is_k ? 0 : nk)) * hd;
            pr[i] = y1;
            pr[i + half] = y2;
        }
    }
};
template <int T, int DEPTH>
__device__ __forceinline__ void gemv_qkv_rope_rows(const bf16_t* x, const bf16_t* w, bf16_t* y, int rows,
                                                   int n, int k, int nq, int nk, int hd, const int* pos,
                                                   const float* inv_freq, bf16_t* k_pool, bf16_t* v_pool,
                                                   const int* slots, NormIn nin) {
    const QkvRopeEpi e{y, n, nq, nk, hd, pos, inv_freq, k_pool, v_pool, slots};
    gemv_rows_body<T, 8, DEPTH, false, 2>(
        x, k, rows, w, n, k, [&](int row, int r) { return e.wrow(row, r); }, e, nin);
}
extern "C" __global__ void __launch_bounds__(256)
    gemv_bf16_t1_qkv_rope(const bf16_t* x, const bf16_t* w, bf16_t* y, int n, int k, int nq, int nk, int hd,
                          const int* pos, const float* inv_freq, bf16_t* k_pool, bf16_t* v_pool,
                          const int* slots, const bf16_t* resid, const bf16_t* norm_w, float eps) {
    gemv_qkv_rope_rows<1, 1>(x, w, y, 1, n, k, nq, nk, hd, pos, inv_freq, k_pool, v_pool, slots,
                             NormIn{resid, norm_w, eps});
}
extern "C" __global__ void __launch_bounds__(256)
    gemv_bf16_t1_qkv_rope_pipe(const bf16_t* x, const bf16_t* w, bf16_t* y, int n, int k, int nq, int nk,
                               int hd, const int* pos, const float* inv_freq, bf16_t* k_pool,
                               bf16_t* v_pool, const int* slots, const bf16_t* resid,
                               const bf16_t* norm_w, float eps) {
    gemv_qkv_rope_rows<1, 2>(x, w, y, 1, n, k, nq, nk, hd, pos, inv_freq, k_pool, v_pool, slots,
                             NormIn{resid, norm_w, eps});
}

// The few-row kernels (decode batches of 2..T rows, T = 2, 4, 8; `rows` <= T): the kernels above
// over several rows of x, every weight row streamed once for all of them. Each row's result is
// the single-row kernel's on that row, bit for bit. Shared memory: T * k bf16 (T * 2k staged
// from the SiLU forms' x is T * k after the SiLU). The gate form takes the plain one's arguments
// (y always bf16, y_f32 unused), as the single-row gate kernels do.
#define GEMV_ROWS(T)                                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                         \
        gemv_bf16_rows##T(const bf16_t* x, const bf16_t* w, void* y, int rows, int n, int k, int y_f32) {     \
        gemv_rows_plain<T, 8, 1, false>(x, w, y, rows, n, k, y_f32);                                          \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                                         \
        gemv_bf16_rows##T##_gate(const bf16_t* x, const bf16_t* w, void* y, int rows, int n, int k, int) {    \
        gemv_gate_rows<T, 1>(x, w, (bf16_t*)y, rows, n, k);                                                   \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(256) gemv_bf16_rows##T##_qkv_rope(                           \
        const bf16_t* x, const bf16_t* w, bf16_t* y, int rows, int n, int k, int nq, int nk, int hd,          \
        const int* pos, const float* inv_freq, bf16_t* k_pool, bf16_t* v_pool, const int* slots,              \
        const bf16_t* resid, const bf16_t* norm_w, float eps) {                                               \
        gemv_qkv_rope_rows<T, 1>(x, w, y, rows, n, k, nq, nk, hd, pos, inv_freq, k_pool, v_pool, slots,       \
                                 NormIn{resid, norm_w, eps});                                                 \
    }
GEMV_ROWS(2)
GEMV_ROWS(4)
GEMV_ROWS(8)

// Bench-only (`strata gpu bench --only stream`): how fast a grid shape streams a weight matrix
// from memory with the GEMVs' loads (evict-first, UNR 16-byte loads in flight per thread), the
// question a kernel with one block per SM must answer before it replaces the qkv GEMV's 192
// blocks (docs/perf.md, next steps item 1). Block b reads the b-th of gridDim.x contiguous
// slices of w (n16 16-byte words) and writes the sum of squares of its values to out[b] (so the
// loads cannot be dropped).
#ifndef STRATA_CUDA_EMU
extern "C" __global__ void __launch_bounds__(1024) stream_probe(const bf16_t* w, long long n16, float* out) {
    constexpr int UNR = 8;
    const uint4* w4 = (const uint4*)w;
    const u64 pol = gemv_w_policy();
    const long long per = (n16 + gridDim.x - 1) / gridDim.x, lo = (long long)blockIdx.x * per;
    const long long hi = lo + per < n16 ? lo + per : n16;
    float s = 0.f;
    for (long long i0 = lo + threadIdx.x; i0 < hi; i0 += (long long)UNR * blockDim.x) {
        uint4 v[UNR];
#pragma unroll
        for (int u = 0; u < UNR; ++u) {
            const long long i = i0 + (long long)u * blockDim.x;
            v[u] = i < hi ? gemv_ldw(w4 + i, pol) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < UNR; ++u) {
            float f[8];
            unpack8(v[u], f);
#pragma unroll
            for (int e = 0; e < 8; ++e) s += f[e] * f[e];
        }
    }
    __shared__ float sh[32];
    const float t = block_sum(s, sh);
    if (threadIdx.x == 0) out[blockIdx.x] = t;
}
#endif
