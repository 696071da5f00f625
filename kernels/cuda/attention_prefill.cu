// FA2-style tensor-core prefill / prefix-extend attention over the paged KV pool (sm_80+):
// `paged_attention_fa2_d{64,128}`, the planner's default for prompts (attention.cu's
// paged_attention_mma_d* stays selectable with STRATA_ATTN_MMA=1).
//
// Work unit: a tile = FA_ROWS (token, head) rows of one sequence for one KV head g: 128 / group
// consecutive query tokens times the group's query heads (row r = token r / group, query head
// g * group + r % group), so one K/V tile in shared memory serves 128 rows. tile_info as
// paged_attention's. Grid = (kv head, tile, split) with tiles taken last-first, so the longest
// (latest, causal) tiles of a prompt start first and the short ones fill the tail.
// 4 warps; warp w owns rows 32w..32w+31 as two m16 tiles. Q [128][HD] is copied to shared
// memory once; K and V tiles of KT keys (64 at head_dim 64, 32 at 128: registers) are copied
// row-major into NST shared-memory stages with cp.async (zero-filled past the block's last key),
// NST - 1 tiles in flight while the warps compute. S = Q K^T and O += P V run on mma.sync
// m16n8k16 bf16 -> f32 with ldmatrix fragments (V through ldmatrix.trans, no transposed copy);
// rows are padded to HD + 8 elements so the 8 row addresses of an ldmatrix phase hit 8 different
// 16-byte bank groups. Online softmax in f32 on the accumulator fragments (exp2, scale folded in;
// P packed to bf16 as computed; row sums kept per thread and summed over the quad at the end).
// A warp skips the math of tiles past every one of its rows' causal limits and masks only tiles
// that cross a limit or the block's key end. Masked scores contribute exactly 0. Output and
// split partials as paged_attention (attention_combine merges them).
#define FA_WARPS 4
#define FA_THREADS 128
#define FA_ROWS 128

