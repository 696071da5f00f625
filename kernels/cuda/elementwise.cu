// Row-wise model ops: embedding, RMSNorm (optionally fused with the residual add), RoPE, SiLU*mul,
// the KV write into the paged pool, and the on-device random fill used by benchmarks.
// All storage is bf16, all arithmetic f32. One block per token row unless stated otherwise.

// out[t] = table[ids[t]]; an id outside [0, vocab) yields a zero row.
extern "C" __global__ void embedding(const int* ids, const bf16_t* table, bf16_t* out, int hidden,
                                     int vocab) {
    pdl_enter();
    int t = blockIdx.x;
    int id = ids[t];
    bool ok = id >= 0 && id < vocab;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        out[(u64)t * hidden + i] = ok ? table[(u64)id * hidden + i] : (bf16_t)0;
}

// dst[upd[1 + 2 i]] = upd[2 + 2 i] for i < upd[0] (indices below n_dst): the changed entries of
// a decode plan's page tables in one launch instead of one copy each (attention/fixed.rs).
extern "C" __global__ void scatter_i32(const int* upd, int* dst, int n_dst) {
    pdl_enter();
    const int n = upd[0];
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const int at = upd[1 + 2 * i];
        if (at >= 0 && at < n_dst) dst[at] = upd[2 + 2 * i];
    }
}

// dst[i] = src[i] for i < n, dst in pinned host memory the device maps: a forward's sampled
// tokens brought back by the device's own stores (Readback) instead of a copy-engine transfer,
// which waits for the compute work before it and holds up the next forward queued after it.
extern "C" __global__ void words_to_host(const int* src, int* dst, int n) {
    pdl_enter();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) dst[i] = src[i];
}

// dst[ids[t]] = bf16(dst[ids[t]] + src[t]) for t < blocks (rows of `width`; the ids distinct):
// the LoRA adapters' change to their rows of a projection's output.
extern "C" __global__ void add_rows(const int* ids, const bf16_t* src, bf16_t* dst, int width) {
    pdl_enter();
    const u64 t = blockIdx.x, d = (u64)ids[t];
    for (int i = threadIdx.x; i < width; i += blockDim.x)
        dst[d * width + i] = f2bf(bf2f(dst[d * width + i]) + bf2f(src[t * width + i]));
}

// With residual: residual[t] = bf16(x[t] + residual[t]); out[t] = bf16(rms(residual[t]) * w).
// Without (residual == 0): out[t] = bf16(rms(x[t]) * w). `out` may alias `x`: every element is read
// and written by the same thread. Rows of a multiple of 8 elements with 16-byte aligned bases take
// 16-byte loads and stores and keep the row in registers (up to RMS_VEC chunks of 8 per thread: one
// read of x and residual, no second pass over memory); the per-element arithmetic is the same as
// the scalar path's, only the order of the sum of squares differs.
#define RMS_VEC 4
// The vector path's second half, shared by rmsnorm and rmsnorm_add2: the block's sum of squares
// ss (partial per thread), then out chunk c = v[k] * r * w for this thread's chunks.
// w0 is this thread's first chunk of w (rms_w0), loaded before the PDL wait: the weight is
// constant, so only x and the residual are read after it.
__device__ __forceinline__ void rms_vec_out(const uint4 (&v)[RMS_VEC], float ss, float* sh, const bf16_t* w,
                                            uint4 w0, bf16_t* out, u64 base, int nc, int hidden, float eps) {
    const float r = rsqrtf(block_sum(ss, sh) / (float)hidden + eps);
    const uint4* w4 = (const uint4*)w;
    uint4* o4 = (uint4*)(out + base);
#pragma unroll
    for (int k = 0; k < RMS_VEC; ++k) {
        const int c = threadIdx.x + k * blockDim.x;
        if (c < nc) {
            o4[c] = bf8_norm(v[k], k == 0 ? w0 : w4[c], r);
        }
    }
}
// The vector path's first weight chunk of this thread (zero where it has none).
__device__ __forceinline__ uint4 rms_w0(const bf16_t* w, int nc) {
    return (int)threadIdx.x < nc ? ((const uint4*)w)[threadIdx.x] : make_uint4(0, 0, 0, 0);
}

