// The batch-1 decode layer's input norm, qkv projection (RoPE and the K/V pool write included)
// and attention in one kernel (`Gemm::qkv_attention_t1`, `Fusion::QkvAttn`): one thread-block
// cluster of QA_SPLIT blocks per KV group, the cluster of the decode2 register attention
// (attention_decode2.cu) with the qkv rows of its group spread over it. Each block streams its
// share of the group's q, k and v weight rows (before the PDL wait: the weights are constant),
// stages the input RMSNorm of the residual as the qkv GEMV does (gemv_stage.cuh), folds its rows
// in the GEMV's order, and pushes the bf16 sums to every block of the cluster with st.async; each
// block then applies RoPE to the group's q and k, writes its own rows into the qkv row and the
// pools, and runs the register attention's fold and cluster merge on its share of the keys (the
// new key and value from shared memory, every older one loaded before the PDL wait). So the
// attention's launch, its wait for the qkv grid and q's round trip through L2 leave the
// batch-1 chain. Bit for bit the qkv GEMV + attention it replaces: the same sums in the same
// order, the same RoPE, the same key shares and merges (warps DEC2_WARPS.. only stream weights).

#define QA_SPLIT 16  // blocks per cluster: the register attention's largest cluster

// The rows of one KV group and how a block's share of them is laid out: QR q rows, then KR k rows
// and KR v rows; in the group's vector of (G + 2) * HD values, q heads first, then k, then v.
// NW warps per block, PER_WARP rows each.
template <int G, int HD, int NW>
struct QaRows {
    static constexpr int QR = G * HD / QA_SPLIT, KR = HD / QA_SPLIT;
    static constexpr int ROWS = QR + 2 * KR, PER_WARP = ROWS / NW, GROUP = (G + 2) * HD;
    static_assert(ROWS % NW == 0 && QR % 2 == 0 && KR % 2 == 0, "row split");
    // Index in the group's vector of block `rank`'s row j.
    static __device__ __forceinline__ int gidx(int rank, int j) {
        return j < QR ? rank * QR + j : G * HD + (j < QR + KR ? 0 : HD - KR) + rank * KR + (j - QR);
    }
    // Weight row (= column of the qkv row) of group g's value i.
    static __device__ __forceinline__ int wrow(int g, int i, int nq, int nk) {
        return i < G * HD ? g * G * HD + i
               : i < (G + 1) * HD ? nq * HD + g * HD + (i - G * HD)
                                  : (nq + nk) * HD + g * HD + (i - (G + 1) * HD);
    }
};

#define QA_PARAMS                                                                                  \
    const bf16_t *y, const bf16_t *resid, const bf16_t *norm_w, float eps, const bf16_t *w,        \
        bf16_t *qkv, int nq, int nk, const int *pos, const float *inv_freq, bf16_t *k_pool,        \
        bf16_t *v_pool, const int *slots, const int *block_tables, int max_pages, int page_size, \
        const int *tile_info, float scale, bf16_t *out

// A TMA bulk copy of `bytes` (a multiple of 16) from global src to shared dst (16-byte aligned),
// counted on the mbarrier at `bar`; with the GEMVs' evict-first policy where they use it.
__device__ __forceinline__ void qa_bulk(u32 dst, const void* src, u32 bytes, u32 bar, u64 pol) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#if GEMV_EVICT_FIRST
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;\n" ::"r"(dst),
        "l"(src), "r"(bytes), "r"(bar), "l"(pol)
        : "memory");
#else
    (void)pol;
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
#endif
#endif
}

