// wgmma (sm_90a) flash-attention prefill / prefix-extend over the paged KV pool, head_dim 128:
// `paged_attention_wg_d128`, its own NVRTC program (Program::AttentionWg) compiled for sm_90a
// only on compute-9.0 devices; every other GPU runs attention_prefill.cu's FA2 kernel.
// Arguments, tile_info, splits and outputs are the FA2 kernel's (128 rows per tile: 128 / group
// consecutive query tokens times the group's query heads); the tile decoding, page lookups and
// row store are prefill_common.cuh's, shared with it.
//
// 256 threads = 2 warpgroups; warpgroup w owns tile rows 64w..64w+63. Q [128][128] is copied
// once, K and V tiles of 128 keys into NST shared-memory stages by cp.async from every thread
// (each key's pool slot looked up once per tile through the page table, the entries loaded a tile
// ahead while S runs, and handed to the copying lanes by shuffle; zero-filled past the block's
// last key), NST - 1 tiles in flight. Shared
// tiles are stored as two 64-dim halves, each [rows][128 bytes] in the 128-byte swizzle
// (16-byte chunk c of row r at chunk c ^ (r & 7), halves and buffers 1024-byte aligned), the
// canonical layout wgmma reads through a matrix descriptor: K-major for Q (A) and K (B) of
// S = Q K^T, N-major (transposed B) for V in O += P V.
// Per tile and warpgroup: S [64][128] = 8 x wgmma m64n128k16 (Q's A fragments in registers,
// read once from the shared copy; K from shared memory; `paged_attention_wgs_d128` reads Q from
// shared memory in every S, 1-2 % slower at 8K) in f32 registers; per-element causal / key-end mask only on tiles that cross a row's limit; online
// softmax in base 2 (row max over the quad, p = ex2(s * scale * log2(e) - m), O and the row sums
// rescaled only when some row max of the warp grew), P packed to bf16 in registers as the A
// operand of O += P V (8 x wgmma m64n128k16, A from registers: the accumulator fragment of S
// is the A fragment of P). cp.async writes reach the wgmma (async proxy) reads through
// cp.async.wait_group + fence.proxy.async + __syncthreads. Output and split partials as the FA2
// kernel's.
// Overlap within a warpgroup: a tile's O += P V is queued after the next tile's S and mask and
// runs while that tile's exponentials do (queued before the mask, ptxas waited for it where the
// mask's divergent branch rejoins, i.e. before the exponentials: 1.363 vs 1.214 ms per layer at
// 8K on the H200, 2026-12-03; K and V in separate rings copied two tiles ahead: 1.244 ms).
// The page-table loads a tile ahead and the row maxima and sums in four chains each took the
// kernel alone from 1.156 to 1.109 ms per layer at 8K (H200, 2026-12-04); issuing the copies
// while S runs as well timed the same at 8K and slower at 2K (0.116 vs 0.105 ms).
#define WG_THREADS 256
#define WG_ROWS 128
#define WG_KT 128

