// Tensor-core decode attention for GQA (default-mode decode batches of DECODE_MMA_MIN_ROWS rows
// or more): `paged_attention_dmma_d{64,128}`. Arguments, grid (KV head, tile, split), tile_info
// (one decode row per tile: query count 1) and outputs are the FA2 prefill kernel's, and the tile
// decoding, page lookups and K/V copies are prefill_common.cuh's; a split's keys are an equal
// share of its row's (below), not split_len's.
//
// Why its own kernel: planned as prompt rows, a decode row fills 4 of the prefill kernels' 128
// MMA rows (group 4), so their tensor cores compute 32x the useful products, about as long as
// the K/V bytes take to stream at 4K context. Here the group's query heads are the 16 rows of one
// m16n8k16 A tile (rows past the group are zero; group <= 16), held in registers for the whole
// block, and the 4 warps split every K/V tile instead of its rows: warp w scores keys
// KW w .. KW w + KW - 1 of each tile of KT keys (S = Q K^T through ldmatrix, online softmax in
// base 2 per row, O += P V with P from the S fragments and V through ldmatrix.trans, exactly
// the FA2 kernel's fragment steps), so every warp streams its own keys and the MMAs are 4x
// padding at group 4, not 32x. K/V tiles go to NST shared-memory stages by cp.async from every
// thread, NST - 1 in flight. At the end the 4 warps' (max, sum, O) merge through shared memory
// (the K/V stages, drained) and the block writes its rows as the FA2 kernel does: bf16 output
// with one split, else the unnormalised accumulator and (max in natural-log units, sum) for
// attention_combine.
#define DM_WARPS 4
#define DM_THREADS 128

