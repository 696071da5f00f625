// The gate_up projection with SiLU * up in its epilogue, on Hopper's tensor cores (sm_90a):
// act [m, inter] = silu(x gate^T) * (x up^T) for x [m, k] bf16 and the gate_up weight w
// [2 inter, k] bf16 (gate rows first, as the model stores it), f32 accumulation. One kernel
// instead of a cuBLAS GEMM into gu [m, 2 inter] and silu_mul: the 2 inter-wide intermediate is
// never written or read back (at 8K tokens of Llama-3.1-8B, 705 MB per layer).
//
// Persistent, in clusters of 2 blocks (one block per SM): a cluster walks pairs of output tiles
// that share their weight rows (block rank r takes row tile 2 p + r), 128 rows x 128 outputs each
// (gate rows n0.. and the up rows inter + n0.. of w: 256 weight rows), in groups of 8 pairs so the
// clusters of a wave share x and w slices in L2. 384 threads = 3 warpgroups: warpgroup 0's first
// thread is the producer: per 64-input stage, a TMA load of its block's x tile [128][64] and a
// multicast one of half the weight rows (rank 0 the gate rows, rank 1 the up rows) into both
// blocks (so each block reads 32 of the stage's 48 KB from L2), GW_ST shared stages in the
// 128-byte swizzle, each stage's `full` mbarrier counting the bytes. Warpgroups 1 and 2 consume
// (rows 64 (wg - 1) .. of the tile: 4 x wgmma m64n256k16 per stage, one group in flight); a
// stage is handed back through the `empty` mbarrier of both blocks (a peer's multicast writes
// it) once the wgmmas that read it are done. The epilogue rounds gate and up to bf16 (as the
// GEMM would have written them) and stores bf16(silu(gate) * up) (gw_silu: a fast SiLU); the
// producer meanwhile loads the next tile's stages.
#define GW_THREADS 384
#define GW_BM 128
#define GW_BN 128
#define GW_BK 64
#define GW_ST 4
#define GW_GROUP 8
#define GW_A_BYTES (GW_BM * 128)
#define GW_B_BYTES (2 * GW_BN * 128)
#define GW_STAGE (GW_A_BYTES + GW_B_BYTES)

// SiLU in a few instructions (ex2 and a fast reciprocal; silu(g) -> 0 as g -> -inf): the
// epilogue runs once per tile while the tensor cores wait, and silu_times' IEEE division and
// accurate exp made it ~9 % of the kernel (55 instructions per output on the H200's SASS). Its
// bf16 result differs from silu_mul's by at most one bf16 ulp, rarely.
__device__ __forceinline__ float gw_silu(float g) { return __fdividef(g, 1.f + __expf(-g)); }

// Pair t of the grouped order: pair of row tiles mi, output tile ni.
__device__ __forceinline__ void gw_tile(int t, int tm, int tn, int& mi, int& ni) {
    const int per = GW_GROUP * tn, grp = t / per, first = grp * GW_GROUP;
    const int gm = min(GW_GROUP, tm - first), loc = t - grp * per;
    mi = first + loc % gm;
    ni = loc / gm;
}