// K: the hidden size (the qkv rows' length), one whole row per warp load step. SMEM_W: the
// block's weight rows are copied into (dynamic) shared memory by three TMA bulk copies instead of
// loaded into registers (96 KB at the 1B shape, 0 registers held across the PDL wait). NW: warps
// per block (the first DEC2_WARPS run the attention, every one its share of the qkv rows).
template <int G, int HD, int K, int UNR, bool SMEM_W, int NW>
__device__ __forceinline__ void qkv_attention_body(QA_PARAMS) {
    using R = QaRows<G, HD, NW>;
    static_assert(NW >= DEC2_WARPS, "the attention's warps");
    constexpr int K8 = K / 8, WU = K8 / 32;  // 16-byte weight loads per lane and row
    constexpr int LPK = HD / 8, KPS = 32 / LPK, STEP = KPS * UNR, STRIDE = DEC2_WARPS * STEP;
    static_assert(K8 % 32 == 0 && K % 2048 == 0, "whole rows per step; the staged norm's width");
    __shared__ __align__(16) uint4 xs[K8];
    __shared__ __align__(16) bf16_t mine[R::ROWS];   // this block's sums
    __shared__ __align__(16) bf16_t grp[R::GROUP];   // the group's, pushed by every block
    __shared__ __align__(16) bf16_t rot[R::GROUP];   // after RoPE
    __shared__ __align__(8) unsigned long long qbar, wbar;
    DYN_SHARED(uint4, wsm);  // SMEM_W: the block's ROWS weight rows
    const int g = blockIdx.y, rank = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 qbar_a = (u32)__cvta_generic_to_shared(&qbar), wbar_a = (u32)__cvta_generic_to_shared(&wbar);

    // This warp's weight rows, whole, before anything else (registers), or after the
    // mbarriers' initialisation (SMEM_W).
    const u64 pol = gemv_w_policy();
    uint4 wv[SMEM_W ? 1 : R::PER_WARP][WU];
#pragma unroll
    for (int r = 0; r < R::PER_WARP && !SMEM_W; ++r) {
        const int row = R::wrow(g, R::gidx(rank, warp * R::PER_WARP + r), nq, nk);
        const uint4* wr = (const uint4*)(w + (u64)row * K);
#pragma unroll
        for (int u = 0; u < WU; ++u) wv[r][u] = gemv_ldw(wr + lane + 32 * u, pol);
    }
    // The mbarriers (the qkv exchange's, the weight copies' and the merge's), published to the
    // cluster and the async proxy by dec2_cluster_start's fence and relaxed arrive.
    if (threadIdx.x == 0) {
        mb_init(qbar_a, 1);
        mb_expect_tx(qbar_a, (u32)(QA_SPLIT * R::ROWS * 2));
        if (SMEM_W) {
            mb_init(wbar_a, 1);
            mb_expect_tx(wbar_a, (u32)(R::ROWS * K * 2));
        }
    }
    const Dec2Block blk = dec2_block(tile_info, block_tables, max_pages, 0);
    dec2_cluster_start<G, HD>(QA_SPLIT);
    if (SMEM_W && threadIdx.x == 0) {
        // The q rows, the k rows and the v rows of the block are three contiguous runs.
        const u32 ws_a = (u32)__cvta_generic_to_shared(wsm);
        const int runs[3][2] = {{0, R::QR}, {R::QR, R::KR}, {R::QR + R::KR, R::KR}};
#pragma unroll
        for (int c = 0; c < 3; ++c) {
            const int row = R::wrow(g, R::gidx(rank, runs[c][0]), nq, nk);
            qa_bulk(ws_a + (u32)(runs[c][0] * K * 2), w + (u64)row * K, (u32)(runs[c][1] * K * 2), wbar_a, pol);
        }
    }
    // The register attention's key share and early loads (warps < DEC2_WARPS).
    const int n = blk.pos + 1;
    const int share = ((n + QA_SPLIT - 1) / QA_SPLIT + 15) / 16 * 16;
    const int kbeg = min(rank * share, n), kend = min(n, kbeg + share);
    const int last = blk.pos;  // the new key
    const int sub = lane / LPK, li = lane % LPK;
    const bool keys = warp < DEC2_WARPS;
    const u64 head_off = (u64)g * HD + li * 8;
    auto load = [&](uint4* kr, uint4* vr, bool* ok, int t, int below) {
#pragma unroll
        for (int u = 0; u < UNR; ++u) {
            const int key = t + u * KPS + sub;
            ok[u] = keys && key < kend;
            kr[u] = make_uint4(0, 0, 0, 0);
            vr[u] = kr[u];
            if (ok[u] && key < below) {
                const int p = key / page_size;
                const u64 off =
                    ((u64)__ldg(blk.bt + p) * page_size + (key - p * page_size)) * nk * HD + head_off;
                kr[u] = *(const uint4*)(k_pool + off);
                vr[u] = *(const uint4*)(v_pool + off);
            }
        }
    };
    uint4 kc[UNR], vc[UNR], kn[UNR], vn[UNR];
    bool okc[UNR], okn[UNR];
    int t0 = kbeg + warp * STEP;
    load(kc, vc, okc, t0, last);
    load(kn, vn, okn, t0 + STRIDE, last);
    const NormIn nin{resid, norm_w, eps};
    const uint4 nw0 = norm_w0(nin);
    pdl_enter_chain();  // the residual (and y) come from the previous kernel

    gemv_stage_norm<NW * 32>(y, nin, K, xs, nw0);
    __syncthreads();
    if (SMEM_W) mb_wait(wbar_a, 0);
    // The GEMV's fold (gemv_rows_body at one row, one step of WU loads): per row, the even
    // products into a0, the odd into a1, in x order.
    float a0[R::PER_WARP], a1[R::PER_WARP];
#pragma unroll
    for (int r = 0; r < R::PER_WARP; ++r) a0[r] = a1[r] = 0.f;
#pragma unroll
    for (int u = 0; u < WU; ++u) {
        float xf[8];
        dec2_unpack8(xs[lane + 32 * u], xf);
#pragma unroll
        for (int r = 0; r < R::PER_WARP; ++r) {
            float wf[8];
            dec2_unpack8(SMEM_W ? wsm[(warp * R::PER_WARP + r) * K8 + lane + 32 * u] : wv[SMEM_W ? 0 : r][u], wf);
#pragma unroll
            for (int e = 0; e < 8; e += 2) {
                a0[r] += wf[e] * xf[e];
                a1[r] += wf[e + 1] * xf[e + 1];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R::PER_WARP; ++r) {
        const float s = warp_sum(a0[r] + a1[r]);
        if (lane == 0) mine[warp * R::PER_WARP + r] = f2bf(s);
    }
    __syncthreads();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // Every block's mbarriers initialised before the first push to them.
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
#endif
    // Pairs of this block's sums to every block of the cluster.
    const u32 grp_a = (u32)__cvta_generic_to_shared(grp);
    for (int i = threadIdx.x; i < QA_SPLIT * R::ROWS / 2; i += blockDim.x) {
        const int dst = i / (R::ROWS / 2), j = 2 * (i % (R::ROWS / 2));
        const u32 v = *(const u32*)&mine[j];
        dec2_push(grp_a + (u32)R::gidx(rank, j) * 2, __uint_as_float(v), (u32)dst, qbar_a);
    }
    mb_wait(qbar_a, 0);
    // RoPE of the q and k heads (as the qkv GEMV's epilogue rotates each pair of sums).
    constexpr int HALF = HD / 2;
    const int p0 = pos[0];
    for (int i = threadIdx.x; i < (G + 1) * HALF; i += blockDim.x) {
        const int h = i / HALF, c = i - h * HALF, b = h * HD + c;
        float sn, cs;
        sincosf((float)p0 * inv_freq[c], &sn, &cs);
        rope_rot(bf2f(grp[b]), bf2f(grp[b + HALF]), cs, sn, &rot[b], &rot[b + HALF]);
    }
    for (int i = threadIdx.x; i < HD; i += blockDim.x) rot[(G + 1) * HD + i] = grp[(G + 1) * HD + i];
    __syncthreads();
    // This block's rows into the qkv row and, for k and v, the token's pool slot.
    const long long slot = slots[0];
    for (int j = threadIdx.x; j < R::ROWS; j += blockDim.x) {
        const int i = R::gidx(rank, j);
        qkv[R::wrow(g, i, nq, nk)] = rot[i];
        if (i >= G * HD && slot >= 0) {
            const bool is_k = i < (G + 1) * HD;
            bf16_t* pr = (is_k ? k_pool : v_pool) + (u64)slot * (nk * HD) + (u64)g * HD;
            pr[i - (is_k ? G : G + 1) * HD] = rot[i];
        }
    }

    // The register attention (dec2_regs_cluster_body) on this block's key share, q and the new
    // key and value from `rot`.
    float qf[G][8], m[G], l[G], acc[G][8];
#pragma unroll
    for (int r = 0; r < G; ++r) {
        dec2_unpack8(*(const uint4*)&rot[r * HD + li * 8], qf[r]);
#pragma unroll
        for (int i = 0; i < 8; ++i) qf[r][i] *= scale * DEC2_LOG2E;
        m[r] = NEG_BIG;
        l[r] = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[r][i] = 0.f;
    }
    auto load_pos = [&](uint4* kr, uint4* vr, const bool* ok, int t) {
#pragma unroll
        for (int u = 0; u < UNR; ++u) {
            if (ok[u] && t + u * KPS + sub == last) {
                kr[u] = *(const uint4*)&rot[G * HD + li * 8];
                vr[u] = *(const uint4*)&rot[(G + 1) * HD + li * 8];
            }
        }
    };
    if (keys) {
        load_pos(kc, vc, okc, t0);
        load_pos(kn, vn, okn, t0 + STRIDE);
        for (; t0 < kend; t0 += STRIDE) {
            dec2_chunk<G, HD, UNR>(qf, kc, vc, okc, m, l, acc);
#pragma unroll
            for (int u = 0; u < UNR; ++u) {
                kc[u] = kn[u];
                vc[u] = vn[u];
                okc[u] = okn[u];
            }
            if (t0 + 2 * STRIDE < kend) {
                load(kn, vn, okn, t0 + 2 * STRIDE, kend);
            } else {
#pragma unroll
                for (int u = 0; u < UNR; ++u) okn[u] = false;
            }
        }
    }
    dec2_finish_cluster<G, HD, true>(m, l, acc, g, blk.row, rank, QA_SPLIT, out, nq * HD);
}

// Llama-3.2-1B's shape: groups of 4 query heads of 64 dims, hidden 2048 (24 qkv rows per block);
// the weight rows in registers (8 warps), and in shared memory (96 KB of dynamic shared memory;
// 8 warps, and 4: the attention's own, 6 rows each, fewer registers held per SM).
#define QA_ARGS                                                                                   \
    y, resid, norm_w, eps, w, qkv, nq, nk, pos, inv_freq, k_pool, v_pool, slots, block_tables, \
        max_pages, page_size, tile_info, scale, out
extern "C" __global__ void __launch_bounds__(256, 1) qkv_attention_g4_d64_k2048(QA_PARAMS) {
    qkv_attention_body<4, 64, 2048, 2, false, 8>(QA_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 1) qkv_attention_g4_d64_k2048_smem(QA_PARAMS) {
    qkv_attention_body<4, 64, 2048, 2, true, 8>(QA_ARGS);
}
extern "C" __global__ void __launch_bounds__(128, 1) qkv_attention_g4_d64_k2048_smem4(QA_PARAMS) {
    qkv_attention_body<4, 64, 2048, 2, true, 4>(QA_ARGS);
}
