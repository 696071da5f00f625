// Few-row GEMVs on the tensor cores (decode batches of 3..8 rows; appended to gemv.cu's program).
//
// The few-row kernels of gemv.cu fold every weight load into each x row's sums with FMAs: at 4
// and 8 rows that is 4-8 shared-memory reads of x and 32-64 FMAs per 16-byte weight load, more
// than the SM issues at the weight stream's rate (slower than cuBLASLt from 4 rows). Here the
// product runs as mma.sync m16n8k16 with the weights as A (16 weight rows) and x as B (its rows
// are the mma's n = 8 columns; rows past `rows` are zero): per 16-byte weight load per lane, two
// mma instructions serve all 8 rows.
//
// Fragment layout without shuffles: the mma sums over its 16 k, so any k order serves as long as
// A and B use the same one. Lane (g = lane / 4, q = lane % 4) loads 8 consecutive k of weight
// rows g and g + 8 and of x row g, at k 8q..8q+7 of each 32-k chunk; pairs 0-1 and 2-3 are its
// k {2q, 2q+1} and {2q+8, 2q+9} of the first mma, pairs 4-5 and 6-7 those of the second.
//
// The k range is split in 128-k steps over the warps of a tile, and their partial accumulators
// are summed in warp order through shared memory (deterministic; the sum order differs from the
// single-row kernels', so the results are not theirs bit for bit). R = 2 pairs weight rows as gemv.cu's
// R = 2 bodies do: tile row i < 8 is wrow(base + i, 0) and tile row 8 + i is wrow(base + i, 1),
// so one lane holds both sums of a pair (the SiLU of gate times up, a RoPE pair) for its x rows
// 2q and 2q + 1. The input RMSNorm is staged as in gemv.cu, only x's `rows` rows, at a row
// stride of k + 32 bf16 (shared-memory banks spread over the 8 rows).
#define MMA_GEMV_WARPS 8
#define MMA_GEMV_CH 4  // 32-k chunks per step

// Stages x rows t < rows at xs + t * xs8 (uint4 units): row t of x ([rows, k]), or the input
// RMSNorm of (x + resid) row t (nin.w set; gemv_stage_norm_rows, so bit for bit rmsnorm's
// output; nw0 the norm weight's first chunk of this thread, loaded before the PDL wait).
__device__ __forceinline__ void gemv_mma_stage(const bf16_t* x, int rows, int k, const NormIn& nin, uint4* xs,
                                               int xs8, uint4 nw0) {
    if (nin.w) gemv_stage_norm_rows(x, nin, k, rows, rows, xs, xs8, nw0);
    else gemv_stage_copy(x, k, rows, rows, k, xs, xs8);
    __syncthreads();
}