extern "C" __global__ void rmsnorm(const bf16_t* x, bf16_t* residual, const bf16_t* w, bf16_t* out,
                                   int hidden, float eps) {
    __shared__ float sh[32];
    u64 base = (u64)blockIdx.x * hidden;
    const int nc = hidden >> 3;
    const bool vec = (hidden & 7) == 0 && nc <= RMS_VEC * (int)blockDim.x &&
                     ((((u64)x | (u64)residual | (u64)w | (u64)out) & 15) == 0);
    const uint4 w0 = vec ? rms_w0(w, nc) : make_uint4(0, 0, 0, 0);
    pdl_enter_chain();
    if (vec) {
        const uint4* x4 = (const uint4*)(x + base);
        uint4* r4 = (uint4*)(residual + base);
        uint4 v[RMS_VEC];
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < RMS_VEC; ++k) {
            const int c = threadIdx.x + k * blockDim.x;
            if (c < nc) {
                uint4 a = x4[c];
                if (residual) {
                    const uint4 b = r4[c];
                    bf8_add(a, b);
                    r4[c] = a;
                }
                v[k] = a;
                bf8_sumsq(a, ss);
            }
        }
        rms_vec_out(v, ss, sh, w, w0, out, base, nc, hidden, eps);
        return;
    }
    float ss = 0.f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = bf2f(x[base + i]);
        if (residual) {
            bf16_t s = f2bf(v + bf2f(residual[base + i]));
            residual[base + i] = s;
            v = bf2f(s);
        }
        ss += v * v;
    }
    float total = block_sum(ss, sh);
    float r = rsqrtf(total / (float)hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = residual ? bf2f(residual[base + i]) : bf2f(x[base + i]);
        out[base + i] = f2bf(v * r * bf2f(w[i]));
    }
}

// rmsnorm with two residual adds, for the one-row decode step whose input norm was staged into
// the qkv GEMV (gemv_stage_norm, which leaves the residual alone): residual = (residual + x1) +
// x2, each sum rounded to bf16 as two rmsnorm calls in sequence would round it, then out =
// rmsnorm(residual) * w, the sum of squares in the vector path's order. Vector path only
// (hidden % 8 == 0, hidden / 8 <= 4 * blockDim.x, 16-byte aligned rows; the host checks).
extern "C" __global__ void rmsnorm_add2(const bf16_t* x1, const bf16_t* x2, bf16_t* residual, const bf16_t* w,
                                        bf16_t* out, int hidden, float eps) {
    __shared__ float sh[32];
    const u64 base = (u64)blockIdx.x * hidden;
    const int nc = hidden >> 3;
    const uint4 w0 = rms_w0(w, nc);
    pdl_enter_chain();
    const uint4 *a4 = (const uint4*)(x1 + base), *b4 = (const uint4*)(x2 + base);
    uint4* r4 = (uint4*)(residual + base);
    uint4 v[RMS_VEC];
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < RMS_VEC; ++k) {
        const int c = threadIdx.x + k * blockDim.x;
        if (c < nc) {
            uint4 a = a4[c];
            const uint4 r = r4[c], b = b4[c];
            bf8_add(a, r);
            uint4 e2 = b;
            bf8_add(e2, a);
            r4[c] = e2;
            v[k] = e2;
            bf8_sumsq(e2, ss);
        }
    }
    rms_vec_out(v, ss, sh, w, w0, out, base, nc, hidden, eps);
}

// Rotary embedding, rotate-half (GPT-NeoX / Hugging Face Llama) layout, in place on q and k.
// inv_freq[head_dim/2] already carries any llama3 scaling. Rows have explicit strides so q and k
// can live inside one fused qkv projection output.
extern "C" __global__ void rope(bf16_t* q, int q_stride, int n_q_heads, bf16_t* k, int k_stride,
                                int n_k_heads, const int* pos, const float* inv_freq,
                                int head_dim) {
    pdl_enter();
    int t = blockIdx.x;
    int half = head_dim / 2;
    float p = (float)pos[t];
    int total = (n_q_heads + n_k_heads) * half;
    for (int j = threadIdx.x; j < total; j += blockDim.x) {
        int h = j / half, i = j % half;
        bf16_t* v = h < n_q_heads ? q + (u64)t * q_stride + (u64)h * head_dim
                                  : k + (u64)t * k_stride + (u64)(h - n_q_heads) * head_dim;
        float s, c;
        sincosf(p * inv_freq[i], &s, &c);
        rope_rot(bf2f(v[i]), bf2f(v[i + half]), c, s, &v[i], &v[i + half]);
    }
}