__device__ __forceinline__ void fa_cp16(void* dst, const void* src, int src_bytes) {
    const u32 d = (u32)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void fa_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void fa_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fa_ldsm4(u32* r, const bf16_t* p) {
    const u32 a = (u32)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void fa_ldsm4_t(u32* r, const bf16_t* p) {
    const u32 a = (u32)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

template <int HD, int FA_KT, int NST>
__device__ __forceinline__ void fa_prefill_body(
    const bf16_t* q, int q_stride, const bf16_t* k_pool, const bf16_t* v_pool,
    const int* block_tables, int max_pages, int page_size, const int* tile_info, int n_heads,
    int n_kv_heads, float scale, int split_len, bf16_t* out, int out_stride, float* part_acc,
    float* part_ml, int total_rows) {
    constexpr int ST = HD + 8;    // shared row stride (bf16 elements)
    constexpr int CPR = HD / 8;   // 16-byte pieces per row
    constexpr int NT = FA_KT / 8; // 8-key n-tiles of S per tile
    constexpr int DT = HD / 8;    // 8-dim n-tiles of O
    extern __shared__ __align__(16) unsigned char fa_smem[];
    bf16_t* qs = (bf16_t*)fa_smem;       // [FA_ROWS][ST]
    bf16_t* ks = qs + FA_ROWS * ST;      // [NST][FA_KT][ST]
    bf16_t* vs = ks + NST * FA_KT * ST;  // [NST][FA_KT][ST]

    const int group = n_heads / n_kv_heads;
    const int g = blockIdx.x, tile = gridDim.y - 1 - blockIdx.y;
    const int split = blockIdx.z, nsplit = gridDim.z;
    const int seq = tile_info[tile * 4 + 0], row0 = tile_info[tile * 4 + 1];
    const int qcount = tile_info[tile * 4 + 2], pos0 = tile_info[tile * 4 + 3];
    const int nrows = qcount * group;
    const int kbeg = split * split_len;
    const int kend = min(pos0 + qcount, kbeg + split_len);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int gid = lane >> 2, tig = lane & 3;
    const float sl2 = scale * 1.4426950408889634f;
    const int* bt = block_tables + (u64)seq * max_pages;

    // Q rows of the tile (zero past its last row): part of the first copy group.
    for (int c = tid; c < FA_ROWS * CPR; c += FA_THREADS) {
        const int r = c / CPR, piece = c % CPR;
        const bool live = r < nrows;
        const bf16_t* src = q;
        if (live)
            src = q + (u64)(row0 + r / group) * q_stride + (u64)(g * group + r % group) * HD + piece * 8;
        fa_cp16(qs + r * ST + piece * 8, src, live ? 16 : 0);
    }
    // Copies K and V rows of keys [t0, t0 + FA_KT) into stage st (zeros past kend).
    auto issue = [&](int t0, int st) {
        bf16_t* kd = ks + st * FA_KT * ST;
        bf16_t* vd = vs + st * FA_KT * ST;
        // Not unrolled: the unrolled copies' addresses stay live across the whole tile loop.
#pragma unroll 1
        for (int c = tid; c < FA_KT * CPR; c += FA_THREADS) {
            const int j = c / CPR, piece = c % CPR, key = t0 + j;
            const bool live = key < kend;
            u64 off = 0;
            if (live) {
                const int p = key / page_size;
                const u64 slot = (u64)bt[p] * page_size + (key - p * page_size);
                off = (slot * n_kv_heads + g) * HD + piece * 8;
            }
            fa_cp16(kd + j * ST + piece * 8, k_pool + off, live ? 16 : 0);
            fa_cp16(vd + j * ST + piece * 8, v_pool + off, live ? 16 : 0);
        }
    };

    // This thread's 4 rows: i = 2 * mt + h is row 32 * warp + 16 * mt + gid + 8 * h.
    const int wr0 = warp * 32;
    int lim[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = wr0 + 16 * (i >> 1) + gid + 8 * (i & 1);
        lim[i] = r < nrows ? pos0 + r / group + 1 : 0;
    }
    // Largest and smallest causal limit over the warp's 32 rows (rows past the tile: limit 0).
    const int w_hi = wr0 < nrows ? pos0 + (min(wr0 + 31, nrows - 1)) / group + 1 : 0;
    const int w_lo = wr0 + 31 < nrows ? pos0 + wr0 / group + 1 : 0;
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

    const int ntiles = kend > kbeg ? (kend - kbeg + FA_KT - 1) / FA_KT : 0;
#pragma unroll
    for (int p = 0; p < NST - 1; ++p) {
        if (p < ntiles) issue(kbeg + p * FA_KT, p);
        fa_commit();
    }
    for (int it = 0; it < ntiles; ++it) {
        fa_wait<NST - 2>();
        __syncthreads();
        // The stage refilled here was read in iteration it - 1, which every warp has finished.
        const int nxt = it + NST - 1;
        if (nxt < ntiles) issue(kbeg + nxt * FA_KT, nxt % NST);
        fa_commit();
        const int t0 = kbeg + it * FA_KT;
        if (t0 >= w_hi) continue;  // past the causal limit of every row of this warp
        const bool full = t0 + FA_KT <= w_full;
        const bf16_t* kt = ks + (it % NST) * FA_KT * ST;
        const bf16_t* vt = vs + (it % NST) * FA_KT * ST;

        // S = Q K^T: 32 rows x FA_KT keys per warp.
        float s[2][NT][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[mt][n][e] = 0.f;
        // Not unrolled: unrolled, ptxas hoists the fragment loads of every k step (spills at d128).
#pragma unroll 1
        for (int kk = 0; kk < HD / 16; ++kk) {
            u32 a[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
                fa_ldsm4(a[mt], qs + (wr0 + 16 * mt + (lane & 15)) * ST + kk * 16 + (lane >> 4) * 8);
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

        // Online softmax (base 2) per row; the 4 threads of a quad share a row.
        float mx[4] = {NEG_INF, NEG_INF, NEG_INF, NEG_INF};
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int i = 2 * mt + (e >> 1);
                    float v = s[mt][n][e] * sl2;
                    if (!full) {
                        const int key = t0 + n * 8 + tig * 2 + (e & 1);
                        if (!(key < kend && key < lim[i])) v = NEG_INF;
                    }
                    s[mt][n][e] = v;
                    mx[i] = fmaxf(mx[i], v);
                }
        float corr[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(FULL_MASK, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(FULL_MASK, mx[i], 2));
            const float mnew = fmaxf(m[i], mx[i]);
            corr[i] = exp2f(m[i] - mnew);
            m[i] = mnew;
        }
        // P = exp2(S - m), packed to bf16 pairs at once (the f32 scores die here: registers).
        float rs[4] = {0.f, 0.f, 0.f, 0.f};
        u32 pk[2][NT][2];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int i = 2 * mt + h;
                    const float v0 = s[mt][n][2 * h], v1 = s[mt][n][2 * h + 1];
                    const float p0 = v0 == NEG_INF ? 0.f : exp2f(v0 - m[i]);
                    const float p1 = v1 == NEG_INF ? 0.f : exp2f(v1 - m[i]);
                    rs[i] += p0 + p1;
                    pk[mt][n][h] = pack_bf16x2(p0, p1);
                }
#pragma unroll
        for (int i = 0; i < 4; ++i) l[i] = l[i] * corr[i] + rs[i];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int n = 0; n < DT; ++n) {
                o[mt][n][0] *= corr[2 * mt];
                o[mt][n][1] *= corr[2 * mt];
                o[mt][n][2] *= corr[2 * mt + 1];
                o[mt][n][3] *= corr[2 * mt + 1];
            }

        // O += P V: P from the S fragments (16 keys per k step), V fragments by ldmatrix.trans.
#pragma unroll
        for (int kk = 0; kk < FA_KT / 16; ++kk) {
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
                fa_ldsm4_t(b, vt + (kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3)) * ST + dp * 16 +
                                  (lane >> 4) * 8);
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    mma_bf16_16816(o[mt][2 * dp], a[mt], b[0], b[1]);
                    mma_bf16_16816(o[mt][2 * dp + 1], a[mt], b[2], b[3]);
                }
            }
        }
    }
    fa_wait<0>();

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
            const int grow = row0 + r / group, head = g * group + r % group;
            if (nsplit == 1) {
                const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
                bf16_t* orow = out + (u64)grow * out_stride + (u64)head * HD + tig * 2;
#pragma unroll
                for (int n = 0; n < DT; ++n)
                    *(u32*)(orow + n * 8) = pack_bf16x2(o[mt][n][2 * h] * inv, o[mt][n][2 * h + 1] * inv);
            } else {
                const u64 base = ((u64)split * total_rows + grow) * n_heads + head;
                float* pa = part_acc + base * HD + tig * 2;
#pragma unroll
                for (int n = 0; n < DT; ++n) {
                    pa[n * 8] = o[mt][n][2 * h];
                    pa[n * 8 + 1] = o[mt][n][2 * h + 1];
                }
                // Partials in natural-log units like paged_attention's.
                if (tig == 0) {
                    part_ml[base * 2] = m[i] == NEG_BIG ? NEG_BIG : m[i] * 0.6931471805599453f;
                    part_ml[base * 2 + 1] = l[i];
                }
            }
        }
}