template <int HD, int KT, int NST>
__device__ __forceinline__ void dm_decode_body(const bf16_t* q, int q_stride, const bf16_t* k_pool,
                                               const bf16_t* v_pool, const int* block_tables,
                                               int max_pages, int page_size, const int* tile_info,
                                               int n_heads, int n_kv_heads, float scale, int split_len,
                                               bf16_t* out, int out_stride, float* part_acc,
                                               float* part_ml, int total_rows) {
    constexpr int ST = HD + 8;               // shared row stride (bf16): conflict-free ldmatrix
    constexpr int CPR = HD / 8;              // 16-byte pieces per row
    constexpr int KW = KT / DM_WARPS;        // keys of a tile per warp
    constexpr int NT = KW / 8;               // 8-key n-tiles of S per warp
    constexpr int DT = HD / 8;               // 8-dim n-tiles of O
    static_assert(KW % 16 == 0, "tile shape");
    extern __shared__ __align__(16) unsigned char dm_smem[];
    bf16_t* ks = (bf16_t*)dm_smem;      // [NST][KT][ST]
    bf16_t* vs = ks + NST * KT * ST;    // [NST][KT][ST]

    PfTile T = pf_tile(tile_info, block_tables, max_pages, n_heads, n_kv_heads, split_len);
    // Each split takes an equal share of the row's own keys (whole tiles), not split_len's: a
    // fixed graph plan's split_len is sized for the longest context it may serve, which would
    // leave most splits of a shorter row empty. Splits past the row's end are empty (partials of
    // weight 0; attention_combine reads every split of these plans).
    {
        const int n = T.pos0 + 1;  // a decode row attends keys [0, pos]
        const int share = ((n + T.nsplit - 1) / T.nsplit + KT - 1) / KT * KT;
        T.kbeg = min(T.split * share, n);
        T.kend = min(n, T.kbeg + share);
    }
    const int nrows = T.nrows, kbeg = T.kbeg, kend = T.kend;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int gid = lane >> 2, tig = lane & 3;
    const float sl2 = scale * 1.4426950408889634f;

    // K/V copies as the FA2 kernel's (FaKvCopy, attention_prefill.cu).
    FaKvCopy<HD, KT, NST, DM_THREADS> kv(T, ks, n_kv_heads);
    auto lookup = [&](int t0) { kv.lookup(T, t0, page_size); };
    auto issue = [&](int st) { kv.issue(st, k_pool, v_pool); };

    // Programmatic dependent launch: the previous kernel writes q and the row's own K/V (key
    // pos); every other key, the tile list and the page tables were written before it started,
    // so the first tiles that end before pos are copied before waiting for it.
    const int ntiles = kend > kbeg ? (kend - kbeg + KT - 1) / KT : 0;
    const int pre = min(NST - 1, max(0, (T.pos0 - kbeg) / KT));
    auto prologue = [&](bool before) {
#pragma unroll
        for (int p = 0; p < NST - 1; ++p) {
            if ((p < pre) == before) {
                if (p < ntiles) issue(p);
                pf_commit();
                lookup(kbeg + (p + 1) * KT);
            }
        }
    };
    lookup(kbeg);
    prologue(true);
    pdl_enter();
    prologue(false);

    // Q as A fragments of every 16-dim k step: rows gid and gid + 8 (zero past the group), dims
    // 16 kk + 2 tig (+1) and + 8; straight from global memory (read once).
    u32 qa[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            // pf_q_src: the row's 16-byte piece of dims 16 kk (+ 8); this lane's pair is 2 tig in.
            const int r = gid + 8 * (e & 1);
            qa[kk][e] = r < nrows
                            ? *(const u32*)(pf_q_src<HD>(T, q, q_stride, r, 2 * kk + (e >> 1)) + 2 * tig)
                            : 0u;
        }

    float o[DT][4];
#pragma unroll
    for (int n = 0; n < DT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[n][e] = 0.f;
    float m[2] = {NEG_BIG, NEG_BIG}, l[2] = {0.f, 0.f};

    for (int it = 0; it < ntiles; ++it) {
        pf_cp_wait<NST - 2>();
        __syncthreads();
        // The stage refilled here was read in iteration it - 1, which every warp has finished.
        const int nxt = it + NST - 1;
        if (nxt < ntiles) issue(nxt % NST);
        pf_commit();
        lookup(kbeg + (nxt + 1) * KT);
        const int t0 = kbeg + it * KT + warp * KW;  // this warp's first key
        if (t0 >= kend) continue;                   // (uniform over the warp)
        const bf16_t* kt = ks + (it % NST) * KT * ST + warp * KW * ST;
        const bf16_t* vt = vs + (it % NST) * KT * ST + warp * KW * ST;

        // S = Q K^T: 16 rows x KW keys.
        float s[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                u32 b[4];
                fa_ldsm4(b, kt + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * ST + kk * 16 +
                                ((lane >> 3) & 1) * 8);
                mma_bf16_16816(s[2 * np], qa[kk], b[0], b[1]);
                mma_bf16_16816(s[2 * np + 1], qa[kk], b[2], b[3]);
            }
        }
        // Keys past the split's end (zero-filled copies): -inf.
        if (t0 + KW > kend) {
            const int lim = kend - t0 - 2 * tig;
#pragma unroll
            for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    if (n * 8 >= lim) s[n][2 * h] = NEG_INF;
                    if (n * 8 + 1 >= lim) s[n][2 * h + 1] = NEG_INF;
                }
        }
        // Online softmax (base 2) per row; the 4 threads of a quad share a row.
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            mx[0] = fmaxf(mx[0], fmaxf(s[n][0], s[n][1]));
            mx[1] = fmaxf(mx[1], fmaxf(s[n][2], s[n][3]));
        }
        if (pf_new_max<2>(mx, m, sl2)) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const float corr = pf_ex2(m[h] - mx[h]);
                m[h] = mx[h];
                l[h] *= corr;
#pragma unroll
                for (int n = 0; n < DT; ++n) {
                    o[n][2 * h] *= corr;
                    o[n][2 * h + 1] *= corr;
                }
            }
        }
        u32 pk[NT][2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float nm = -m[h];
            float rs = 0.f;
#pragma unroll
            for (int n = 0; n < NT; ++n) {
                const float p0 = pf_ex2(fmaf(s[n][2 * h], sl2, nm));
                const float p1 = pf_ex2(fmaf(s[n][2 * h + 1], sl2, nm));
                rs += p0 + p1;
                pk[n][h] = pack_bf2(p0, p1);
            }
            l[h] += rs;
        }
        // O += P V.
