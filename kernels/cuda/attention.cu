// Paged attention over the KV pool, shared by prefill (many query rows per sequence, causal, with
// a cached prefix) and decode (one query row per sequence, split over the sequence).
//
// Work unit: a tile = up to 16/group consecutive query tokens of one sequence, for one KV head g
// and all `group` query heads that share it (GQA), so one K/V tile in shared memory serves
// 16 (token, head) rows. blockIdx = (tile, kv head, split). A split covers keys
// [split*split_len, (split+1)*split_len); with more than one split each block writes an
// unnormalised partial (acc, max, sum) and `attention_combine` merges them.
// tile_info[4*tile] = {seq, first query row, query count, kv position of the first query}; query
// i of the tile may attend keys [0, pos0 + i] (causal). Online softmax in f32; scores use the
// pre-scaled query. head_dim is a multiple of 32 and at most 128 (checked by the launcher).
// Row r of warp w is tile row r * ATT_WARPS + w, so a decode tile's `group` rows spread over all
// warps. K/V are read 16 bytes at a time (each head's slice is 16-byte aligned: hd % 8 == 0).

#define ATT_ROWS 16
#define ATT_RPW 4
#define ATT_KT 32
#define ATT_MAXD 4
#define ATT_WARPS 4

extern "C" __global__ void __launch_bounds__(128) paged_attention(
    const bf16_t* q, int q_stride, const bf16_t* k_pool, const bf16_t* v_pool,
    const int* block_tables, int max_pages, int page_size, const int* tile_info, int n_heads,
    int n_kv_heads, int head_dim, float scale, int split_len, bf16_t* out, int out_stride,
    float* part_acc, float* part_ml, int total_rows) {
    pdl_enter();
    extern __shared__ float smem[];
    const int hd = head_dim;
    const int group = n_heads / n_kv_heads;
    float* qs = smem;                    // [ATT_ROWS][hd]
    float* ks = qs + ATT_ROWS * hd;      // [ATT_KT][hd + 1]
    float* vs = ks + ATT_KT * (hd + 1);  // [ATT_KT][hd]
    const int tile = blockIdx.x, g = blockIdx.y, split = blockIdx.z, nsplit = gridDim.z;
    const int seq = tile_info[tile * 4 + 0], row0 = tile_info[tile * 4 + 1];
    const int qcount = tile_info[tile * 4 + 2], pos0 = tile_info[tile * 4 + 3];
    const int nrows = qcount * group;
    const int kbeg = split * split_len;
    const int kend = min(pos0 + qcount, kbeg + split_len);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    for (int idx = threadIdx.x; idx < ATT_ROWS * hd; idx += blockDim.x) {
        int r = idx / hd, d = idx % hd;
        float val = 0.f;
        if (r < nrows) {
            int qi = r / group, h = g * group + r % group;
            val = bf2f(q[(u64)(row0 + qi) * q_stride + (u64)h * hd + d]) * scale;
        }
        qs[idx] = val;
    }

    float m[ATT_RPW], l[ATT_RPW], acc[ATT_RPW][ATT_MAXD];
    int lim[ATT_RPW];
#pragma unroll
    for (int r = 0; r < ATT_RPW; ++r) {
        int row = r * ATT_WARPS + warp;
        m[r] = NEG_BIG;
        l[r] = 0.f;
        lim[r] = row < nrows ? pos0 + row / group + 1 : 0;
#pragma unroll
        for (int i = 0; i < ATT_MAXD; ++i) acc[r][i] = 0.f;
    }
    const int* bt = block_tables + (u64)seq * max_pages;
    const int hd8 = hd / 8;

    for (int t0 = kbeg; t0 < kend; t0 += ATT_KT) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < ATT_KT * hd8; idx += blockDim.x) {
            int j = idx / hd8, d = (idx % hd8) * 8;
            int key = t0 + j;
            uint4 kk = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (key < kend) {
                u64 slot = (u64)bt[key / page_size] * page_size + key % page_size;
                u64 off = (slot * n_kv_heads + g) * hd + d;
                kk = *(const uint4*)(k_pool + off);
                vv = *(const uint4*)(v_pool + off);
            }
            const u32 kw[4] = {kk.x, kk.y, kk.z, kk.w};
            const u32 vw[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                ks[j * (hd + 1) + d + 2 * e] = bf2f((bf16_t)(kw[e] & 0xffff));
                ks[j * (hd + 1) + d + 2 * e + 1] = bf2f((bf16_t)(kw[e] >> 16));
            }
            *(float4*)(vs + j * hd + d) = make_float4(bf2f((bf16_t)(vw[0] & 0xffff)), bf2f((bf16_t)(vw[0] >> 16)),
                                                      bf2f((bf16_t)(vw[1] & 0xffff)), bf2f((bf16_t)(vw[1] >> 16)));
            *(float4*)(vs + j * hd + d + 4) = make_float4(bf2f((bf16_t)(vw[2] & 0xffff)), bf2f((bf16_t)(vw[2] >> 16)),
                                                          bf2f((bf16_t)(vw[3] & 0xffff)), bf2f((bf16_t)(vw[3] >> 16)));
        }
        __syncthreads();

        float s[ATT_RPW];