// RoPE (rotate-half) on the tile's Q in shared memory before anything reads it: what
// rope_kv_write does to Q when it rotates it, bit for bit (the same sincosf of the same product,
// the same rope_rot), so a forward can leave Q to this kernel and skip its 2 x [tokens, q width]
// bytes there. Dims i and i + 64 of a row are 16-byte chunk i / 8 of the two 64-dim halves at
// the same row and swizzle position; an item rotates one chunk pair of the `group` rows of one
// token, whose 8 angles it computes once. Rows past the tile's tokens (zero-filled) are skipped.
__device__ __forceinline__ void wg_rope_q(u32 qs, const PfTile& T, const int* pos, const float* inv_freq) {
    constexpr u32 HALF_Q = WG_ROWS * 128;
    for (int it = threadIdx.x; it < T.qcount * 8; it += WG_THREADS) {
        const int tk = it >> 3, c = it & 7;
        const float p = (float)pos[T.row0 + tk];
        float co[8], si[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) sincosf(p * inv_freq[8 * c + e], &si[e], &co[e]);
        for (int h = 0; h < T.group; ++h) {
            const int r = (tk << T.gsh) + h;
            const u32 at = qs + (u32)r * 128u + ((u32)(c ^ (r & 7)) << 4);
            u32 a[4], b[4];
            asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                         : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3]) : "r"(at));
            asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                         : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]) : "r"(at + HALF_Q));
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                bf16_t y1[2], y2[2];
#pragma unroll
                for (int e = 0; e < 2; ++e)
                    rope_rot(bf2f((bf16_t)(a[j] >> (16 * e))), bf2f((bf16_t)(b[j] >> (16 * e))), co[2 * j + e],
                             si[2 * j + e], &y1[e], &y2[e]);
                a[j] = (u32)y1[0] | ((u32)y1[1] << 16);
                b[j] = (u32)y2[0] | ((u32)y2[1] << 16);
            }
            asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(at), "r"(a[0]), "r"(a[1]), "r"(a[2]),
                         "r"(a[3]) : "memory");
            asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(at + HALF_Q), "r"(b[0]), "r"(b[1]),
                         "r"(b[2]), "r"(b[3]) : "memory");
        }
    }
}

// The block's two computing warpgroups (threads 0..255) meet: the producer forms leave their
// producer warpgroup out.
__device__ __forceinline__ void wg_sync256() { asm volatile("bar.sync 1, 256;\n" ::: "memory"); }

// How K/V tiles reach shared memory (the `CL` parameter of wg_prefill_body):
// CL = 0: cp.async from every computing thread (each key's pool slot looked up through the page
// table, see above), the two warpgroups meeting at a block barrier per tile.
// CL >= 1, the producer forms: TMA boxes of min(page_size, 32) keys x 64 dims from the pool's
// tensor maps (one box row range per lane of a producer warp: a third warpgroup, which gives
// its registers to the computing ones), up to NST tiles ahead; each stage's `full` mbarrier
// counts the bytes and its `empty` one the computing warps that finished reading it, so the
// computing warpgroups meet at no block barrier in the loop. CL >= 2: thread-block clusters of
// CL blocks along grid z that share every K/V tile: they take the same keys for a query tile of
// CL times the tokens, each block 1 / CL of the group's query heads (so group >= CL), and each
// block's producer loads its share of the tile's four boxes (K dims 0-63, K 64-127, V 0-63,
// V 64-127; box j by block j % CL) into every block of the cluster by TMA multicast: 1 / CL of
// the L2 -> SM bytes per FLOP. A stage is handed back to every producer of the cluster (its
// `empty` mbarrier counts the 8 CL computing warps). The producer forms need page sizes that
// are powers of two from 8 (a box never crosses a page) and read keys past the block's end
// from the pool (masked: their P is 0) or, for boxes wholly past it, as zeros (rows outside
// the tensor).

// Key tiles of a block's keys [kbeg, kend).
__device__ __forceinline__ int wg_ntiles(int kbeg, int kend) {
    return kend > kbeg ? (kend - kbeg + WG_KT - 1) / WG_KT : 0;
}
// The cp.async copiers' layout (the computing threads of the cp.async form, STRIDE = 16; the
// producer warpgroup of the cp.async producer form, STRIDE = 8): copier t moves 16-byte piece
// t % 16 (dims 8 (t % 16) ..) of rows t / 16 + STRIDE i. Rows r and r + STRIDE i share r & 7,
// so one offset in the 128-byte swizzle, wg_swz(t % 16, t / 16, bytes of a 64-dim half),
// serves every pass.
__device__ __forceinline__ u32 wg_swz(int piece, int r0, u32 half) {
    return (u32)(piece >> 3) * half + (u32)r0 * 128u + ((u32)((piece & 7) ^ (r0 & 7)) << 4);
}
// The key of a tile lane L of copier warp W looks up (its slot handed on by shuffle to the
// lanes copying it, see wg_cp_tile): 2 W + (L & 1) + STRIDE (L >> 1).
template <int STRIDE>
__device__ __forceinline__ int wg_cp_key(int t, int lane) {
    return 2 * (t >> 5) + (lane & 1) + STRIDE * (lane >> 1);
}

