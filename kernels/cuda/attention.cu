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
extern "C" __global__ void attention_combine(const float* part_acc, const float* part_ml,
                                             int n_splits, int total_rows, int n_heads,
                                             int head_dim, bf16_t* out, int out_stride) {
    pdl_enter();
    int row = blockIdx.x, h = blockIdx.y;
    float mx = NEG_BIG;
    for (int s = 0; s < n_splits; ++s)
        mx = fmaxf(mx, part_ml[(((u64)s * total_rows + row) * n_heads + h) * 2]);
    float sum = 0.f;
    for (int s = 0; s < n_splits; ++s) {
        u64 b = ((u64)s * total_rows + row) * n_heads + h;
        sum += part_ml[b * 2 + 1] * expf(part_ml[b * 2] - mx);
    }
    float inv = sum > 0.f ? 1.f / sum : 0.f;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float a = 0.f;
        for (int s = 0; s < n_splits; ++s) {
            u64 b = ((u64)s * total_rows + row) * n_heads + h;
            a += part_acc[b * head_dim + d] * expf(part_ml[b * 2] - mx);
        }
        out[(u64)row * out_stride + (u64)h * head_dim + d] = f2bf(a * inv);
    }
}