// n outputs (R = 2: pairs) of `rows` <= 8 rows of x, k % 32 == 0; epi(out, t, sums[R]) for every
// out < n and t < rows, called once each. Persistent: any grid of 256-thread blocks (gemm.rs:
// as many as are resident at once), dynamic shared memory rows * (k + 32) bf16. Each block
// stages x once, then takes groups of tiles (group i, i + gridDim.x, ...): a tile is 16 weight
// rows, S warps split its k range (S = 8 or the 128-k steps there are, a power of two), so a
// group is 8 / S tiles. A warp's (group, step) items run as one stream with the next item's
// loads in flight while one is folded, across group boundaries too; after its last step of a
// group each warp leaves its sums in shared memory and the group's S partials are added in warp
// order.
template <int R, class WRow, class Epi>
__device__ __forceinline__ void gemv_mma_body(const bf16_t* x, int rows, const bf16_t* w, int n, int k, WRow wrow,
                                              Epi epi, NormIn nin = NormIn{nullptr, nullptr, 0.f}) {
    constexpr int PER = 16 / R;  // outputs per tile
    constexpr int NW = MMA_GEMV_WARPS, CH = MMA_GEMV_CH;
    DYN_SHARED(uint4, xs);
    __shared__ float red[NW][32][4];
    const int k8 = k / 8, xs8 = k8 + 4;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int nchunk = k8 / 4, nstep = (nchunk + CH - 1) / CH;
    const int S = nstep >= 8 ? 8 : nstep >= 4 ? 4 : nstep >= 2 ? 2 : 1, G = NW / S;
    const int slot = warp / S, part = warp % S;
    const int ngroups = ((n + PER - 1) / PER + G - 1) / G;
    // Loads item (tile, step s): weight rows g and g + 8 of the tile for this lane (outputs
    // past n read row n - 1's).
    auto load = [&](uint4 (*a)[2], int tile, int s) {
        const int out0 = tile * PER + g, out1 = R == 1 ? out0 + 8 : out0;
        const uint4* w0 = (const uint4*)(w + (u64)wrow(min(out0, n - 1), 0) * k) + q;
        const uint4* w1 = (const uint4*)(w + (u64)wrow(min(out1, n - 1), R - 1) * k) + q;
#pragma unroll
        for (int j = 0; j < CH; ++j) {
            const int c = s * CH + j;
            if (c < nchunk) {
                a[j][0] = __ldg(w0 + 4 * c);
                a[j][1] = __ldg(w1 + 4 * c);
            }
        }
    };
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    auto fold = [&](uint4 (*a)[2], int s) {
#pragma unroll
        for (int j = 0; j < CH; ++j) {
            const int c = s * CH + j;
            if (c < nchunk) {
                const uint4 b = g < rows ? xs[g * xs8 + 4 * c + q] : make_uint4(0, 0, 0, 0);
                const u32 lo[4] = {a[j][0].x, a[j][1].x, a[j][0].y, a[j][1].y};
                const u32 hi[4] = {a[j][0].z, a[j][1].z, a[j][0].w, a[j][1].w};
                mma_bf16_16816(acc, lo, b.x, b.y);
                mma_bf16_16816(acc, hi, b.z, b.w);
            }
        }
    };
    // This warp's items: (group it, step s), s = part, part + S, ... < nstep per group; (nit,
    // ns) is the item whose loads are in flight.
    int it = blockIdx.x, s = part, nit = it, ns = part;
    auto advance = [&]() {
        ns += S;
        if (ns >= nstep) {
            ns = part;
            nit += gridDim.x;
        }
    };
    uint4 an[CH][2];
    // The weights are constant: the first item goes out before waiting for x.
    if (nit < ngroups) load(an, nit * G + slot, ns);
    const uint4 nw0 = norm_w0(nin);
    pdl_enter();
    gemv_mma_stage(x, rows, k, nin, xs, xs8, nw0);
    advance();
    while (it < ngroups) {
        uint4 ac[CH][2];
#pragma unroll
        for (int j = 0; j < CH; ++j) ac[j][0] = an[j][0], ac[j][1] = an[j][1];
        if (nit < ngroups) load(an, nit * G + slot, ns);
        fold(ac, s);
        advance();
        if (s + S < nstep) {
            s += S;
            continue;
        }
        // The group's last step: sum its S partials in warp order, run the epilogue.
#pragma unroll
        for (int i = 0; i < 4; ++i) red[warp][lane][i] = acc[i];
        __syncthreads();
        if (part == 0) {
            float c[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                c[i] = red[warp][lane][i];
                for (int v = 1; v < S; ++v) c[i] += red[warp + v][lane][i];
            }
            const int out0 = (it * G + slot) * PER + g, out1 = R == 1 ? out0 + 8 : out0;
            // c[0], c[1]: tile row g, x rows 2q and 2q + 1; c[2], c[3]: tile row g + 8.
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int t = 2 * q + h;
                if (t >= rows) continue;
                if (R == 1) {
                    if (out0 < n) epi(out0, t, &c[h]);
                    if (out1 < n) epi(out1, t, &c[2 + h]);
                } else if (out0 < n) {
                    const float sums[2] = {c[h], c[2 + h]};
                    epi(out0, t, sums);
                }
            }
        }
        __syncthreads();  // red is free for the next group
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[i] = 0.f;
        s = part;
        it += gridDim.x;
    }
}

// The three forms of gemv.cu's few-row kernels (their arguments, their epilogues; `rows` <= 8).
extern "C" __global__ void __launch_bounds__(256)
    gemv_bf16_mma(const bf16_t* x, const bf16_t* w, void* y, int rows, int n, int k, int y_f32) {
    gemv_mma_body<1>(x, rows, w, n, k, [](int row, int) { return row; }, PlainEpi{y, n, y_f32});
}
extern "C" __global__ void __launch_bounds__(256)
    gemv_bf16_mma_gate(const bf16_t* x, const bf16_t* w, void* y, int rows, int n, int k, int) {
    const GateEpi e{(bf16_t*)y, n};
    gemv_mma_body<2>(x, rows, w, n, k, [&](int row, int r) { return e.wrow(row, r); }, e);
}
extern "C" __global__ void __launch_bounds__(256)
    gemv_bf16_mma_qkv_rope(const bf16_t* x, const bf16_t* w, bf16_t* y, int rows, int n, int k, int nq, int nk,
                           int hd, const int* pos, const float* inv_freq, bf16_t* k_pool, bf16_t* v_pool,
                           const int* slots, const bf16_t* resid, const bf16_t* norm_w, float eps) {
    const QkvRopeEpi e{y, n, nq, nk, hd, pos, inv_freq, k_pool, v_pool, slots};
    gemv_mma_body<2>(x, rows, w, n, k, [&](int row, int r) { return e.wrow(row, r); }, e,
                     NormIn{resid, norm_w, eps});
}