// One tile's boxes from this block (see above) into the stage at kdst / vdst of every block of
// the cluster (lanes < KT / br of the calling warp, br = min(page_size, 32)), `bar` armed for
// the whole tile (lane 0, before any box). `slot`: this lane's box start as pf_slot_load gave
// it (off < 0: past the keys).
template <int CL>
__device__ __forceinline__ void wg_tma_tile(const TmaMap* kmap, const TmaMap* vmap, u32 kdst, u32 vdst, u32 bar,
                                            PfSlot slot, int g, int page_size, int rank) {
    const int lane = threadIdx.x & 31, br = min(page_size, 32);
    constexpr u32 HALF_T = WG_KT * 128;
    if (lane == 0) mb_expect_tx(bar, 4 * HALF_T);
    __syncwarp();
    if (lane < WG_KT / br) {
        const int row = slot.off < 0 ? -64 : slot.page * page_size + slot.off;
        const u32 at = (u32)(lane * br) * 128u;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            if (j % CL != rank) continue;
            const TmaMap* map = j < 2 ? kmap : vmap;
            const u32 dst = (j < 2 ? kdst : vdst) + (u32)(j & 1) * HALF_T + at;
            const int c0 = g * 128 + (j & 1) * 64;
            if (CL == 1)
                tma_load_2d(dst, map, c0, row, bar);
            else
                tma_load_2d_mc(dst, map, c0, row, bar, (unsigned short)((1 << CL) - 1));
        }
    }
}

// The producer warp: every tile of the block into stage it % NST once the computing warps (of
// the cluster) handed that stage back, its page entries loaded a tile ahead.
template <int NST, int CL>
__device__ void wg_tma_producer(const PfTile& T, const TmaMap* kmap, const TmaMap* vmap, u32 ks, u32 vs,
                                u32 bars, int page_size, int rank) {
    constexpr u32 TILE = 2 * WG_KT * 128;
    const int lane = threadIdx.x & 31, br = min(page_size, 32);
    const int ntiles = wg_ntiles(T.kbeg, T.kend);
    PfSlot slot = pf_slot_load(T, T.kbeg + lane * br, page_size, lane < WG_KT / br);
    for (int it = 0; it < ntiles; ++it) {
        const int st = it % NST;
        const PfSlot next = pf_slot_load(T, T.kbeg + (it + 1) * WG_KT + lane * br, page_size, lane < WG_KT / br);
        mb_wait(bars + 8 * (NST + st), ((it / NST) & 1) ^ 1);
        wg_tma_tile<CL>(kmap, vmap, ks + st * TILE, vs + st * TILE, bars + 8 * st, slot, T.g, page_size, rank);
        slot = next;
    }
}

// One tile's K and V copies by cp.async: this thread's 16-byte piece (pool column tcol) of PASSES
// rows STRIDE apart into kd / vd + i STRIDE rows, row i's slot code (pf_slot_finish) taken
// from lane 2 i + (lane >> 4) of the warp (code 0: zero-filled); `lane`: this thread's.
template <int PASSES, int STRIDE>
__device__ __forceinline__ void wg_cp_tile(u32 kd, u32 vd, u32 code, const bf16_t* k_pool, const bf16_t* v_pool,
                                           u64 row_bytes, u32 tcol, int lane) {
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
        const u32 c = __shfl_sync(FULL_MASK, code, 2 * i + (lane >> 4));
        const u64 off = (u64)(c >> 1) * row_bytes + tcol;
        const int bytes = (c & 1) * 16;
        pf_cp16(kd + i * STRIDE * 128, (const char*)k_pool + off, bytes);
        pf_cp16(vd + i * STRIDE * 128, (const char*)v_pool + off, bytes);
    }
}

