// f32 kernels of `CudaBackend` (the `Backend` trait's ops, all buffers f32).
//
// These reproduce the CPU backend's arithmetic order so that greedy output and logits match it:
// every reduction is `dot32`, the CPU's fixed 32-lane scheme (lane l sums elements l, l+32, ...;
// the lanes fold pairwise 16, 8, 4, 2, 1; the k % 32 tail is summed serially and added last), and
// products and sums use the _rn intrinsics so NVRTC cannot contract them into FMAs (the CPU path has
// none). Only expf differs from the host's exp by an ulp or so. Because each output element's
// summation order depends only on its own inputs, results do not depend on the batch (batch
// invariance, see kernels/src/lib.rs). Speed is not the goal here; bf16 kernels are.

// Dot product of a[0..n] and b[0..n] by one full warp; every lane returns the result.
__device__ float dot32(const float* a, const float* b, int n) {
    int lane = threadIdx.x & 31;
    int full = n & ~31;
    float acc = 0.f;
    for (int i = lane; i < full; i += 32) acc = __fadd_rn(acc, __fmul_rn(a[i], b[i]));
#pragma unroll
    for (int w = 16; w > 0; w >>= 1) {
        float o = __shfl_down_sync(FULL_MASK, acc, w);
        if (lane < w) acc = __fadd_rn(acc, o);
    }
    float tail = 0.f;
    if (lane == 0)
        for (int i = full; i < n; ++i) tail = __fadd_rn(tail, __fmul_rn(a[i], b[i]));
    return __shfl_sync(FULL_MASK, __fadd_rn(acc, tail), 0);
}

// out[r] = table[ids[r]] (ids checked against the vocabulary on the host). One block per row.
extern "C" __global__ void f32_embedding(const u32* ids, const float* table, float* out, int dim) {
    pdl_enter();
    u64 r = blockIdx.x;
    u64 id = ids[r];
    for (int i = threadIdx.x; i < dim; i += blockDim.x) out[r * dim + i] = table[id * dim + i];
}

// out[r] = w * (x[r] / sqrt(dot(x[r], x[r]) / dim + eps)). One warp per row.
extern "C" __global__ void f32_rms_norm(const float* x, const float* w, float* out, int rows,
                                        int dim, float eps) {
    pdl_enter();
    int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const float* xr = x + (u64)r * dim;
    float var = __fdiv_rn(dot32(xr, xr, dim), (float)dim);
    float inv = __fdiv_rn(1.f, __fsqrt_rn(__fadd_rn(var, eps)));
    for (int i = threadIdx.x & 31; i < dim; i += 32)
        out[(u64)r * dim + i] = __fmul_rn(w[i], __fmul_rn(xr[i], inv));
}

// out[r, c] = dot(x[r], w[c]) + bias[c] for x [rows, k], w [n, k]. One warp per output column c
// (blockIdx.x, warps), rows in groups of gridDim.y-strided blocks so a weight row is re-read from
// cache, not DRAM, across the rows of a group.
#define LINEAR_ROWS 8
extern "C" __global__ void f32_linear(const float* x, const float* w, const float* bias,
                                      float* out, int rows, int k, int n) {
    pdl_enter();
    int c = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (c >= n) return;
    const float* wr = w + (u64)c * k;
    float bv = bias ? bias[c] : 0.f;
    int r0 = blockIdx.y * LINEAR_ROWS;
    int r1 = min(r0 + LINEAR_ROWS, rows);
    for (int r = r0; r < r1; ++r) {
        float d = dot32(x + (u64)r * k, wr, k);
        if ((threadIdx.x & 31) == 0) out[(u64)r * n + c] = __fadd_rn(d, bv);
    }
}

// Rotate-half RoPE in place on x [rows, heads, head_dim]; cs holds, per row, that row's position's
// cos[half] then sin[half] (gathered from the host table).
extern "C" __global__ void f32_rope(float* x, const float* cs, int heads, int head_dim) {
    pdl_enter();
    u64 r = blockIdx.x;
    int half = head_dim / 2;
    const float* cos = cs + r * 2 * half;
    const float* sin = cos + half;
    for (int j = threadIdx.x; j < heads * half; j += blockDim.x) {
        int h = j / half, i = j % half;
        float* v = x + (r * heads + h) * head_dim;
        float x1 = v[i], x2 = v[i + half];
        v[i] = __fsub_rn(__fmul_rn(x1, cos[i]), __fmul_rn(x2, sin[i]));
        v[i + half] = __fadd_rn(__fmul_rn(x2, cos[i]), __fmul_rn(x1, sin[i]));
    }
}