// True when rope_kv_write can move 16-byte chunks: half heads of a multiple of 8 elements,
// 8-element-aligned columns and strides, 16-byte aligned bases. Mirrored on the host to size the
// block (CudaOps::rope_kv_write).
__device__ __forceinline__ bool rope_vec_ok(const bf16_t* qkv, int stride, int q_col, int k_col,
                                            int v_col, int head_dim, const bf16_t* k_pool,
                                            const bf16_t* v_pool) {
    return (head_dim & 15) == 0 && ((stride | q_col | k_col | v_col) & 7) == 0 &&
           ((((u64)qkv | (u64)k_pool | (u64)v_pool) & 15) == 0);
}

// Most rotated pairs per head whose angles rope_kv_write keeps in shared memory (head_dim 512).
#define ROPE_CS_MAX 256

// `rope` and `kv_write` in one kernel for a fused qkv row (one block per token): q and k heads are
// rotated in place, and the rotated K and the V of the token are written to its pool slot
// (slot < 0: rotate only; n_q_heads 0: K alone, the prefill attention rotating Q itself as it
// loads it). Same arithmetic and rounding as the two kernels in sequence; where rope_vec_ok,
// each thread rotates 8 consecutive pairs of a head with 16-byte loads and stores, with the
// token's (cos, sin) per pair computed once into shared memory for every head (the same sincosf
// of the same product, so the same bits; it was once per head, 40 per pair on the 8B shape).
extern "C" __global__ void rope_kv_write(bf16_t* qkv, int stride, int q_col, int n_q_heads,
                                         int k_col, int n_k_heads, int v_col, const int* pos,
                                         const float* inv_freq, int head_dim, bf16_t* k_pool,
                                         bf16_t* v_pool, const int* slots) {
    pdl_enter();
    __shared__ float2 cs[ROPE_CS_MAX];
    const int t = blockIdx.x, half = head_dim / 2;
    const float p = (float)pos[t];
    const long long slot = slots[t];
    const int kv_dim = n_k_heads * head_dim;
    bf16_t* row = qkv + (u64)t * stride;
    if (rope_vec_ok(qkv, stride, q_col, k_col, v_col, head_dim, k_pool, v_pool) && half <= ROPE_CS_MAX) {
        for (int i = threadIdx.x; i < half; i += blockDim.x) {
            float s, c;
            sincosf(p * inv_freq[i], &s, &c);
            cs[i] = make_float2(c, s);
        }
        __syncthreads();
        const int hc = half >> 3;  // 8-pair chunks per head
        const int items = (n_q_heads + n_k_heads) * hc;
        for (int j = threadIdx.x; j < items; j += blockDim.x) {
            const int h = j / hc, i0 = (j - h * hc) * 8;
            const bool is_k = h >= n_q_heads;
            bf16_t* v = is_k ? row + k_col + (h - n_q_heads) * head_dim : row + q_col + h * head_dim;
            const uint4 a = *(const uint4*)(v + i0), b = *(const uint4*)(v + half + i0);
            const u32 aw[4] = {a.x, a.y, a.z, a.w}, bw[4] = {b.x, b.y, b.z, b.w};
            bf16_t y1[8], y2[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const u32 sh = (e & 1) ? 16 : 0;
                const float2 a = cs[i0 + e];
                rope_rot(bf2f((bf16_t)(aw[e >> 1] >> sh)), bf2f((bf16_t)(bw[e >> 1] >> sh)), a.x, a.y,
                         &y1[e], &y2[e]);
            }
            uint4 ya, yb;
            ya.x = (u32)y1[0] | ((u32)y1[1] << 16);
            ya.y = (u32)y1[2] | ((u32)y1[3] << 16);
            ya.z = (u32)y1[4] | ((u32)y1[5] << 16);
            ya.w = (u32)y1[6] | ((u32)y1[7] << 16);
            yb.x = (u32)y2[0] | ((u32)y2[1] << 16);
            yb.y = (u32)y2[2] | ((u32)y2[3] << 16);
            yb.z = (u32)y2[4] | ((u32)y2[5] << 16);
            yb.w = (u32)y2[6] | ((u32)y2[7] << 16);
            *(uint4*)(v + i0) = ya;
            *(uint4*)(v + half + i0) = yb;
            if (is_k && slot >= 0) {
                bf16_t* kp = k_pool + (u64)slot * kv_dim + (u64)(h - n_q_heads) * head_dim;
                *(uint4*)(kp + i0) = ya;
                *(uint4*)(kp + half + i0) = yb;
            }
        }
        if (slot >= 0) {
            const uint4* src = (const uint4*)(row + v_col);
            uint4* dst = (uint4*)(v_pool + (u64)slot * kv_dim);
            for (int c = threadIdx.x; c < kv_dim / 8; c += blockDim.x) dst[c] = src[c];
        }
        return;
    }
    const int total = (n_q_heads + n_k_heads) * half;
    for (int j = threadIdx.x; j < total; j += blockDim.x) {
        const int h = j / half, i = j % half;
        const bool is_k = h >= n_q_heads;
        bf16_t* v = is_k ? row + k_col + (h - n_q_heads) * head_dim : row + q_col + h * head_dim;
        float s, c;
        sincosf(p * inv_freq[i], &s, &c);
        bf16_t y1, y2;
        rope_rot(bf2f(v[i]), bf2f(v[i + half]), c, s, &y1, &y2);
        v[i] = y1;
        v[i + half] = y2;
        if (is_k && slot >= 0) {
            bf16_t* kp = k_pool + (u64)slot * kv_dim + (u64)(h - n_q_heads) * head_dim;
            kp[i] = y1;
            kp[i + half] = y2;
        }
    }
    if (slot >= 0) {
        for (int i = threadIdx.x; i < kv_dim; i += blockDim.x)
            v_pool[(u64)slot * kv_dim + i] = row[v_col + i];
    }
}