// The cp.async producer (CPP, CL = 1; page sizes the TMA boxes do not fit, SGLang's default 1
// among them): the producer warpgroup's 128 threads copy every tile of the block into stage
// it % NST as the computing threads of the cp.async form do (16-byte pieces, each key's pool
// slot looked up through the page table, the tile after's lookups in flight while this one
// copies), each thread waits for its own copies, makes them visible to the async proxy and
// arrives on the stage's `full` mbarrier (128 arrivals). A tile's copies take ~1-2 us; the
// computing warpgroups spend several times that on a tile, so one tile in flight per thread
// keeps NST - 1 ready ahead of them.
template <int NST>
__device__ void wg_cp_producer(const PfTile& T, const bf16_t* k_pool, const bf16_t* v_pool, u32 ks, u32 vs,
                               u32 bars, int page_size, int n_kv_heads) {
    constexpr u32 HALF_T = WG_KT * 128, TILE = 2 * HALF_T;
    const int pt = threadIdx.x - 256, lane = pt & 31;
    // Copier pt of wg_swz's layout with STRIDE 8: every lane looks up a key.
    const int piece = pt & 15, r0 = pt >> 4;
    const u32 swz = wg_swz(piece, r0, HALF_T);
    const u64 row_bytes = (u64)n_kv_heads * 128 * 2;
    const u32 tcol = (u32)(T.g * 128 + piece * 8) * 2u;
    const int my_key = wg_cp_key<8>(pt, lane);
    const int ntiles = wg_ntiles(T.kbeg, T.kend);
    PfSlot slot = pf_slot_load(T, T.kbeg + my_key, page_size, true);
    for (int it = 0; it < ntiles; ++it) {
        const int st = it % NST;
        const PfSlot next = pf_slot_load(T, T.kbeg + (it + 1) * WG_KT + my_key, page_size, true);
        const u32 code = pf_slot_finish(slot, page_size);
        mb_wait(bars + 8 * (NST + st), ((it / NST) & 1) ^ 1);
        wg_cp_tile<WG_KT / 8, 8>(ks + st * TILE + swz, vs + st * TILE + swz, code, k_pool, v_pool, row_bytes, tcol,
                                 lane);
        pf_commit();
        pf_cp_wait<0>();
        wg_fence_async();
        mb_arrive(bars + 8 * st);
        slot = next;
    }
}