// CL blocks per cluster (1: no cluster, each block loads its whole weight tile). GATE: the
// gate_up form (n = inter outputs; a tile's weight rows are gate rows n0.. and up rows
// inter + n0..); else the plain GEMM y [m, n] = x w^T (w [n, k], n a multiple of 256; a tile is
// 256 consecutive weight rows and as many outputs).
template <int CL, bool GATE>
__device__ __forceinline__ void gw_gemm(const TmaMap* xmap, const TmaMap* wmap, bf16_t* act, int m, int inter,
                                        int k) {
    extern __shared__ unsigned char gw_smem[];
    const u32 base = ((u32)__cvta_generic_to_shared(gw_smem) + 1023u) & ~1023u;
    const u32 full = base + GW_ST * GW_STAGE, empty = full + 8 * GW_ST;
    const int tid = threadIdx.x, wg = tid >> 7;
    const u32 rank = CL > 1 ? cluster_rank() : 0;
    const int tm2 = (m + CL * GW_BM - 1) / (CL * GW_BM), tn = inter / (GATE ? GW_BN : 2 * GW_BN);
    const int pairs = tm2 * tn;
    // The first weight row of box h (of 2, GW_BN rows each) of output tile ni.
    auto wrow = [&](int ni, int h) { return GATE ? h * inter + ni * GW_BN : (2 * ni + h) * GW_BN; };
    const int nk = (k + GW_BK - 1) / GW_BK;
    const int cl = blockIdx.x / CL, ncl = gridDim.x / CL;
    if (tid == 0) {
        for (int s = 0; s < GW_ST; ++s) {
            mb_init(full + 8 * s, 1);
            mb_init(empty + 8 * s, 8 * CL);  // the 8 consumer warps of every block
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    // Both blocks' barriers exist before either multicasts into the other.
    if (CL > 1)
        cluster_sync();
    else
        __syncthreads();
    pdl_enter();
    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (tid == 0) {
            int it = 0;
            for (int p = cl; p < pairs; p += ncl) {
                int mp, ni;
                gw_tile(p, tm2, tn, mp, ni);
                const int mi = CL * mp + (int)rank;
                for (int kk = 0; kk < nk; ++kk, ++it) {
                    const int s = it % GW_ST;
                    mb_wait(empty + 8 * s, ((it / GW_ST) & 1) ^ 1);
                    const u32 a = base + s * GW_STAGE, b = a + GW_A_BYTES, bar = full + 8 * s;
                    mb_expect_tx(bar, GW_STAGE);
                    tma_load_2d(a, xmap, kk * GW_BK, mi * GW_BM, bar);
                    if (CL > 1) {
                        tma_load_2d_mc(b + rank * GW_BN * 128, wmap, kk * GW_BK, wrow(ni, rank), bar, 3);
                    } else {
                        tma_load_2d(b, wmap, kk * GW_BK, wrow(ni, 0), bar);
                        tma_load_2d(b + GW_BN * 128, wmap, kk * GW_BK, wrow(ni, 1), bar);
                    }
                }
            }
        }
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
        const int c = wg - 1, warp = (tid >> 5) & 3, lane = tid & 31, gid = lane >> 2, tig = lane & 3;
        // Hands stage s back to both blocks' producers.
        auto release = [&](int s) {
            if (lane == 0) {
                if (CL > 1) {
                    mb_arrive_cluster(empty + 8 * s, 0);
                    mb_arrive_cluster(empty + 8 * s, 1);
                } else {
                    mb_arrive(empty + 8 * s);
                }
            }
        };
        int it = 0;
        for (int p = cl; p < pairs; p += ncl) {
            int mp, ni;
            gw_tile(p, tm2, tn, mp, ni);
            const int mi = CL * mp + (int)rank;
            // Per tile, so no accumulator value lives across tiles: the epilogue's bit operations
            // would otherwise turn the loop-carried registers into integers, and the moves between
            // the two kinds, reading registers a wgmma in flight writes, make ptxas wait for it.
            float d[128];
#pragma unroll
            for (int i = 0; i < 128; ++i) d[i] = 0.f;
            for (int kk = 0; kk < nk; ++kk, ++it) {
                const int s = it % GW_ST;
                mb_wait(full + 8 * s, (it / GW_ST) & 1);
                const u32 a = base + s * GW_STAGE + c * 64 * 128, b = base + s * GW_STAGE + GW_A_BYTES;
                const u64 da = wg_desc(a, 16, 1024), db = wg_desc(b, 16, 1024);
                wg_fence();
#pragma unroll
                for (int j = 0; j < GW_BK / 16; ++j) wg_mma_ss256(d, da + 2 * j, db + 2 * j, kk > 0 || j > 0);
                wg_commit_mma();
                // The previous stage's wgmmas are done: hand it back.
                wg_wait_mma<1>();
                if (kk > 0) release((it + GW_ST - 1) % GW_ST);
            }
            wg_wait_mma<0>();
            wg_pin<128>(d);
            release((it + GW_ST - 1) % GW_ST);
            // This thread holds rows r0 and r0 + 8, outputs 8 j + 2 tig (+1) of the tile's 256 weight
            // rows: with GATE, gate (j < 16) and up (j + 16).
            const int r0 = mi * GW_BM + 64 * c + 16 * warp + gid;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = r0 + 8 * h;
                if (r >= m) continue;
                if (GATE) {
                    bf16_t* out = act + (u64)r * inter + ni * GW_BN + 2 * tig;
#pragma unroll
                    for (int j = 0; j < 16; ++j) {
                        const u32 g = pack_bf2(d[4 * j + 2 * h], d[4 * j + 2 * h + 1]);
                        const u32 u = pack_bf2(d[4 * (j + 16) + 2 * h], d[4 * (j + 16) + 2 * h + 1]);
                        *(u32*)(out + 8 * j) = pack_bf2(gw_silu(bf_lo(g)) * bf_lo(u), gw_silu(bf_hi(g)) * bf_hi(u));
                    }
                } else {
                    bf16_t* out = act + (u64)r * inter + ni * 2 * GW_BN + 2 * tig;
#pragma unroll
                    for (int j = 0; j < 32; ++j) *(u32*)(out + 8 * j) = pack_bf2(d[4 * j + 2 * h], d[4 * j + 2 * h + 1]);
                }
            }
        }
    }
    // Neither block leaves while the other may still arrive on its barriers.
    if (CL > 1) cluster_sync();
}

// Dynamic shared memory: 1024 (alignment slack) + GW_ST * GW_STAGE + the 2 GW_ST mbarriers,
// mirrored by kernels/src/cuda/gemm_wg.rs. The default is launched in clusters of 2 along x;
// `_solo` (no cluster, every block loads its whole weight tile) is kept for A/B timing.
// The plain GEMMs take y [m, n] for act and n for inter.
#define GW_KERNEL(NAME, CL, GATE)                                                                                \
    extern "C" __global__ void __launch_bounds__(GW_THREADS, 1)                                                 \
        NAME(const __grid_constant__ TmaMap xmap, const __grid_constant__ TmaMap wmap, bf16_t* act, int m,      \
             int inter, int k) {                                                                                \
        gw_gemm<CL, GATE>(&xmap, &wmap, act, m, inter, k);                                                      \
    }
GW_KERNEL(gemm_gate_silu_wg, 2, true)
GW_KERNEL(gemm_gate_silu_wg_solo, 1, true)
GW_KERNEL(gemm_bf16_wg, 2, false)
GW_KERNEL(gemm_bf16_wg_solo, 1, false)
