// FA2-style tensor-core prefill / prefix-extend attention over the paged KV pool (sm_80+):
// `paged_attention_fa2_d{64,128}`, the planner's kernel for prompts wherever the wgmma one
// (attention_prefill_wg.cu) does not run (attention.cu's paged_attention_mma_d* stays selectable
// with STRATA_PREFILL_ATTN=mma).
//
// Work unit: a tile = FA_ROWS (token, head) rows of one sequence for one KV head g: 128 / group
// consecutive query tokens times the group's query heads (row r = token r / group, query head
// g * group + r % group; group is a power of two, it divides 16), so one K/V tile in shared
// memory serves 128 rows. Grid = (kv head, tile, split) with tiles taken last-first, so the
// longest (latest, causal) tiles of a prompt start first and the short ones fill the tail; the
// tile decoding, page lookups and row store are prefill_common.cuh's (shared with the wgmma
// kernel).
// 4 warps; warp w owns rows 32w..32w+31 as two m16 tiles. Q [128][HD] is copied to shared memory
// once; K and V tiles of KT keys are copied row-major into NST shared-memory stages with cp.async
// (zero-filled past the block's last key), NST - 1 tiles in flight while the warps compute; the
// warps compute a tile in steps of KS keys (the f32 scores of KS keys are live in registers:
// at head_dim 128, 64 keys do not fit beside the 128 accumulators, so 64-key tiles halve the
// barriers and copy-issue work per key while the math runs on 32 keys at a time). A tile's
// page-table lookups are made an iteration before its copies are issued, once per key by one
// lane of the warp that copies that key, and handed to the copying lanes by shuffle (no division
// per 16-byte piece).
// S = Q K^T and O += P V run on mma.sync m16n8k16 bf16 -> f32 with ldmatrix fragments (V through
// ldmatrix.trans, no transposed copy; P stays in registers as the A operand); rows are padded to
// HD + 8 elements so the 8 row addresses of an ldmatrix phase hit 8 different 16-byte bank
// groups. Online softmax in base 2 on the accumulator fragments: the row max over raw scores,
// p = ex2(s * scale * log2(e) - m) as one FFMA and one MUFU.EX2 (approx, ftz), P packed to bf16
// as computed, row sums kept per thread and summed over the quad at the end; O and the row sums
// are rescaled only when some row max of the warp grew (warp vote), which after the first tiles
// is rare. A warp skips the math of tiles past every one of its rows' causal limits and masks
// (per element) only tiles that cross a limit or the block's key end. Masked scores contribute
// exactly 0. Output and split partials as paged_attention (attention_combine merges them).
#define FA_WARPS 4
#define FA_THREADS 128
#define FA_ROWS 128