// NST shared-memory stages of K and V tiles, loaded as CL says (above).
// QREG: Q's A fragments are read from shared memory into registers once, and S = Q K^T takes
// them from there (the 2 KB of Q each S wgmma reads from shared memory otherwise).
// CPP (with CL = 1): the producer warpgroup copies by cp.async (wg_cp_producer) instead of TMA.
template <int NST, bool QREG, int CL, bool CPP = false>
__device__ __forceinline__ void wg_prefill_body(
    const bf16_t* q, int q_stride, const bf16_t* k_pool, const bf16_t* v_pool,
    const int* block_tables, int max_pages, int page_size, const int* tile_info, int n_heads,
    int n_kv_heads, float scale, int split_len, bf16_t* out, int out_stride, float* part_acc,
    float* part_ml, int total_rows, const int* rope_pos, const float* rope_inv, const TmaMap* kmap,
    const TmaMap* vmap) {
    constexpr int HD = 128, KT = WG_KT;
    constexpr u32 HALF_Q = WG_ROWS * 128;  // one 64-dim half of Q, bytes
    constexpr u32 HALF_T = KT * 128;       // one 64-dim half of a K or V tile
    constexpr u32 TILE = 2 * HALF_T;
    extern __shared__ unsigned char wg_smem[];
    const u32 qs = ((u32)__cvta_generic_to_shared(wg_smem) + 1023u) & ~1023u;
    const u32 ks = qs + 2 * HALF_Q;
    const u32 vs = ks + NST * TILE;
    // The producer forms' mbarriers: full[NST] then empty[NST].
    const u32 bars = vs + NST * TILE;

    constexpr bool PROD = CL > 0, MC = CL > 1;
    PfTile T = pf_tile(tile_info, block_tables, max_pages, n_heads, n_kv_heads, split_len);
    const int rank = MC ? (int)(blockIdx.z % CL) : 0;
    if (MC) {
        // Grid z = CL x splits, a cluster's blocks adjacent: the split's keys, 1 / CL of the
        // group's heads each.
        T.split = blockIdx.z / CL;
        T.nsplit = gridDim.z / CL;
        T.kbeg = T.split * split_len;
        T.kend = min(T.pos0 + T.qcount, T.kbeg + split_len);
        T.group /= CL;
        T.gsh -= __ffs(CL) - 1;  // log2(CL)
        T.h0 += rank * T.group;
        T.nrows = T.qcount * T.group;
    }
    if (PROD) {
        if (threadIdx.x == 0) {
            for (int s = 0; s < NST; ++s) {
                mb_init(bars + 8 * s, CPP ? 128 : 1);
                mb_init(bars + 8 * (NST + s), 8 * CL);  // the computing warps of the cluster
            }
            asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        }
        if (MC)
            wg_cluster_sync();
        else
            __syncthreads();
        if (threadIdx.x >= 256) {
            asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
            if (CPP)
                wg_cp_producer<NST>(T, k_pool, v_pool, ks, vs, bars, page_size, n_kv_heads);
            else if (threadIdx.x < 288)
                wg_tma_producer<NST, CL>(T, kmap, vmap, ks, vs, bars, page_size, rank);
            // (a cluster's blocks leave together: another may still write this one's stages
            // and barriers)
            if (MC) wg_cluster_sync();
            return;
        }
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    }
    const int gsh = T.gsh, pos0 = T.pos0, nrows = T.nrows, kbeg = T.kbeg, kend = T.kend;
    const int tid = threadIdx.x, lane = tid & 31;
    const int wg = tid >> 7, warp = (tid >> 5) & 3;
    const int gid = lane >> 2, tig = lane & 3;
    const float sl2 = scale * 1.4426950408889634f;

    // Copies of Q, K and V: thread tid of wg_swz's layout with STRIDE 16.
    const int piece = tid & 15, r0 = tid >> 4;
    const u32 swz = wg_swz(piece, r0, HALF_Q), swz_t = wg_swz(piece, r0, HALF_T);
#pragma unroll
    for (int i = 0; i < WG_ROWS / 16; ++i) {
        const int r = r0 + 16 * i;
        const bool live = r < nrows;
        pf_cp16(qs + swz + i * 16 * 128, live ? pf_q_src<HD>(T, q, q_stride, r, piece) : q, live ? 16 : 0);
    }
    // Lanes L < 16 look up the tile's keys (wg_cp_key) and hand 2 * slot + live on by shuffle.
    const u64 row_bytes = (u64)n_kv_heads * HD * 2;
    const u32 tcol = (u32)(T.g * HD + piece * 8) * 2u;
    const int my_key = wg_cp_key<16>(tid, lane);
    // The lookup loads a tile's page-table entries into `slot` one iteration before its copies
    // use them (issued while S runs; consumed at once, the load's latency stalled every warp:
    // 8 % of the stall samples under Nsight Compute, 2026-12-04).
    PfSlot slot;
    // (The producer forms look up and copy nothing here.)
    auto lookup = [&](int t0) {
        if (!PROD) slot = pf_slot_load(T, t0 + my_key, page_size, lane < 16);
    };
    // Copies of one tile's K and V to stage st, to the slots `slot` of the lookup lanes holds.
    auto issue = [&](int st) {
        if (PROD) return;
        wg_cp_tile<KT / 16, 16>(ks + st * TILE + swz_t, vs + st * TILE + swz_t, pf_slot_finish(slot, page_size),
                                k_pool, v_pool, row_bytes, tcol, lane);
    };

    // The warpgroup's smallest causal limit (rows past the tile: limit 0).
    const int gr0 = wg * 64;
    const int g_lo = gr0 + 63 < nrows ? pos0 + (gr0 >> gsh) + 1 : 0;
    const int g_full = min(kend, g_lo);
    // This thread's rows: gr0 + 16 warp + gid + 8 h.
    int lim0[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = gr0 + 16 * warp + gid + 8 * h;
        lim0[h] = r < nrows ? min(kend, pos0 + (r >> gsh) + 1) - 2 * tig : 0;
    }

    float o[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) o[i] = 0.f;
    float m[2] = {NEG_BIG, NEG_BIG}, l[2] = {0.f, 0.f};
    // Q descriptors of this warpgroup (k step kk: half kk / 4, 32 bytes per step within it).
    const u64 qd = wg_desc(qs + gr0 * 128, 16, 1024);
    // QREG: qf[4 kk + j] = Q's A fragment of dims 16 kk .. 16 kk + 15 (j & 1: row + 8, j >> 1:
    // dims + 8), read from the swizzled shared copy once it landed.
    u32 qf[QREG ? HD / 4 : 1];
    if (QREG || rope_pos) {
        pf_commit();
        pf_cp_wait<0>();
        wg_sync256();
    }
    // (The S wgmma of the shared-memory form reads the rotated Q through the async proxy: the
    // loop's first fence.proxy.async and barrier order these writes before it.)
    if (rope_pos) {
        wg_rope_q(qs, T, rope_pos, rope_inv);
        wg_sync256();
    }
    if (QREG) {
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int r = gr0 + 16 * warp + gid + 8 * (j & 1);
                const int d = 16 * kk + 8 * (j >> 1) + 2 * tig;
                const u32 at = qs + (u32)(d >> 6) * HALF_Q + (u32)r * 128u +
                               ((u32)(((d & 63) >> 3) ^ (r & 7)) << 4) + (u32)(d & 7) * 2u;
                u32 v;
                asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(at));
                qf[QREG ? 4 * kk + j : 0] = v;
            }
    }

    const int ntiles = wg_ntiles(kbeg, kend);
    // Copies run LEAD = NST - 2 tiles ahead: a tile's O += P V runs on into the next
    // iteration, whose stage must stay intact.
    constexpr int LEAD = NST - 2;
    static_assert(LEAD >= 1, "stages");
    lookup(kbeg);
