// The gate_up projection with SiLU * up in its epilogue, on Hopper's tensor cores (sm_90a):
// act [m, inter] = silu(x gate^T) * (x up^T) for x [m, k] bf16 and the gate_up weight w
// [2 inter, k] bf16 (gate rows first, as the model stores it), f32 accumulation. One kernel
// instead of a cuBLAS GEMM into gu [m, 2 inter] and silu_mul: the 2 inter-wide intermediate is
// never written or read back (at 8K tokens of Llama-3.1-8B, 705 MB per layer).
//
// Persistent (one block per SM): a block walks output tiles of 128 rows x 128 outputs (gate
// rows n0.. and the up rows inter + n0.. of w: 256 weight rows), in groups of 8 row tiles so the
// blocks of a wave share x and w slices in L2. 384 threads = 3 warpgroups: warpgroup 0's first
// thread is the producer: per 64-input stage, TMA loads of the x tile [128][64] and the 256
// weight rows [256][64] (48 KB) into GW_ST shared stages in the 128-byte swizzle, each stage's
// `full` mbarrier counting the bytes. Warpgroups 1 and 2 consume (rows 64 (wg - 1) .. of the
// tile: 4 x wgmma m64n256k16 per stage, one group in flight); a stage is handed back through its
// `empty` mbarrier once the wgmmas that read it are done. The epilogue rounds gate and up to
// bf16 (as the GEMM would have written them) and stores bf16(silu(gate) * up) (gw_silu: a fast
// SiLU); the producer meanwhile loads the next tile's stages.
// (A form in clusters of 2 sharing the weight tile by TMA multicast, and one without the SiLU
// as a plain GEMM, timed the same or slower on the H200, and a ping-pong form with the
// warpgroups on 128 x 64-output tiles of their own x1.35 slower on the H100; all removed:
// docs/perf.md.)
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

// Tile t of the grouped order: row tile mi, output tile ni.
__device__ __forceinline__ void gw_tile(int t, int tm, int tn, int& mi, int& ni) {
    const int per = GW_GROUP * tn, grp = t / per, first = grp * GW_GROUP;
    const int gm = min(GW_GROUP, tm - first), loc = t - grp * per;
    mi = first + loc % gm;
    ni = loc / gm;
}

// Dynamic shared memory: 1024 (alignment slack) + GW_ST * GW_STAGE + the 2 GW_ST mbarriers,
// mirrored by kernels/src/cuda/gemm_wg.rs.
extern "C" __global__ void __launch_bounds__(GW_THREADS, 1)
    gemm_gate_silu_wg(const __grid_constant__ TmaMap xmap, const __grid_constant__ TmaMap wmap, bf16_t* act,
                      int m, int inter, int k) {
    extern __shared__ unsigned char gw_smem[];
    const u32 base = ((u32)__cvta_generic_to_shared(gw_smem) + 1023u) & ~1023u;
    const u32 full = base + GW_ST * GW_STAGE, empty = full + 8 * GW_ST;
    const int tid = threadIdx.x, wg = tid >> 7;
    const int tm = (m + GW_BM - 1) / GW_BM, tn = inter / GW_BN, tiles = tm * tn;
    const int nk = (k + GW_BK - 1) / GW_BK;
    if (tid == 0) {
        for (int s = 0; s < GW_ST; ++s) {
            mb_init(full + 8 * s, 1);
            mb_init(empty + 8 * s, 8);  // the 8 consumer warps
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    pdl_enter();
    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (tid != 0) return;
        int it = 0;
        for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
            int mi, ni;
            gw_tile(t, tm, tn, mi, ni);
            for (int kk = 0; kk < nk; ++kk, ++it) {
                const int s = it % GW_ST;
                mb_wait(empty + 8 * s, ((it / GW_ST) & 1) ^ 1);
                const u32 a = base + s * GW_STAGE, b = a + GW_A_BYTES, bar = full + 8 * s;
                mb_expect_tx(bar, GW_STAGE);
                tma_load_2d(a, &xmap, kk * GW_BK, mi * GW_BM, bar);
                tma_load_2d(b, &wmap, kk * GW_BK, ni * GW_BN, bar);
                tma_load_2d(b + GW_BN * 128, &wmap, kk * GW_BK, inter + ni * GW_BN, bar);
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const int c = wg - 1, warp = (tid >> 5) & 3, lane = tid & 31, gid = lane >> 2, tig = lane & 3;
    int it = 0;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
        int mi, ni;
        gw_tile(t, tm, tn, mi, ni);
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
            if (kk > 0 && lane == 0) mb_arrive(empty + 8 * ((it + GW_ST - 1) % GW_ST));
        }
        wg_wait_mma<0>();
        wg_pin<128>(d);
        if (lane == 0) mb_arrive(empty + 8 * ((it + GW_ST - 1) % GW_ST));
        // This thread holds rows r0 and r0 + 8, outputs 8 j + 2 tig (+1) of gate (j < 16) and up
        // (j + 16).
        const int r0 = mi * GW_BM + 64 * c + 16 * warp + gid;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = r0 + 8 * h;
            if (r >= m) continue;
            bf16_t* out = act + (u64)r * inter + ni * GW_BN + 2 * tig;
#pragma unroll
            for (int j = 0; j < 16; ++j) {
                const u32 g = pack_bf2(d[4 * j + 2 * h], d[4 * j + 2 * h + 1]);
                const u32 u = pack_bf2(d[4 * (j + 16) + 2 * h], d[4 * (j + 16) + 2 * h + 1]);
                *(u32*)(out + 8 * j) = pack_bf2(gw_silu(bf_lo(g)) * bf_lo(u), gw_silu(bf_hi(g)) * bf_hi(u));
            }
        }
    }
}
