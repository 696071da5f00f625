// Decode attention, bandwidth-shaped: one query token per sequence, for one KV head's G query
// heads, with G (GQA group) and HD (head_dim, 64 or 128) fixed at compile time so that the
// query, the running softmax state and the accumulator live in registers.
//
// Same arguments and outputs as paged_attention_decode (tile_info with query count 1, the same
// split partials for attention_combine). Layout of the work: a key row of one head is HD bf16 =
// HD/8 16-byte pieces; LPK = HD/8 lanes share a key (lane piece li = dims 8li..8li+7), so one
// warp-wide 16-byte load instruction reads KPS = 32/LPK whole, contiguous K rows (fully used
// sectors), and the V rows are read the same way. Each warp takes UNR steps of KPS keys per
// iteration and issues all their K and V loads before any math (memory-level parallelism);
// scores are reduced over the LPK lanes of a key with xor shuffles, then every lane of the key
// updates its own online-softmax state and its 8 accumulator dims. At the end the KPS key
// streams of a warp merge by shuffle and the 4 warps through shared memory.

#define DEC2_WARPS 4
#define DEC2_UNR 4

__device__ __forceinline__ void dec2_unpack8(uint4 v, float* f) {
    f[0] = __uint_as_float(v.x << 16); f[1] = __uint_as_float(v.x & 0xffff0000u);
    f[2] = __uint_as_float(v.y << 16); f[3] = __uint_as_float(v.y & 0xffff0000u);
    f[4] = __uint_as_float(v.z << 16); f[5] = __uint_as_float(v.z & 0xffff0000u);
    f[6] = __uint_as_float(v.w << 16); f[7] = __uint_as_float(v.w & 0xffff0000u);
}

// Merges state (mo, lo, ao) into (m, l, a).
template <int G>
__device__ __forceinline__ void dec2_merge(float* m, float* l, float (*a)[8], const float* mo,
                                           const float* lo, const float (*ao)[8]) {
#pragma unroll
    for (int r = 0; r < G; ++r) {
        float mx = fmaxf(m[r], mo[r]);
        float f0 = expf(m[r] - mx), f1 = expf(mo[r] - mx);
        l[r] = l[r] * f0 + lo[r] * f1;
#pragma unroll
        for (int i = 0; i < 8; ++i) a[r][i] = a[r][i] * f0 + ao[r][i] * f1;
        m[r] = mx;
    }
}