#pragma unroll
    for (int p = 0; p < LEAD; ++p) {
        if (p < ntiles) issue(p);
        pf_commit();
        lookup(kbeg + (p + 1) * KT);
    }
    // P of the last computed tile as bf16 pairs: pk[2 n + h] holds row h's keys 8 n + 2 tig
    // (+1), so pk[4 kk .. 4 kk + 3] is the A fragment of keys 16 kk .. 16 kk + 15.
    // pk waits for its O += P V (V in stage pv_stage). The loop always queues the
    // previous tile's O += P V (P = 0 before the first tile) and a warpgroup past its rows'
    // causal limits runs fully masked tiles (at most one: the warpgroups' limits differ by
    // 64 / group tokens), so no wgmma wait sits on a divergent path (ptxas would serialize
    // every wgmma of the kernel).
    u32 pk[KT / 4];
#pragma unroll
    for (int i = 0; i < KT / 4; ++i) pk[i] = 0;
    int pv_stage = 0;
    // O += P V: V's k step kk is keys 16 kk .. (rows 16 kk of both halves); the two 64-dim
    // halves are HALF_T apart (leading byte offset), 8-key groups 1024 bytes (stride).
    auto pv = [&](int st) {
        const u64 vd = wg_desc(vs + st * TILE, HALF_T, 1024);
        wg_pin<64>(o);
        wg_pin_u<KT / 4>(pk);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < KT / 16; ++kk)
            wg_mma_rs<1>(o, pk + 4 * kk, vd + (u64)((kk * 16 * 128) >> 4), 1);
        wg_commit_mma();
    };
    for (int it = 0; it < ntiles; ++it) {
        if (!PROD) {
            pf_cp_wait<LEAD - 1>();
            wg_fence_async();
            // The stage refilled here was last read in an iteration every warpgroup finished.
            wg_sync256();
        }
        const int nxt = it + LEAD;
        if (nxt < ntiles) issue(nxt % NST);
        pf_commit();
        if (PROD) mb_wait(bars + 8 * (it % NST), (it / NST) & 1);
        const int t0 = kbeg + it * KT;
        const u64 kd = wg_desc(ks + (it % NST) * TILE, 16, 1024);

        // S = Q K^T (the previous tile's O += P V is queued after the mask below).
        float s[64];
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            const u64 step = (u64)(((kk >> 2) * HALF_Q + (kk & 3) * 32) >> 4);
            const u64 kstep = (u64)(((kk >> 2) * HALF_T + (kk & 3) * 32) >> 4);
            if (QREG)
                wg_mma_rs<0>(s, qf + (QREG ? 4 * kk : 0), kd + kstep, kk);
            else
                wg_mma_ss(s, qd + step, kd + kstep, kk);
        }
        wg_commit_mma();
        // The page entries of the tile after next, loaded while S runs.
        lookup(kbeg + (nxt + 1) * KT);
        wg_wait_mma<0>();
        wg_pin<64>(s);

        // Tiles that cross a row's causal limit or the block's key end: -inf past the limit.
        if (t0 + KT > g_full) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int lim = lim0[h] - t0;