__device__ __forceinline__ u32 fa_smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void fa_ldsm4(u32* r, const bf16_t* p) {
    const u32 a = fa_smem_addr(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void fa_ldsm4_t(u32* r, const bf16_t* p) {
    const u32 a = fa_smem_addr(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// The K/V tile copies of the mma.sync kernels (this one and attention_decode_mma.cu): KT keys
// of one KV head into stage st of ks / vs ([NST][KT][HD + 8] bf16 each, vs right after ks) by
// THREADS threads. Thread tid moves piece `tid % CPR` of keys jc + KPP * i of a tile (i <
// PASSES). Lane L < KPW * PASSES of warp w looks up the pool slot of key
// w * KPW + L % KPW + KPP * (L / KPW) (one division and one L1-cached page-table load per key and
// tile, made right after the previous tile's copies were issued) and hands it to the copying
// lanes by shuffle as 2 * slot + live (dead keys past kend: 0, zero-filled).
template <int HD, int KT, int NST, int THREADS>
struct FaKvCopy {
    static constexpr int ST = HD + 8, CPR = HD / 8, KPW = 32 / CPR, KPP = THREADS / CPR, PASSES = KT / KPP;
    static_assert(KPW * PASSES <= 32, "one lane looks up each key its warp copies");
    static_assert(KT % KPP == 0, "whole copy passes per tile");
    const bf16_t* ks;
    int tid, lane, jc, my_key;
    u64 row_bytes;
    u32 tcol;  // byte column of this thread's piece
    u32 code;
    __device__ __forceinline__ FaKvCopy(const PfTile& t, const bf16_t* ks_, int n_kv_heads) {
        ks = ks_;
        tid = threadIdx.x;
        lane = tid & 31;
        jc = tid / CPR;
        row_bytes = (u64)n_kv_heads * HD * 2;
        tcol = (t.g * HD + (tid % CPR) * 8) * 2;
        my_key = (tid >> 5) * KPW + lane % KPW + KPP * (lane / KPW);
        code = 0;
    }
    __device__ __forceinline__ void lookup(const PfTile& t, int t0, int page_size) {
        code = pf_slot_code(t, t0 + my_key, page_size, lane < KPW * PASSES);
    }
    __device__ __forceinline__ void issue(int st, const bf16_t* k_pool, const bf16_t* v_pool) {
        const u32 kd = fa_smem_addr(ks + st * KT * ST + jc * ST + (tid % CPR) * 8);
        const u32 vd = kd + NST * KT * ST * 2;
#pragma unroll
        for (int i = 0; i < PASSES; ++i) {
            const u32 c = __shfl_sync(FULL_MASK, code, i * KPW + lane / CPR);
            const u64 off = (u64)(c >> 1) * row_bytes + tcol;
            const int bytes = (c & 1) * 16;
            pf_cp16(kd + i * KPP * ST * 2, (const char*)k_pool + off, bytes);
            pf_cp16(vd + i * KPP * ST * 2, (const char*)v_pool + off, bytes);
        }
    }
};

template <int HD, int KT, int KS, int NST>
__device__ __forceinline__ void fa_prefill_body(
    const bf16_t* q, int q_stride, const bf16_t* k_pool, const bf16_t* v_pool,
    const int* block_tables, int max_pages, int page_size, const int* tile_info, int n_heads,
    int n_kv_heads, float scale, int split_len, bf16_t* out, int out_stride, float* part_acc,
    float* part_ml, int total_rows) {
    constexpr int ST = HD + 8;            // shared row stride (bf16 elements)
    constexpr int CPR = HD / 8;           // 16-byte pieces per row
    constexpr int NT = KS / 8;            // 8-key n-tiles of S per compute step
    constexpr int DT = HD / 8;            // 8-dim n-tiles of O
    static_assert(KT % KS == 0 && NT % 2 == 0, "tile shape");
    extern __shared__ __align__(16) unsigned char fa_smem[];
    bf16_t* qs = (bf16_t*)fa_smem;       // [FA_ROWS][ST]
    bf16_t* ks = qs + FA_ROWS * ST;      // [NST][KT][ST]
    bf16_t* vs = ks + NST * KT * ST;     // [NST][KT][ST]

    const PfTile T = pf_tile(tile_info, block_tables, max_pages, n_heads, n_kv_heads, split_len);
    const int gsh = T.gsh, pos0 = T.pos0, nrows = T.nrows, kbeg = T.kbeg, kend = T.kend;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int gid = lane >> 2, tig = lane & 3;
    const float sl2 = scale * 1.4426950408889634f;

    // Q rows of the tile (zero past its last row): part of the first copy group.
    for (int c = tid; c < FA_ROWS * CPR; c += FA_THREADS) {
        const int r = c / CPR, piece = c % CPR;
        const bool live = r < nrows;
        pf_cp16(fa_smem_addr(qs + r * ST + piece * 8), live ? pf_q_src<HD>(T, q, q_stride, r, piece) : q,
                live ? 16 : 0);
    }
    // K/V copies (FaKvCopy).
    FaKvCopy<HD, KT, NST, FA_THREADS> kv(T, ks, n_kv_heads);
    auto lookup = [&](int t0) { kv.lookup(T, t0, page_size); };
    auto issue = [&](int st) { kv.issue(st, k_pool, v_pool); };

    // Warp rows: the thread's row i = 2 * mt + h is row 32 * warp + 16 * mt + gid + 8 * h.
    const int wr0 = warp * 32;
    // Largest and smallest causal limit over the warp's 32 rows (rows past the tile: limit 0).
    const int w_hi = wr0 < nrows ? pos0 + (min(wr0 + 31, nrows - 1) >> gsh) + 1 : 0;
    const int w_lo = wr0 + 31 < nrows ? pos0 + (wr0 >> gsh) + 1 : 0;
    const int w_full = min(kend, w_lo);

    float o[2][DT][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int n = 0; n < DT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[mt][n][e] = 0.f;
    float m[4], l[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        m[i] = NEG_BIG;
        l[i] = 0.f;
    }

    const int ntiles = kend > kbeg ? (kend - kbeg + KT - 1) / KT : 0;
    lookup(kbeg);
#pragma unroll
    for (int p = 0; p < NST - 1; ++p) {
        if (p < ntiles) issue(p);
        pf_commit();
        lookup(kbeg + (p + 1) * KT);
    }
    for (int it = 0; it < ntiles; ++it) {
        pf_cp_wait<NST - 2>();
        __syncthreads();
        // The stage refilled here was read in iteration it - 1, which every warp has finished.
        const int nxt = it + NST - 1;
        if (nxt < ntiles) issue(nxt % NST);
        pf_commit();
        lookup(kbeg + (nxt + 1) * KT);
        // The tile in compute steps of KS keys (registers: the scores of KS keys are live).
#pragma unroll
        for (int sub = 0; sub < KT / KS; ++sub) {
            const int t0 = kbeg + it * KT + sub * KS;
            if (t0 >= w_hi) break;  // past the causal limit of every row of this warp
            const bf16_t* kt = ks + (it % NST) * KT * ST + sub * KS * ST;
            const bf16_t* vt = vs + (it % NST) * KT * ST + sub * KS * ST;

            // S = Q K^T (raw scores): 32 rows x KS keys per warp.
            float s[2][NT][4];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                for (int n = 0; n < NT; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[mt][n][e] = 0.f;
            // Unrolled by 2: fully unrolled, ptxas hoists every k step's fragments (spills).
#pragma unroll 2
            for (int kk = 0; kk < HD / 16; ++kk) {
                u32 a[2][4];
#pragma unroll
                for (int mt = 0; mt < 2; ++mt)
                    fa_ldsm4(a[mt],
                             qs + (wr0 + 16 * mt + (lane & 15)) * ST + kk * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int np = 0; np < NT / 2; ++np) {
                    u32 b[4];
                    fa_ldsm4(b, kt + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * ST + kk * 16 +
                                    ((lane >> 3) & 1) * 8);
#pragma unroll
                    for (int mt = 0; mt < 2; ++mt) {
                        mma_bf16_16816(s[mt][2 * np], a[mt], b[0], b[1]);
                        mma_bf16_16816(s[mt][2 * np + 1], a[mt], b[2], b[3]);
                    }
                }
            }
            // Tiles that cross a row's causal limit or the block's key end: -inf past the limit.
            if (t0 + KS > w_full) {
#pragma unroll
                for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int r = wr0 + 16 * mt + gid + 8 * h;
                        const int lim =
                            r < nrows ? min(kend, pos0 + (r >> gsh) + 1) - t0 - tig * 2 : 0;
#pragma unroll
                        for (int n = 0; n < NT; ++n) {
                            if (n * 8 >= lim) s[mt][n][2 * h] = NEG_INF;
                            if (n * 8 + 1 >= lim) s[mt][n][2 * h + 1] = NEG_INF;
                        }
                    }
            }

            // Online softmax (base 2) per row; the 4 threads of a quad share a row.
            float mx[4] = {NEG_INF, NEG_INF, NEG_INF, NEG_INF};
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                for (int n = 0; n < NT; ++n) {
                    mx[2 * mt] = fmaxf(mx[2 * mt], fmaxf(s[mt][n][0], s[mt][n][1]));
                    mx[2 * mt + 1] = fmaxf(mx[2 * mt + 1], fmaxf(s[mt][n][2], s[mt][n][3]));
                }
            if (pf_new_max<4>(mx, m, sl2)) {
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float corr = pf_ex2(m[i] - mx[i]);
                    m[i] = mx[i];
                    l[i] *= corr;
#pragma unroll
                    for (int n = 0; n < DT; ++n) {
                        o[i >> 1][n][2 * (i & 1)] *= corr;
                        o[i >> 1][n][2 * (i & 1) + 1] *= corr;
                    }
                }
            }
            // P = exp2(S * scale * log2(e) - m), packed to bf16 pairs at once.
            u32 pk[2][NT][2];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int i = 2 * mt + h;
                    const float nm = -m[i];
                    float rs = 0.f;
#pragma unroll
                    for (int n = 0; n < NT; ++n) {
                        const float p0 = pf_ex2(fmaf(s[mt][n][2 * h], sl2, nm));
                        const float p1 = pf_ex2(fmaf(s[mt][n][2 * h + 1], sl2, nm));
                        rs += p0 + p1;
                        pk[mt][n][h] = pack_bf2(p0, p1);
                    }
                    l[i] += rs;
                }

            // O += P V: P from the S fragments (16 keys per k step), V fragments by ldmatrix.trans.
#pragma unroll
            for (int kk = 0; kk < KS / 16; ++kk) {
                u32 a[2][4];
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    a[mt][0] = pk[mt][2 * kk][0];      // row gid, keys 2 tig (+1)
                    a[mt][1] = pk[mt][2 * kk][1];      // row gid + 8
                    a[mt][2] = pk[mt][2 * kk + 1][0];  // row gid, keys 8 + 2 tig (+1)
                    a[mt][3] = pk[mt][2 * kk + 1][1];  // row gid + 8, keys 8 + 2 tig (+1)
                }
#pragma unroll
                for (int dp = 0; dp < DT / 2; ++dp) {
                    u32 b[4];
                    fa_ldsm4_t(b, vt + (kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3)) * ST +
                                      dp * 16 + (lane >> 4) * 8);
#pragma unroll
                    for (int mt = 0; mt < 2; ++mt) {
                        mma_bf16_16816(o[mt][2 * dp], a[mt], b[0], b[1]);
                        mma_bf16_16816(o[mt][2 * dp + 1], a[mt], b[2], b[3]);
                    }
                }
            }
        }
    }
    pf_cp_wait<0>();

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        l[i] += __shfl_xor_sync(FULL_MASK, l[i], 1);
        l[i] += __shfl_xor_sync(FULL_MASK, l[i], 2);
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int i = 2 * mt + h;
            const int r = wr0 + 16 * mt + gid + 8 * h;
            if (r >= nrows) continue;
            pf_store_row<HD>(T, r, tig, m[i], l[i], [&](int n, int e) { return o[mt][n][2 * h + e]; }, out,
                             out_stride, part_acc, part_ml, n_heads, total_rows);
        }
}