#pragma unroll
        for (int r = 0; r < ATT_RPW; ++r) s[r] = 0.f;
        const float* kr = ks + lane * (hd + 1);
        const float* qw = qs + warp * hd;
        for (int d = 0; d < hd; d += 4) {
            float k0 = kr[d], k1 = kr[d + 1], k2 = kr[d + 2], k3 = kr[d + 3];
#pragma unroll
            for (int r = 0; r < ATT_RPW; ++r) {
                float4 qv = *(const float4*)(qw + r * ATT_WARPS * hd + d);
                s[r] += qv.x * k0 + qv.y * k1 + qv.z * k2 + qv.w * k3;
            }
        }
        const int key = t0 + lane;
#pragma unroll
        for (int r = 0; r < ATT_RPW; ++r) {
            bool ok = key < kend && key < lim[r];
            float sv = ok ? s[r] : NEG_BIG;
            float mnew = fmaxf(m[r], warp_max(sv));
            float p = ok ? expf(sv - mnew) : 0.f;
            float corr = expf(m[r] - mnew);
            l[r] = l[r] * corr + warp_sum(p);
            m[r] = mnew;
#pragma unroll
            for (int i = 0; i < ATT_MAXD; ++i) acc[r][i] *= corr;
            s[r] = p;
        }
        const int dpl = hd / 32;
        for (int j = 0; j < ATT_KT; ++j) {
            const float* vr = vs + j * hd;
            float vv[ATT_MAXD];
#pragma unroll
            for (int i = 0; i < ATT_MAXD; ++i) vv[i] = i < dpl ? vr[lane + 32 * i] : 0.f;
#pragma unroll
            for (int r = 0; r < ATT_RPW; ++r) {
                float pj = __shfl_sync(FULL_MASK, s[r], j);
#pragma unroll
                for (int i = 0; i < ATT_MAXD; ++i) acc[r][i] += pj * vv[i];
            }
        }
    }

    const int dpl = hd / 32;
#pragma unroll
    for (int r = 0; r < ATT_RPW; ++r) {
        int row = r * ATT_WARPS + warp;
        if (row >= nrows) continue;
        int qi = row / group, h = g * group + row % group;
        int grow = row0 + qi;
        if (nsplit == 1) {
            float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
#pragma unroll
            for (int i = 0; i < ATT_MAXD; ++i)
                if (i < dpl)
                    out[(u64)grow * out_stride + (u64)h * hd + lane + 32 * i] = f2bf(acc[r][i] * inv);
        } else {
            u64 base = ((u64)split * total_rows + grow) * n_heads + h;
#pragma unroll
            for (int i = 0; i < ATT_MAXD; ++i)
                if (i < dpl) part_acc[base * hd + lane + 32 * i] = acc[r][i];
            if (lane == 0) {
                part_ml[base * 2] = m[r];
                part_ml[base * 2 + 1] = l[r];
            }
        }
    }
}