#pragma unroll
                for (int n = 0; n < KT / 8; ++n) {
                    if (n * 8 >= lim) s[4 * n + 2 * h] = NEG_INF;
                    if (n * 8 + 1 >= lim) s[4 * n + 2 * h + 1] = NEG_INF;
                }
            }
        }
        // The previous O += P V is queued only now, after the mask's (divergent) branch: ptxas
        // waits for every wgmma in flight where a divergent branch rejoins.
        pv(pv_stage);
        // Online softmax (base 2); the 4 threads of a quad share a row.
        // Row maxima in four independent chains per row (one 16-long chain of dependent
        // FMNMX was latency-bound with one warp per scheduler and warpgroup).
        float mq[2][4];
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int j = 0; j < 4; ++j) mq[h][j] = fmaxf(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]);
#pragma unroll
        for (int n = 4; n < KT / 8; ++n)
#pragma unroll
            for (int h = 0; h < 2; ++h)
                mq[h][n & 3] = fmaxf(mq[h][n & 3], fmaxf(s[4 * n + 2 * h], s[4 * n + 2 * h + 1]));
        float mx[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) mx[h] = fmaxf(fmaxf(mq[h][0], mq[h][1]), fmaxf(mq[h][2], mq[h][3]));
        const bool rescale = pf_new_max<2>(mx, m, sl2);
        float corr[2] = {1.f, 1.f};
        if (rescale) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                corr[h] = pf_ex2(m[h] - mx[h]);
                m[h] = mx[h];
                l[h] *= corr[h];
            }
        }
        // P = exp2(S * scale * log2(e) - m), in place.
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float nm = -m[h];
            float rs[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int n = 0; n < KT / 8; ++n) {
                s[4 * n + 2 * h] = pf_ex2(fmaf(s[4 * n + 2 * h], sl2, nm));
                s[4 * n + 2 * h + 1] = pf_ex2(fmaf(s[4 * n + 2 * h + 1], sl2, nm));
                // Four partial sums, for the same reason.
                rs[n & 3] += s[4 * n + 2 * h] + s[4 * n + 2 * h + 1];
            }
            l[h] += (rs[0] + rs[1]) + (rs[2] + rs[3]);
        }
        // The previous O += P V done: O and pk free again. P and the row sums are pinned
        // first, so the compiler cannot sink the exponentials below the wait.
        wg_pin<64>(s);
        wg_pin<2>(l);
        wg_wait_mma<0>();
        wg_pin<64>(o);
        wg_pin_u<KT / 4>(pk);
        // The previous tile's stage is read no more (its S and O += P V are done).
        if (PROD && it > 0 && lane == 0) {
            mb_arrive(bars + 8 * (NST + pv_stage));
#pragma unroll
            for (int c = 1; c < CL; ++c) mb_arrive_remote(bars + 8 * (NST + pv_stage), (rank + c) % CL);
        }
        if (rescale) {
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int n = 0; n < HD / 8; ++n) {
                    o[4 * n + 2 * h] *= corr[h];
                    o[4 * n + 2 * h + 1] *= corr[h];
                }
        }