#define FA_KERNEL(HD, KT, KS, NST, MINB)                                                                  \
    extern "C" __global__ void __launch_bounds__(FA_THREADS, MINB) paged_attention_fa2_d##HD(      \
        const bf16_t* q, int q_stride, const bf16_t* k_pool, const bf16_t* v_pool,                \
        const int* block_tables, int max_pages, int page_size, const int* tile_info, int n_heads, \
        int n_kv_heads, int head_dim, float scale, int split_len, bf16_t* out, int out_stride,    \
        float* part_acc, float* part_ml, int total_rows) {                                        \
        pdl_enter();                                                                              \
        fa_prefill_body<HD, KT, KS, NST>(q, q_stride, k_pool, v_pool, block_tables, max_pages, page_size, \
                                 tile_info, n_heads, n_kv_heads, scale, split_len, out,           \
                                 out_stride, part_acc, part_ml, total_rows);                      \
    }
// FA_KERNEL(HD, KT, KS, NST, MINB). Shared memory: (FA_ROWS + 2 * NST * KT) * (HD + 8) * 2 bytes,
// mirrored by fa2_smem in kernels/src/cuda/attention/names.rs: 73728 (d64: 64-key tiles in one step,
// 3 stages) and 104448 (d128: 64-key tiles in two 32-key steps, 2 stages; two blocks fit an SM).
FA_KERNEL(64, 64, 64, 3, 2)
FA_KERNEL(128, 64, 32, 2, 2)