#define FA_KERNEL(HD, KT, NST, MINB)                                                                  \
    extern "C" __global__ void __launch_bounds__(FA_THREADS, MINB) paged_attention_fa2_d##HD(      \
        const bf16_t* q, int q_stride, const bf16_t* k_pool, const bf16_t* v_pool,                \
        const int* block_tables, int max_pages, int page_size, const int* tile_info, int n_heads, \
        int n_kv_heads, int head_dim, float scale, int split_len, bf16_t* out, int out_stride,    \
        float* part_acc, float* part_ml, int total_rows) {                                        \
        pdl_enter();                                                                              \
        fa_prefill_body<HD, KT, NST>(q, q_stride, k_pool, v_pool, block_tables, max_pages, page_size, \
                                 tile_info, n_heads, n_kv_heads, scale, split_len, out,           \
                                 out_stride, part_acc, part_ml, total_rows);                      \
    }
// Shared memory: (FA_ROWS + 2 * NST * KT) * (HD + 8) * 2 bytes, mirrored by fa2_smem in
// kernels/src/cuda/attention.rs: 73728 (d64: 64-key tiles, 3 stages) and 87040 (d128: 32-key
// tiles, 3 stages; 64-key tiles need more than 255 registers there).
FA_KERNEL(64, 64, 3, 2)
FA_KERNEL(128, 32, 3, 2)

// Alternative head_dim-128 tile shapes (attention::FA2_VARIANTS), timed beside the default by
// `strata gpu bench`: 64-key tiles in 2 stages (104448 bytes; ptxas spills a few registers) and
// 32-key tiles in 2 stages (69632 bytes).
#define FA_VARIANT(NAME, HD, KT, NST)                                                             \
    extern "C" __global__ void __launch_bounds__(FA_THREADS, 2) NAME(                             \
        const bf16_t* q, int q_stride, const bf16_t* k_pool, const bf16_t* v_pool,                \
        const int* block_tables, int max_pages, int page_size, const int* tile_info, int n_heads, \
        int n_kv_heads, int head_dim, float scale, int split_len, bf16_t* out, int out_stride,    \
        float* part_acc, float* part_ml, int total_rows) {                                        \
        pdl_enter();                                                                              \
        fa_prefill_body<HD, KT, NST>(q, q_stride, k_pool, v_pool, block_tables, max_pages,        \
                                     page_size, tile_info, n_heads, n_kv_heads, scale, split_len, \
                                     out, out_stride, part_acc, part_ml, total_rows);             \
    }
FA_VARIANT(paged_attention_fa2_d128_kt64s2, 128, 64, 2)
FA_VARIANT(paged_attention_fa2_d128_kt32s2, 128, 32, 2)