// Merges the per-split partials of paged_attention. blockIdx = (row, head); threads over head_dim.
// `decode_tiles` (a decode plan's tile list, tile i = row i, null otherwise): only the splits that
// hold keys of the row, [0, pos / split_len], are read; the decode2 kernels leave the others
// unwritten (their blocks exit at once).
extern "C" __global__ void attention_combine(const float* part_acc, const float* part_ml,
                                             int n_splits, int total_rows, int n_heads,
                                             int head_dim, bf16_t* out, int out_stride,
                                             const int* decode_tiles, int split_len) {
    pdl_enter();
    int row = blockIdx.x, h = blockIdx.y;
    if (decode_tiles != nullptr) n_splits = min(n_splits, decode_tiles[row * 4 + 3] / split_len + 1);
    float mx = NEG_BIG;
    for (int s = 0; s < n_splits; ++s)
        mx = fmaxf(mx, part_ml[(((u64)s * total_rows + row) * n_heads + h) * 2]);
    // Splits of weight 0 (empty ones: no keys of this row) are skipped, not added as zeros: the
    // result is then the same bits whatever number of empty splits the plan has (batch-invariant
    // mode relies on it; their partial acc may be left unwritten).
    float sum = 0.f;
    for (int s = 0; s < n_splits; ++s) {
        u64 b = ((u64)s * total_rows + row) * n_heads + h;
        const float w = expf(part_ml[b * 2] - mx);
        if (w == 0.f) continue;
        sum += part_ml[b * 2 + 1] * w;
    }
    float inv = sum > 0.f ? 1.f / sum : 0.f;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float a = 0.f;
        for (int s = 0; s < n_splits; ++s) {
            u64 b = ((u64)s * total_rows + row) * n_heads + h;
            const float w = expf(part_ml[b * 2] - mx);
            if (w == 0.f) continue;
            a += part_acc[b * head_dim + d] * w;
        }
        out[(u64)row * out_stride + (u64)h * head_dim + d] = f2bf(a * inv);
    }
}

// Tensor-core prefill / prefix-extend attention (mma.sync m16n8k16 bf16 -> f32, sm_80+).
// Work unit as paged_attention but 64 (token, head) rows per tile: tile_info packs 64 / group
// tokens; blockIdx = (tile, kv head, split); 4 warps, warp w owns rows 16w..16w+15, row r being
// token r / group and query head g * group + r % group (GQA: one K/V tile serves all of them).
// Per 64-key tile: K is staged row-major [key][HD + 8] and V transposed [dim][64 + 8] in shared
// memory (bf16), S = Q K^T and O += P V run on the tensor cores, the online softmax in f32 on the
// accumulator fragments (exp2 with the scale folded in). Masked scores (causal, past the split)
// contribute exactly 0. Output and split partials as paged_attention (attention_combine merges).
#define MMA_KT 64
#define MMA_ROWS 64

__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    return (u32)f2bf(lo) | ((u32)f2bf(hi) << 16);
}