#pragma unroll
        for (int kk = 0; kk < KW / 16; ++kk) {
            const u32 a[4] = {pk[2 * kk][0], pk[2 * kk][1], pk[2 * kk + 1][0], pk[2 * kk + 1][1]};
#pragma unroll
            for (int dp = 0; dp < DT / 2; ++dp) {
                u32 b[4];
                fa_ldsm4_t(b, vt + (kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3)) * ST + dp * 16 +
                                  (lane >> 4) * 8);
                mma_bf16_16816(o[2 * dp], a, b[0], b[1]);
                mma_bf16_16816(o[2 * dp + 1], a, b[2], b[3]);
            }
        }
    }
    pf_cp_wait<0>();
    __syncthreads();  // every warp done with the stages: they hold the merge now

    // The warps' states of the block's rows (r < nrows <= 16) into shared memory.
    float* red_m = (float*)dm_smem;         // [DM_WARPS][16]
    float* red_l = red_m + DM_WARPS * 16;   // [DM_WARPS][16]
    float* red_o = red_l + DM_WARPS * 16;   // [DM_WARPS][16][HD]
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        l[h] += __shfl_xor_sync(FULL_MASK, l[h], 1);
        l[h] += __shfl_xor_sync(FULL_MASK, l[h], 2);
        const int r = gid + 8 * h;
        if (r < nrows) {
            if (tig == 0) {
                red_m[warp * 16 + r] = m[h];
                red_l[warp * 16 + r] = l[h];
            }
            float* ro = red_o + (warp * 16 + r) * HD + 2 * tig;
#pragma unroll
            for (int n = 0; n < DT; ++n) {
                ro[n * 8] = o[n][2 * h];
                ro[n * 8 + 1] = o[n][2 * h + 1];
            }
        }
    }
    __syncthreads();
    for (int idx = tid; idx < nrows * HD; idx += DM_THREADS) {
        const int r = idx / HD, d = idx - r * HD;
        float mxr = NEG_BIG;
#pragma unroll
        for (int w = 0; w < DM_WARPS; ++w) mxr = fmaxf(mxr, red_m[w * 16 + r]);
        float sum = 0.f, a = 0.f;
#pragma unroll
        for (int w = 0; w < DM_WARPS; ++w) {
            const float f = pf_ex2(red_m[w * 16 + r] - mxr);
            sum += red_l[w * 16 + r] * f;
            a += red_o[(w * 16 + r) * HD + d] * f;
        }
        const int grow = T.row0 + (r >> T.gsh), head = T.g * T.group + (r & (T.group - 1));
        if (T.nsplit == 1) {
            out[(u64)grow * out_stride + (u64)head * HD + d] = f2bf(sum > 0.f ? a / sum : 0.f);
        } else {
            const u64 base = ((u64)T.split * total_rows + grow) * n_heads + head;
            part_acc[base * HD + d] = a;
            if (d == 0) {
                part_ml[base * 2] = mxr == NEG_BIG ? NEG_BIG : mxr * 0.6931471805599453f;
                part_ml[base * 2 + 1] = sum;
            }
        }
    }
}

#define DM_KERNEL(HD, KT, NST, MINB)                                                               \
    extern "C" __global__ void __launch_bounds__(DM_THREADS, MINB) paged_attention_dmma_d##HD(    \
        const bf16_t* q, int q_stride, const bf16_t* k_pool, const bf16_t* v_pool,                \
        const int* block_tables, int max_pages, int page_size, const int* tile_info, int n_heads, \
        int n_kv_heads, int head_dim, float scale, int split_len, bf16_t* out, int out_stride,    \
        float* part_acc, float* part_ml, int total_rows) {                                        \
        dm_decode_body<HD, KT, NST>(q, q_stride, k_pool, v_pool, block_tables, max_pages,         \
                                    page_size, tile_info, n_heads, n_kv_heads, scale, split_len,  \
                                    out, out_stride, part_acc, part_ml, total_rows);              \
    }
// DM_KERNEL(HD, KT, NST, MINB). Shared memory: 2 * NST * KT * (HD + 8) * 2 bytes, mirrored by
// dmma_smem in kernels/src/cuda/attention/names.rs (the merge's 128 + 64 HD floats fit in it):
// 55296 (d64) and 104448 (d128), 64-key tiles (16 keys per warp), 3 stages.
DM_KERNEL(64, 64, 3, 2)
DM_KERNEL(128, 64, 3, 2)
