// Decode attention: one query token per sequence, for one KV head's `group` query heads.
// Same arguments and outputs as paged_attention (tile_info with query count 1, same split
// partials for attention_combine), but no shared-memory staging of K/V: each warp takes key
// tiles of 32 (warp w: tiles w, w + 4, ...), lane j reads key j's K row straight from the pool
// with 16-byte loads and scores it against the group's queries (in shared memory); V rows are
// read coalesced (lane owns head_dim/32 contiguous dims) with the slot of key j broadcast by
// shuffle. The four warps' online-softmax states are merged through shared memory at the end.
// group <= 8 and head_dim a multiple of 32, at most 128 (checked by the launcher).

#define DEC_WARPS 4
#define DEC_MAXG 8
#define DEC_MAXD 4

__device__ __forceinline__ void dec_unpack8(uint4 v, float* f) {
    f[0] = bf2f((bf16_t)(v.x & 0xffff)); f[1] = bf2f((bf16_t)(v.x >> 16));
    f[2] = bf2f((bf16_t)(v.y & 0xffff)); f[3] = bf2f((bf16_t)(v.y >> 16));
    f[4] = bf2f((bf16_t)(v.z & 0xffff)); f[5] = bf2f((bf16_t)(v.z >> 16));
    f[6] = bf2f((bf16_t)(v.w & 0xffff)); f[7] = bf2f((bf16_t)(v.w >> 16));
}

extern "C" __global__ void __launch_bounds__(128) paged_attention_decode(
    const bf16_t* q, int q_stride, const bf16_t* k_pool, const bf16_t* v_pool,
    const int* block_tables, int max_pages, int page_size, const int* tile_info, int n_heads,
    int n_kv_heads, int head_dim, float scale, int split_len, bf16_t* out, int out_stride,
    float* part_acc, float* part_ml, int total_rows) {
    pdl_enter();
    __shared__ __align__(16) float qs[DEC_MAXG * 128];
    __shared__ float red_m[DEC_WARPS][DEC_MAXG], red_l[DEC_WARPS][DEC_MAXG];
    __shared__ float red_acc[DEC_WARPS][DEC_MAXG][128];
    const int hd = head_dim, group = n_heads / n_kv_heads, dpl = hd / 32;
    const int tile = blockIdx.x, g = blockIdx.y, split = blockIdx.z, nsplit = gridDim.z;
    const int seq = tile_info[tile * 4 + 0], row = tile_info[tile * 4 + 1];
    const int pos0 = tile_info[tile * 4 + 3];
    const int kbeg = split * split_len;
    const int kend = min(pos0 + 1, kbeg + split_len);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    for (int idx = threadIdx.x; idx < group * hd; idx += blockDim.x) {
        int r = idx / hd, d = idx % hd;
        qs[idx] = bf2f(q[(u64)row * q_stride + (u64)(g * group + r) * hd + d]) * scale;
    }
    __syncthreads();

    float m[DEC_MAXG], l[DEC_MAXG], acc[DEC_MAXG][DEC_MAXD];
#pragma unroll
    for (int r = 0; r < DEC_MAXG; ++r) {
        m[r] = NEG_BIG;
        l[r] = 0.f;
#pragma unroll
        for (int i = 0; i < DEC_MAXD; ++i) acc[r][i] = 0.f;
    }
    const int* bt = block_tables + (u64)seq * max_pages;
    const int hd8 = hd / 8;

    for (int t0 = kbeg + warp * 32; t0 < kend; t0 += DEC_WARPS * 32) {
        const int key = t0 + lane;
        const bool ok = key < kend;
        u64 base = 0;
        if (ok) {
            u64 slot = (u64)bt[key / page_size] * page_size + key % page_size;
            base = (slot * n_kv_heads + g) * hd;
        }
        float s[DEC_MAXG];
#pragma unroll
        for (int r = 0; r < DEC_MAXG; ++r) s[r] = 0.f;
        const uint4* kr = (const uint4*)(k_pool + base);
        for (int c = 0; c < hd8; c += 4) {
            uint4 kv[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) kv[u] = ok ? kr[c + u] : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                float kf[8];
                dec_unpack8(kv[u], kf);
#pragma unroll
                for (int r = 0; r < DEC_MAXG; ++r) {
                    if (r < group) {
                        const float4 q0 = *(const float4*)(qs + r * hd + (c + u) * 8);
                        const float4 q1 = *(const float4*)(qs + r * hd + (c + u) * 8 + 4);
                        s[r] += q0.x * kf[0] + q0.y * kf[1] + q0.z * kf[2] + q0.w * kf[3] +
                                q1.x * kf[4] + q1.y * kf[5] + q1.z * kf[6] + q1.w * kf[7];
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < DEC_MAXG; ++r) {
            if (r < group) {
                float sv = ok ? s[r] : NEG_BIG;
                float mnew = fmaxf(m[r], warp_max(sv));
                float p = ok ? expf(sv - mnew) : 0.f;
                float corr = expf(m[r] - mnew);
                l[r] = l[r] * corr + warp_sum(p);
                m[r] = mnew;
#pragma unroll
                for (int i = 0; i < DEC_MAXD; ++i) acc[r][i] *= corr;
                s[r] = p;
            }
        }
        const int nk = min(32, kend - t0);
        for (int j0 = 0; j0 < nk; j0 += 8) {
            float vv[8][DEC_MAXD];
#pragma unroll
            for (int jj = 0; jj < 8; ++jj) {
                u64 vb = __shfl_sync(FULL_MASK, base, j0 + jj);
                bool has = j0 + jj < nk;
#pragma unroll
                for (int i = 0; i < DEC_MAXD; ++i)
                    vv[jj][i] = (has && i < dpl) ? bf2f(v_pool[vb + lane * dpl + i]) : 0.f;
            }
#pragma unroll
            for (int jj = 0; jj < 8; ++jj) {
#pragma unroll
                for (int r = 0; r < DEC_MAXG; ++r) {
                    if (r < group) {
                        float pj = __shfl_sync(FULL_MASK, s[r], j0 + jj);
#pragma unroll
                        for (int i = 0; i < DEC_MAXD; ++i) acc[r][i] += pj * vv[jj][i];
                    }
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < DEC_MAXG; ++r) {
        if (r < group) {
            if (lane == 0) {
                red_m[warp][r] = m[r];
                red_l[warp][r] = l[r];
            }
#pragma unroll
            for (int i = 0; i < DEC_MAXD; ++i)
                if (i < dpl) red_acc[warp][r][lane * dpl + i] = acc[r][i];
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < group * hd; idx += blockDim.x) {
        int r = idx / hd, d = idx % hd;
        float mx = NEG_BIG;
        for (int w = 0; w < DEC_WARPS; ++w) mx = fmaxf(mx, red_m[w][r]);
        float sum = 0.f, a = 0.f;
        for (int w = 0; w < DEC_WARPS; ++w) {
            float f = expf(red_m[w][r] - mx);
            sum += red_l[w][r] * f;
            a += red_acc[w][r][d] * f;
        }
        int h = g * group + r;
        if (nsplit == 1) {
            out[(u64)row * out_stride + (u64)h * hd + d] = f2bf(sum > 0.f ? a / sum : 0.f);
        } else {
            u64 b = ((u64)split * total_rows + row) * n_heads + h;
            part_acc[b * hd + d] = a;
            if (d == 0) {
                part_ml[b * 2] = mx;
                part_ml[b * 2 + 1] = sum;
            }
        }
    }
}