// out[t, i] = silu(gu[t, i]) * gu[t, inter + i]   (gate first, up second, as one fused GEMM output).
// 16 bytes (8 elements) per load and store when rows allow it (inter % 8 == 0, aligned bases);
// the arithmetic per element is the same either way.
extern "C" __global__ void silu_mul(const bf16_t* gu, bf16_t* out, int inter) {
    pdl_enter();
    u64 t = blockIdx.x;
    if ((inter & 7) == 0 && (((u64)gu | (u64)out) & 15) == 0) {
        const uint4* g4 = (const uint4*)(gu + t * 2 * inter);
        const uint4* u4 = (const uint4*)(gu + t * 2 * inter + inter);
        uint4* o4 = (uint4*)(out + t * inter);
        for (int c = threadIdx.x; c < inter / 8; c += blockDim.x) {
            const uint4 gv = g4[c], uv = u4[c];
            const u32 gw[4] = {gv.x, gv.y, gv.z, gv.w}, uw[4] = {uv.x, uv.y, uv.z, uv.w};
            u32 ow[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float lo = silu_times(bf2f((bf16_t)(gw[e] & 0xffff)), bf2f((bf16_t)(uw[e] & 0xffff)));
                const float hi = silu_times(bf2f((bf16_t)(gw[e] >> 16)), bf2f((bf16_t)(uw[e] >> 16)));
                ow[e] = (u32)f2bf(lo) | ((u32)f2bf(hi) << 16);
            }
            o4[c] = make_uint4(ow[0], ow[1], ow[2], ow[3]);
        }
        return;
    }
    for (int i = threadIdx.x; i < inter; i += blockDim.x) {
        float g = bf2f(gu[t * 2 * inter + i]);
        float u = bf2f(gu[t * 2 * inter + inter + i]);
        out[t * inter + i] = f2bf(silu_times(g, u));
    }
}

// k_pool/v_pool: one layer, [slots][kv_dim]. slot < 0 skips the token (padding).
extern "C" __global__ void kv_write(const bf16_t* k, int k_stride, const bf16_t* v, int v_stride,
                                    bf16_t* k_pool, bf16_t* v_pool, const int* slots,
                                    int kv_dim) {
    pdl_enter();
    int t = blockIdx.x;
    long long slot = slots[t];
    if (slot < 0) return;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        k_pool[(u64)slot * kv_dim + i] = k[(u64)t * k_stride + i];
        v_pool[(u64)slot * kv_dim + i] = v[(u64)t * v_stride + i];
    }
}

__device__ __forceinline__ u64 splitmix64(u64 x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// out[i] = bf16(uniform(-scale, scale)), a pure function of (seed, i): benchmark weights without a
// host round trip.
extern "C" __global__ void fill_uniform_bf16(bf16_t* out, u64 n, u64 seed, float scale) {
    pdl_enter();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 h = splitmix64(seed ^ splitmix64(i));
        float u = (float)(h >> 40) * (1.0f / 16777216.0f);
        out[i] = f2bf((2.f * u - 1.f) * scale);
    }
}