// out = gate / (1 + exp(-gate)) * up.
extern "C" __global__ void f32_silu_mul(const float* gate, const float* up, float* out, u64 len) {
    pdl_enter();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += (u64)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.f, expf(-g))), up[i]);
    }
}

// x += y.
extern "C" __global__ void f32_add(float* x, const float* y, u64 len) {
    pdl_enter();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += (u64)gridDim.x * blockDim.x)
        x[i] = __fadd_rn(x[i], y[i]);
}

// dst[dst_rows[i]] = src[src_rows[i]] for rows of row_len floats; one block per i. Row indices were
// bounds-checked on the host. Used by store_kv (scatter) and gather_rows (gather).
extern "C" __global__ void f32_copy_rows(const float* src, const u32* src_rows, float* dst,
                                         const u32* dst_rows, int row_len) {
    pdl_enter();
    u64 s = src_rows[blockIdx.x], d = dst_rows[blockIdx.x];
    for (int i = threadIdx.x; i < row_len; i += blockDim.x)
        dst[d * row_len + i] = src[s * row_len + i];
}

// Causal paged attention, one warp per (query row = blockIdx.x, head = blockIdx.y).
// meta[3*row] = q row index, meta[3*row+1] = position p (attends to 0..=p), meta[3*row+2] = offset
// of its sequence's page list in `pages`. Same three passes as the CPU: scores' max, the sum of
// exp(score - max) in position order, then out += (exp(score - max) / sum) * v in position order.
// Scores are recomputed per pass instead of stored (no scratch; O(3 x kv_len) dots per warp).
#define ATTN_MAX_DIM 256
extern "C" __global__ void f32_attention(const float* q, const float* kc, const float* vc,
                                         const int* meta, const u32* pages, float* out, int heads,
                                         int kv_heads, int head_dim, int page_size, float scale) {
    pdl_enter();
    int row = blockIdx.x, h = blockIdx.y, lane = threadIdx.x & 31;
    int qrow = meta[3 * row], pos = meta[3 * row + 1];
    const u32* pt = pages + meta[3 * row + 2];
    int kvh = h / (heads / kv_heads);
    u64 kv_dim = (u64)kv_heads * head_dim;
    const float* qh = q + ((u64)qrow * heads + h) * head_dim;
    float mx = NEG_INF;
    for (int j = 0; j <= pos; ++j) {
        u64 slot = (u64)pt[j / page_size] * page_size + j % page_size;
        float s = __fmul_rn(dot32(qh, kc + slot * kv_dim + (u64)kvh * head_dim, head_dim), scale);
        mx = fmaxf(mx, s);
    }
    float sum = 0.f;
    for (int j = 0; j <= pos; ++j) {
        u64 slot = (u64)pt[j / page_size] * page_size + j % page_size;
        float s = __fmul_rn(dot32(qh, kc + slot * kv_dim + (u64)kvh * head_dim, head_dim), scale);
        sum = __fadd_rn(sum, expf(__fsub_rn(s, mx)));
    }
    float acc[ATTN_MAX_DIM / 32];
#pragma unroll
    for (int t = 0; t < ATTN_MAX_DIM / 32; ++t) acc[t] = 0.f;
    for (int j = 0; j <= pos; ++j) {
        u64 slot = (u64)pt[j / page_size] * page_size + j % page_size;
        u64 off = slot * kv_dim + (u64)kvh * head_dim;
        float s = __fmul_rn(dot32(qh, kc + off, head_dim), scale);
        float p = __fdiv_rn(expf(__fsub_rn(s, mx)), sum);
#pragma unroll
        for (int t = 0; t < ATTN_MAX_DIM / 32; ++t) {
            int d = lane + 32 * t;
            if (d < head_dim) acc[t] = __fadd_rn(acc[t], __fmul_rn(p, vc[off + d]));
        }
    }
#pragma unroll
    for (int t = 0; t < ATTN_MAX_DIM / 32; ++t) {
        int d = lane + 32 * t;
        if (d < head_dim) out[((u64)qrow * heads + h) * head_dim + d] = acc[t];
    }
}