#pragma unroll
        for (int n = 0; n < KT / 8; ++n)
#pragma unroll
            for (int h = 0; h < 2; ++h) pk[2 * n + h] = pack_bf2(s[4 * n + 2 * h], s[4 * n + 2 * h + 1]);
        pv_stage = it % NST;
    }
    if (ntiles > 0) {
        pv(pv_stage);
        wg_wait_mma<0>();
        wg_pin<64>(o);
    }
    pf_cp_wait<0>();

#pragma unroll
    for (int h = 0; h < 2; ++h) {
        l[h] += __shfl_xor_sync(FULL_MASK, l[h], 1);
        l[h] += __shfl_xor_sync(FULL_MASK, l[h], 2);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = gr0 + 16 * warp + gid + 8 * h;
        if (r >= nrows) continue;
        pf_store_row<HD>(T, r, tig, m[h], l[h], [&](int n, int e) { return o[4 * n + 2 * h + e]; }, out, out_stride,
                         part_acc, part_ml, n_heads, total_rows);
    }
    if (MC) wg_cluster_sync();
}

// Dynamic shared memory: 1024 (alignment slack) + 32768 (Q) + 3 * 65536 bytes (3 stages of K
// and V tiles) + 6 mbarriers (the producer forms), mirrored by wg_smem in
// kernels/src/cuda/attention/names.rs. rope_pos: null when Q arrives rotated, else the positions of
// q's rows (and rope_inv the RoPE inverse frequencies): the kernel rotates Q itself
// (wg_rope_q). kmap / vmap: the layer's K and V pools as TMA maps (boxes of min(page_size, 32)
// rows x 64 dims, 128-byte swizzle; read by the producer forms only).
#define WG_KERNEL(NAME, QREG, CL, CPP)                                                                 \
    extern "C" __global__ void __launch_bounds__(CL ? WG_THREADS + 128 : WG_THREADS, 1) NAME(         \
        const bf16_t* q, int q_stride, const bf16_t* k_pool, const bf16_t* v_pool,                     \
        const int* block_tables, int max_pages, int page_size, const int* tile_info, int n_heads,      \
        int n_kv_heads, int head_dim, float scale, int split_len, bf16_t* out, int out_stride,         \
        float* part_acc, float* part_ml, int total_rows, const int* rope_pos, const float* rope_inv,  \
        const __grid_constant__ TmaMap kmap, const __grid_constant__ TmaMap vmap) {                    \
        pdl_enter();                                                                                   \
        wg_prefill_body<3, QREG, CL, CPP>(q, q_stride, k_pool, v_pool, block_tables, max_pages, page_size, \
                                     tile_info, n_heads, n_kv_heads, scale, split_len, out,           \
                                     out_stride, part_acc, part_ml, total_rows, rope_pos, rope_inv,   \
                                     &kmap, &vmap);                                                    \
    }
// The default: Q's fragments in registers.
WG_KERNEL(paged_attention_wg_d128, true, 0, false)
// Q read from shared memory by every S wgmma, timed beside it: 1.218-1.228 vs 1.205 ms per layer
// at 8K, forward 216.5-217.5 vs 214.0 ms (H200, 2026-12-04).
WG_KERNEL(paged_attention_wgs_d128, false, 0, false)
// The producer forms: alone (GQA group 1) and in clusters of 2 (the default where the page size
// allows; clusters of 4 timed slower on the H100, 2026-12-06: 8K alone 1.107 vs 0.918 ms).
WG_KERNEL(paged_attention_wgp_d128, true, 1, false)
WG_KERNEL(paged_attention_wgc_d128, true, 2, false)
// The producer form copying by cp.async: page sizes the TMA boxes do not fit.
WG_KERNEL(paged_attention_wgq_d128, true, 1, true)