// After the fused qkv GEMM of Qwen2 / Qwen3, in place on one token row per block: adds the q|k|v
// bias over the first `width` columns (bias == 0: none), then RMSNorm of each q and k head over
// head_dim with weights q_norm / k_norm (q_norm == 0: none), rounding as Hugging Face does
// (normalised value to bf16, then times the weight). q heads then k heads start at column 0.
extern "C" __global__ void qkv_bias_norm(bf16_t* qkv, int stride, const bf16_t* bias, int width,
                                         const bf16_t* q_norm, const bf16_t* k_norm, int n_q_heads,
                                         int n_k_heads, int head_dim, float eps) {
    pdl_enter();
    bf16_t* row = qkv + (u64)blockIdx.x * stride;
    if (bias) {
        for (int i = threadIdx.x; i < width; i += blockDim.x)
            row[i] = f2bf(bf2f(row[i]) + bf2f(bias[i]));
        __syncthreads();
    }
    if (!q_norm) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    for (int h = warp; h < n_q_heads + n_k_heads; h += nw) {
        bf16_t* v = row + (u64)h * head_dim;
        const bf16_t* w = h < n_q_heads ? q_norm : k_norm;
        float ss = 0.f;
        for (int i = lane; i < head_dim; i += 32) {
            const float x = bf2f(v[i]);
            ss += x * x;
        }
        ss = warp_sum(ss);
        const float r = rsqrtf(ss / (float)head_dim + eps);
        for (int i = lane; i < head_dim; i += 32)
            v[i] = f2bf(bf2f(f2bf(bf2f(v[i]) * r)) * bf2f(w[i]));
    }
}

// Bench-only (`strata gpu bench --only handoff`): what one kernel boundary of the batch-1 decode
// chain costs under each way of waiting for the predecessor. Kernel k (1..) of a chain of such
// kernels reads row k - 1 (`n` floats), written by its predecessor's blocks (row 0: constant),
// every block sums it (the work of a row norm) and writes its slice of row k. mode 0: wait, then
// trigger (pdl_enter); 1: trigger, then wait (pdl_enter_chain's early form); 2-4: no
// griddepcontrol.wait: thread 0 polls the predecessor's arrival counter sync[(k - 1) * 32]
// (acquire loads, every 32 ns) until all `need` of its blocks counted themselves in, the block
// barrier hands that on, and each block counts itself into sync[k * 32] once its slice is
// written. 2: with full fences (a fence after the poll; block barrier, fence, atomic add: the
// form tried on the decode chain on 2026-12-06, docs/perf.md); 3: release / acquire alone
// (block barrier, then `red.release.gpu`; the acquire poll, then the block barrier), the
// successor triggered before the wait; 4: as 3, triggered after it.
// (PTX inline: not built under the host-thread emulation of kernels/tests/cuda_emu.)
#ifndef STRATA_CUDA_EMU
extern "C" __global__ void handoff_probe(float* rows, u32* sync, int k, int need, int n, int mode) {
    constexpr int STRIDE = 32;  // counters 128 bytes apart
    if (mode == 0) pdl_enter();
    if (mode == 1 || mode == 2 || mode == 3) pdl_trigger();
    if (mode == 1) pdl_wait();
    if (mode >= 2) {
        if (threadIdx.x == 0 && k > 1) {
            const u32* p = sync + (u64)(k - 1) * STRIDE;
            for (u32 v;;) {
                asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
                if (v >= (u32)need) break;
                __nanosleep(32);  // (no bound: the bench's timeout stops a hang)
            }
            if (mode == 2) __threadfence();
        }
        __syncthreads();
        if (mode == 4) pdl_trigger();
    }
    __shared__ float sh[32];
    const float* in = rows + (u64)(k - 1) * n;
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += in[i];
    const float t = block_sum(s, sh);
    const int per = (n + gridDim.x - 1) / gridDim.x, lo = blockIdx.x * per;
    const int hi = min(n, lo + per);
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) rows[(u64)k * n + i] = in[i] + t * 1e-6f;
    if (mode >= 2) {
        __syncthreads();
        if (threadIdx.x == 0) {
            u32* c = sync + (u64)k * STRIDE;
            if (mode == 2) {
                __threadfence();
                atomicAdd(c, 1u);
            } else {
                asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(c) : "memory");
            }
        }
    }
}
#endif