template <int HD>
__device__ __forceinline__ void paged_attention_mma_body(
    const bf16_t* q, int q_stride, const bf16_t* k_pool, const bf16_t* v_pool,
    const int* block_tables, int max_pages, int page_size, const int* tile_info, int n_heads,
    int n_kv_heads, float scale, int split_len, bf16_t* out, int out_stride, float* part_acc,
    float* part_ml, int total_rows) {
    constexpr int KS = HD + 8;       // K row stride (bf16)
    constexpr int VS = MMA_KT + 8;   // V^T row stride (bf16)
    __shared__ __align__(16) bf16_t ks[MMA_KT * KS];
    __shared__ __align__(16) bf16_t vt[HD * VS];
    const int group = n_heads / n_kv_heads;
    const int tile = blockIdx.x, g = blockIdx.y, split = blockIdx.z, nsplit = gridDim.z;
    const int seq = tile_info[tile * 4 + 0], row0 = tile_info[tile * 4 + 1];
    const int qcount = tile_info[tile * 4 + 2], pos0 = tile_info[tile * 4 + 3];
    const int nrows = qcount * group;
    const int kbeg = split * split_len;
    const int kend = min(pos0 + qcount, kbeg + split_len);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gid = lane >> 2, tig = lane & 3;
    const float sl2 = scale * 1.4426950408889634f;

    // This thread's two rows (gid, gid + 8 of the warp's 16) and their causal limits.
    int rr[2], lim[2], qi[2], hh[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        rr[i] = warp * 16 + gid + 8 * i;
        qi[i] = rr[i] / group;
        hh[i] = g * group + rr[i] % group;
        lim[i] = rr[i] < nrows ? pos0 + qi[i] + 1 : 0;
    }
    // Q fragments for every 16-wide k step.
    u32 qf[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            u32 lo = 0, hi = 0;
            if (rr[i] < nrows) {
                const bf16_t* qr = q + (u64)(row0 + qi[i]) * q_stride + (u64)hh[i] * HD + kk * 16 + tig * 2;
                lo = *(const u32*)qr;
                hi = *(const u32*)(qr + 8);
            }
            qf[kk][i] = lo;      // a0 (row gid) / a1 (row gid + 8)
            qf[kk][2 + i] = hi;  // a2 / a3
        }
    }
    float o[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[n][e] = 0.f;
    float m[2] = {NEG_BIG, NEG_BIG}, l[2] = {0.f, 0.f};
    const int* bt = block_tables + (u64)seq * max_pages;

    for (int t0 = kbeg; t0 < kend; t0 += MMA_KT) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < MMA_KT * (HD / 8); idx += blockDim.x) {
            const int j = idx / (HD / 8), d = (idx % (HD / 8)) * 8;
            const int key = t0 + j;
            uint4 kv4 = make_uint4(0, 0, 0, 0), vv4 = make_uint4(0, 0, 0, 0);
            if (key < kend) {
                const u64 slot = (u64)bt[key / page_size] * page_size + key % page_size;
                const u64 off = (slot * n_kv_heads + g) * HD + d;
                kv4 = *(const uint4*)(k_pool + off);
                vv4 = *(const uint4*)(v_pool + off);
            }
            *(uint4*)(ks + j * KS + d) = kv4;
            const u32 vw[4] = {vv4.x, vv4.y, vv4.z, vv4.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                vt[(d + 2 * e) * VS + j] = (bf16_t)(vw[e] & 0xffff);
                vt[(d + 2 * e + 1) * VS + j] = (bf16_t)(vw[e] >> 16);
            }
        }
        __syncthreads();
        // S = Q K^T: 16 rows x 64 keys per warp (8 n-tiles of 8 keys).
        float s[MMA_KT / 8][4];
#pragma unroll
        for (int n = 0; n < MMA_KT / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
            const bf16_t* kr = ks + (n * 8 + gid) * KS + tig * 2;
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
                const u32 b0 = *(const u32*)(kr + kk * 16);
                const u32 b1 = *(const u32*)(kr + kk * 16 + 8);
                mma_bf16_16816(s[n], qf[kk], b0, b1);
            }
        }
        // Online softmax per row (the 4 threads of a quad share a row).
        float mt[2] = {NEG_BIG, NEG_BIG};