template <int G, int HD>
__device__ __forceinline__ void dec2_body(
    const bf16_t* q, int q_stride, const bf16_t* k_pool, const bf16_t* v_pool,
    const int* block_tables, int max_pages, int page_size, const int* tile_info, int n_heads,
    int n_kv_heads, float scale, int split_len, bf16_t* out, int out_stride, float* part_acc,
    float* part_ml, int total_rows) {
    constexpr int LPK = HD / 8;
    constexpr int KPS = 32 / LPK;
    constexpr int STEP = KPS * DEC2_UNR;
    __shared__ float red_m[DEC2_WARPS][G], red_l[DEC2_WARPS][G];
    __shared__ __align__(16) float red_acc[DEC2_WARPS][G][HD];

    const int tile = blockIdx.x, g = blockIdx.y, split = blockIdx.z, nsplit = gridDim.z;
    const int seq = tile_info[tile * 4 + 0], row = tile_info[tile * 4 + 1];
    const int pos0 = tile_info[tile * 4 + 3];
    const int kbeg = split * split_len;
    const int kend = min(pos0 + 1, kbeg + split_len);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub = lane / LPK, li = lane % LPK;

    float qf[G][8];
#pragma unroll
    for (int r = 0; r < G; ++r) {
        const uint4 raw =
            *(const uint4*)(q + (u64)row * q_stride + (u64)(g * G + r) * HD + li * 8);
        dec2_unpack8(raw, qf[r]);
#pragma unroll
        for (int i = 0; i < 8; ++i) qf[r][i] *= scale;
    }
    float m[G], l[G], acc[G][8];
#pragma unroll
    for (int r = 0; r < G; ++r) {
        m[r] = NEG_BIG;
        l[r] = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[r][i] = 0.f;
    }
    const int* bt = block_tables + (u64)seq * max_pages;
    const u64 head_off = (u64)g * HD + li * 8;

    for (int t0 = kbeg + warp * STEP; t0 < kend; t0 += DEC2_WARPS * STEP) {
        uint4 kr[DEC2_UNR], vr[DEC2_UNR];
        bool ok[DEC2_UNR];
#pragma unroll
        for (int u = 0; u < DEC2_UNR; ++u) {
            const int key = t0 + u * KPS + sub;
            ok[u] = key < kend;
            kr[u] = make_uint4(0, 0, 0, 0);
            vr[u] = make_uint4(0, 0, 0, 0);
            if (ok[u]) {
                const u64 slot = (u64)bt[key / page_size] * page_size + key % page_size;
                const u64 off = slot * n_kv_heads * HD + head_off;
                kr[u] = *(const uint4*)(k_pool + off);
                vr[u] = *(const uint4*)(v_pool + off);
            }
        }
#pragma unroll
        for (int u = 0; u < DEC2_UNR; ++u) {
            float kf[8], vf[8], s[G];
            dec2_unpack8(kr[u], kf);
            dec2_unpack8(vr[u], vf);
#pragma unroll
            for (int r = 0; r < G; ++r) {
                float d = 0.f;
#pragma unroll
                for (int i = 0; i < 8; ++i) d += qf[r][i] * kf[i];
                s[r] = d;
            }
#pragma unroll
            for (int o = LPK / 2; o > 0; o >>= 1) {
#pragma unroll
                for (int r = 0; r < G; ++r) s[r] += __shfl_xor_sync(FULL_MASK, s[r], o);
            }
            if (ok[u]) {
#pragma unroll
                for (int r = 0; r < G; ++r) {
                    const float mx = fmaxf(m[r], s[r]);
                    const float corr = expf(m[r] - mx), p = expf(s[r] - mx);
                    l[r] = l[r] * corr + p;
#pragma unroll
                    for (int i = 0; i < 8; ++i) acc[r][i] = acc[r][i] * corr + p * vf[i];
                    m[r] = mx;
                }
            }
        }
    }

    // Merge the KPS key streams of the warp (lanes li, li + LPK, ...).
#pragma unroll
    for (int o = LPK; o < 32; o <<= 1) {
        float mo[G], lo[G], ao[G][8];
#pragma unroll
        for (int r = 0; r < G; ++r) {
            mo[r] = __shfl_xor_sync(FULL_MASK, m[r], o);
            lo[r] = __shfl_xor_sync(FULL_MASK, l[r], o);
#pragma unroll
            for (int i = 0; i < 8; ++i) ao[r][i] = __shfl_xor_sync(FULL_MASK, acc[r][i], o);
        }
        dec2_merge<G>(m, l, acc, mo, lo, ao);
    }
    if (sub == 0) {
#pragma unroll
        for (int r = 0; r < G; ++r) {
            if (li == 0) {
                red_m[warp][r] = m[r];
                red_l[warp][r] = l[r];
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) red_acc[warp][r][li * 8 + i] = acc[r][i];
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
        const int r = idx / HD, d = idx % HD;
        float mx = NEG_BIG;
#pragma unroll
        for (int w = 0; w < DEC2_WARPS; ++w) mx = fmaxf(mx, red_m[w][r]);
        float sum = 0.f, a = 0.f;
#pragma unroll
        for (int w = 0; w < DEC2_WARPS; ++w) {
            const float f = expf(red_m[w][r] - mx);
            sum += red_l[w][r] * f;
            a += red_acc[w][r][d] * f;
        }
        const int h = g * G + r;
        if (nsplit == 1) {
            out[(u64)row * out_stride + (u64)h * HD + d] = f2bf(sum > 0.f ? a / sum : 0.f);
        } else {
            const u64 b = ((u64)split * total_rows + row) * n_heads + h;
            part_acc[b * HD + d] = a;
            if (d == 0) {
                part_ml[b * 2] = mx;
                part_ml[b * 2 + 1] = sum;
            }
        }
    }
}

#define DEC2_KERNEL(G, HD)                                                                       \
    extern "C" __global__ void __launch_bounds__(128) paged_attention_decode2_g##G##_d##HD(     \
        const bf16_t* q, int q_stride, const bf16_t* k_pool, const bf16_t* v_pool,              \
        const int* block_tables, int max_pages, int page_size, const int* tile_info,            \
        int n_heads, int n_kv_heads, int head_dim, float scale, int split_len, bf16_t* out,     \
        int out_stride, float* part_acc, float* part_ml, int total_rows) {                      \
        dec2_body<G, HD>(q, q_stride, k_pool, v_pool, block_tables, max_pages, page_size,        \
                         tile_info, n_heads, n_kv_heads, scale, split_len, out, out_stride,      \
                         part_acc, part_ml, total_rows);                                         \
    }

DEC2_KERNEL(1, 64)
DEC2_KERNEL(2, 64)
DEC2_KERNEL(4, 64)
DEC2_KERNEL(8, 64)
DEC2_KERNEL(1, 128)
DEC2_KERNEL(2, 128)
DEC2_KERNEL(4, 128)
DEC2_KERNEL(8, 128)