#pragma unroll
        for (int n = 0; n < MMA_KT / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = e >> 1, key = t0 + n * 8 + tig * 2 + (e & 1);
                const bool ok = key < kend && key < lim[i];
                s[n][e] = ok ? s[n][e] * sl2 : NEG_INF;
                mt[i] = fmaxf(mt[i], s[n][e]);
            }
        float corr[2], rs[2] = {0.f, 0.f};
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            mt[i] = fmaxf(mt[i], __shfl_xor_sync(FULL_MASK, mt[i], 1));
            mt[i] = fmaxf(mt[i], __shfl_xor_sync(FULL_MASK, mt[i], 2));
            const float mnew = fmaxf(m[i], mt[i]);
            corr[i] = exp2f(m[i] - mnew);
            m[i] = mnew;
        }
#pragma unroll
        for (int n = 0; n < MMA_KT / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = e >> 1;
                const float p = s[n][e] == NEG_INF ? 0.f : exp2f(s[n][e] - m[i]);
                s[n][e] = p;
                rs[i] += p;
            }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            rs[i] += __shfl_xor_sync(FULL_MASK, rs[i], 1);
            rs[i] += __shfl_xor_sync(FULL_MASK, rs[i], 2);
            l[i] = l[i] * corr[i] + rs[i];
        }
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
            o[n][0] *= corr[0];
            o[n][1] *= corr[0];
            o[n][2] *= corr[1];
            o[n][3] *= corr[1];
        }
        // O += P V: P from the S fragments (16 keys per k step), V^T rows as B columns.
#pragma unroll
        for (int kk = 0; kk < MMA_KT / 16; ++kk) {
            u32 a[4];
            a[0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
            a[1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
            a[2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            a[3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int n = 0; n < HD / 8; ++n) {
                const bf16_t* vr = vt + (n * 8 + gid) * VS + kk * 16 + tig * 2;
                mma_bf16_16816(o[n], a, *(const u32*)vr, *(const u32*)(vr + 8));
            }
        }
    }

#pragma unroll
    for (int i = 0; i < 2; ++i) {
        if (rr[i] >= nrows) continue;
        const int grow = row0 + qi[i], h = hh[i];
        if (nsplit == 1) {
            const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
#pragma unroll
            for (int n = 0; n < HD / 8; ++n)
                *(u32*)(out + (u64)grow * out_stride + (u64)h * HD + n * 8 + tig * 2) =
                    pack_bf16x2(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
        } else {
            const u64 base = ((u64)split * total_rows + grow) * n_heads + h;
#pragma unroll
            for (int n = 0; n < HD / 8; ++n) {
                part_acc[base * HD + n * 8 + tig * 2] = o[n][2 * i];
                part_acc[base * HD + n * 8 + tig * 2 + 1] = o[n][2 * i + 1];
            }
            // Partials use natural-log units like paged_attention's.
            if (tig == 0) {
                part_ml[base * 2] = m[i] == NEG_BIG ? NEG_BIG : m[i] * 0.6931471805599453f;
                part_ml[base * 2 + 1] = l[i];
            }
        }
    }
}

#define MMA_KERNEL(HD)                                                                            \
    extern "C" __global__ void __launch_bounds__(128) paged_attention_mma_d##HD(                  \
        const bf16_t* q, int q_stride, const bf16_t* k_pool, const bf16_t* v_pool,                \
        const int* block_tables, int max_pages, int page_size, const int* tile_info, int n_heads, \
        int n_kv_heads, int head_dim, float scale, int split_len, bf16_t* out, int out_stride,    \
        float* part_acc, float* part_ml, int total_rows) {                                        \
        pdl_enter();                                                                              \
        paged_attention_mma_body<HD>(q, q_stride, k_pool, v_pool, block_tables, max_pages,        \
                                     page_size, tile_info, n_heads, n_kv_heads, scale, split_len, \
                                     out, out_stride, part_acc, part_ml, total_rows);             \
    }
MMA_KERNEL(64)
MMA_KERNEL(128)
