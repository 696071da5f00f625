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
// streams of a warp merge by shuffle and the 4 warps through shared memory (dec2_block_merge),
// and an output step takes the block's state: the split form writes the output row or its split
// partials, the cluster form merges the cluster's blocks in distributed shared memory.

#define DEC2_WARPS 4
// Scores are kept in log2 units (queries pre-scaled by log2(e)), so every softmax exponential is
// one exp2f (the hardware's ex2) instead of expf's range reduction; split partials are written back
// in natural-log units, as attention_combine and the other attention kernels use.
#define DEC2_LOG2E 1.4426950408889634f
#define DEC2_LN2 0.6931471805599453f

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
        float f0 = exp2f(m[r] - mx), f1 = exp2f(mo[r] - mx);
        l[r] = l[r] * f0 + lo[r] * f1;
#pragma unroll
        for (int i = 0; i < 8; ++i) a[r][i] = a[r][i] * f0 + ao[r][i] * f1;
        m[r] = mx;
    }
}

// Issues the K and V loads of UNR steps starting at key t0 (zeros past kend).
template <int HD, int UNR>
__device__ __forceinline__ void dec2_load(const bf16_t* k_pool, const bf16_t* v_pool, const int* bt,
                                          int page_size, int n_kv_heads, u64 head_off, int t0,
                                          int sub, int kend, uint4* kr, uint4* vr, bool* ok) {
    constexpr int KPS = 32 / (HD / 8);
#pragma unroll
    for (int u = 0; u < UNR; ++u) {
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
}

// The G scores of the key whose 8 dims of this lane are `kr`: this lane's partial dot products,
// summed over the LPK lanes of the key with xor shuffles.
template <int G, int HD>
__device__ __forceinline__ void dec2_score(const float (*qf)[8], uint4 kr, float* s) {
    constexpr int LPK = HD / 8;
    float kf[8];
    dec2_unpack8(kr, kf);
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
}

// Scores UNR loaded steps against the queries and folds them into the online softmax.
template <int G, int HD, int UNR>
__device__ __forceinline__ void dec2_step(const float (*qf)[8], const uint4* kr, const uint4* vr,
                                          const bool* ok, float* m, float* l, float (*acc)[8]) {
#pragma unroll
    for (int u = 0; u < UNR; ++u) {
        float vf[8], s[G];
        dec2_score<G, HD>(qf, kr[u], s);
        dec2_unpack8(vr[u], vf);
        if (ok[u]) {
#pragma unroll
            for (int r = 0; r < G; ++r) {
                const float mx = fmaxf(m[r], s[r]);
                const float corr = exp2f(m[r] - mx), p = exp2f(s[r] - mx);
                l[r] = l[r] * corr + p;
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[r][i] = acc[r][i] * corr + p * vf[i];
                m[r] = mx;
            }
        }
    }
}

// The same fold with one softmax rescale per iteration: the scores of all UNR steps first, their
// maximum over the warp's keys (so every key stream of the warp shares the running max), then
// one correction factor per head and one exp per key (the per-key fold above needs two exps and
// a full accumulator rescale per key).
template <int G, int HD, int UNR>
__device__ __forceinline__ void dec2_chunk(const float (*qf)[8], const uint4* kr, const uint4* vr,
                                           const bool* ok, float* m, float* l, float (*acc)[8]) {
    constexpr int LPK = HD / 8;
    float s[UNR][G];
#pragma unroll
    for (int u = 0; u < UNR; ++u) dec2_score<G, HD>(qf, kr[u], s[u]);
#pragma unroll
    for (int r = 0; r < G; ++r) {
        float cm = NEG_BIG;
#pragma unroll
        for (int u = 0; u < UNR; ++u) cm = ok[u] ? fmaxf(cm, s[u][r]) : cm;
#pragma unroll
        for (int o = LPK; o < 32; o <<= 1) cm = fmaxf(cm, __shfl_xor_sync(FULL_MASK, cm, o));
        const float mx = fmaxf(m[r], cm);
        const float corr = exp2f(m[r] - mx);
        m[r] = mx;
        l[r] *= corr;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[r][i] *= corr;
    }
#pragma unroll
    for (int u = 0; u < UNR; ++u) {
        float vf[8];
        dec2_unpack8(vr[u], vf);
#pragma unroll
        for (int r = 0; r < G; ++r) {
            const float p = ok[u] ? exp2f(s[u][r] - m[r]) : 0.f;
            l[r] += p;
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[r][i] += p * vf[i];
        }
    }
}

// The parameters of every kernel here and of the bodies they run (the launchers pass them all;
// head_dim is fixed by the instantiation, and the cluster form leaves split_len and the partial
// buffers unused).
#define DEC2_PARAMS                                                                           \
    const bf16_t* q, int q_stride, const bf16_t* k_pool, const bf16_t* v_pool,              \
        const int* block_tables, int max_pages, int page_size, const int* tile_info,          \
        int n_heads, int n_kv_heads, int head_dim, float scale, int split_len, bf16_t* out,   \
        int out_stride, float* part_acc, float* part_ml, int total_rows
#define DEC2_ARGS                                                                             \
    q, q_stride, k_pool, v_pool, block_tables, max_pages, page_size, tile_info, n_heads,      \
        n_kv_heads, head_dim, scale, split_len, out, out_stride, part_acc, part_ml, total_rows

// What one decode block works on: grid x = tile (one query row of one sequence), y = KV head,
// z = split of the sequence's keys; keys [kbeg, kend) through block table `bt`.
struct Dec2Block {
    const int* bt;
    int g, split, nsplit, row, kbeg, kend, pos;
};

__device__ __forceinline__ Dec2Block dec2_block(const int* tile_info, const int* block_tables,
                                                int max_pages, int split_len) {
    const int tile = blockIdx.x;
    Dec2Block b;
    b.g = blockIdx.y;
    b.split = blockIdx.z;
    b.nsplit = gridDim.z;
    b.row = tile_info[tile * 4 + 1];
    b.bt = block_tables + (u64)tile_info[tile * 4 + 0] * max_pages;
    b.kbeg = b.split * split_len;
    b.pos = tile_info[tile * 4 + 3];
    b.kend = min(b.pos + 1, b.kbeg + split_len);
    return b;
}

// Loads this lane's 8 dims of the G scaled queries and clears the softmax state.
template <int G, int HD>
__device__ __forceinline__ void dec2_start(const bf16_t* q, int q_stride, int row, int g, int li,
                                           float scale, float (*qf)[8], float* m, float* l,
                                           float (*acc)[8]) {
#pragma unroll
    for (int r = 0; r < G; ++r) {
        const uint4 raw =
            *(const uint4*)(q + (u64)row * q_stride + (u64)(g * G + r) * HD + li * 8);
        dec2_unpack8(raw, qf[r]);
#pragma unroll
        for (int i = 0; i < 8; ++i) qf[r][i] *= scale * DEC2_LOG2E;
        m[r] = NEG_BIG;
        l[r] = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[r][i] = 0.f;
    }
}

// Merges n <= N softmax states (max ms(c), sum ls(c), accumulator as(c)) in the order
// c = 0, 1, ...: mx is their max, sum and a are in its scale. The warps of a block and the blocks
// of a cluster are merged with it.
template <int N, class M, class L, class A>
__device__ __forceinline__ void dec2_combine(int n, M ms, L ls, A as, float& mx, float& sum,
                                             float& a) {
    mx = NEG_BIG;
#pragma unroll
    for (int c = 0; c < N; ++c)
        if (c < n) mx = fmaxf(mx, ms(c));
    sum = 0.f;
    a = 0.f;
#pragma unroll
    for (int c = 0; c < N; ++c) {
        if (c < n) {
            const float f = exp2f(ms(c) - mx);
            sum += ls(c) * f;
            a += as(c) * f;
        }
    }
}

// Merges the KPS key streams of each warp (lanes li, li + LPK, ...) by shuffle and the warps
// through red_m / red_l / red_acc, then hands the block's state of each output element (head r
// of the group, dim d) to the output step, out(r, d, max, sum, acc): Dec2SplitOut or
// Dec2ClusterOut. (The shared arrays are the callers' and the output steps functor types, not
// lambdas: otherwise NVRTC places them after dec2_async_body's K/V tiles and the SASS changes.)
template <int G, int HD, class Out>
__device__ __forceinline__ void dec2_block_merge(float* m, float* l, float (*acc)[8],
                                                 float (*red_m)[G], float (*red_l)[G],
                                                 float (*red_acc)[G][HD], Out out) {
    constexpr int LPK = HD / 8;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub = lane / LPK, li = lane % LPK;
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
        float mx, sum, a;
        dec2_combine<DEC2_WARPS>(
            DEC2_WARPS, [&](int w) { return red_m[w][r]; }, [&](int w) { return red_l[w][r]; },
            [&](int w) { return red_acc[w][r][d]; }, mx, sum, a);
        out(r, d, mx, sum, a);
    }
}

// Writes element d of head h of the output row: the merged accumulator over the merged sum (0
// for a row without keys).
template <int HD>
__device__ __forceinline__ void dec2_store(bf16_t* out, int out_stride, int row, int h, int d,
                                           float sum, float a) {
    out[(u64)row * out_stride + (u64)h * HD + d] = f2bf(sum > 0.f ? a / sum : 0.f);
}

// The split form's output step: the output row (one split) or this split's partials.
template <int G, int HD>
struct Dec2SplitOut {
    int g, row, split, nsplit;
    bf16_t* out;
    int out_stride;
    float *part_acc, *part_ml;
    int total_rows, n_heads;
    __device__ __forceinline__ void operator()(int r, int d, float mx, float sum, float a) const {
        const int h = g * G + r;
        if (nsplit == 1) {
            dec2_store<HD>(out, out_stride, row, h, d, sum, a);
        } else {
            const u64 b = ((u64)split * total_rows + row) * n_heads + h;
            // An empty split (no keys: sum 0) has weight 0 in attention_combine, which skips
            // it; only its max and sum are needed.
            if (sum > 0.f) part_acc[b * HD + d] = a;
            if (d == 0) {
                part_ml[b * 2] = mx * DEC2_LN2;  // back to natural-log units for the combine
                part_ml[b * 2 + 1] = sum;
            }
        }
    }
};

template <int G, int HD>
__device__ __forceinline__ void dec2_finish(float* m, float* l, float (*acc)[8], int g, int row,
                                            int split, int nsplit, bf16_t* out, int out_stride,
                                            float* part_acc, float* part_ml, int total_rows,
                                            int n_heads) {
    __shared__ float red_m[DEC2_WARPS][G], red_l[DEC2_WARPS][G];
    __shared__ __align__(16) float red_acc[DEC2_WARPS][G][HD];
    const Dec2SplitOut<G, HD> step{g,        row,     split,      nsplit, out, out_stride,
                                   part_acc, part_ml, total_rows, n_heads};
    dec2_block_merge<G, HD>(m, l, acc, red_m, red_l, red_acc, step);
}

// ---- Cluster form (decode batches of few rows, default mode; sm_90+). The nsplit blocks of one
// (row, KV head) are one thread-block cluster (grid z = cluster size): each takes an equal share
// of the row's keys, computed here from the row's length (so one fixed graph plan serves any
// length), and the shares are merged through distributed shared memory instead of split partials
// in global memory and an attention_combine launch. Block `rank` merges outputs
// [rank * G * HD / nsplit, ...) of the group's G heads from every block's (max, sum, acc).
#define DEC2_MAX_CLUSTER 16

// The merge is pushed, not pulled: block c stores its (max, sum, accumulator) of the elements
// block k merges straight into k's shared memory with st.async, which counts the bytes on k's
// mbarrier; k waits for all of them and merges. No cluster barrier sits between the blocks'
// merges (the pulled form needed two, the first with a GPU-scope fence), and as no block reads
// another's shared memory, none waits for the others before it exits. Every block's mbarrier is
// initialised at its start and published by a relaxed cluster arrive, whose wait comes just
// before the first push.
template <int G, int HD>
struct Dec2ClusterRx {
    float acc[G * HD];  // [source block][the `per` elements this block merges]
    float m[DEC2_MAX_CLUSTER][G], l[DEC2_MAX_CLUSTER][G];  // [source block][head of the group]
    unsigned long long bar;
};
template <int G, int HD>
__device__ __forceinline__ Dec2ClusterRx<G, HD>& dec2_rx() {
    __shared__ __align__(16) Dec2ClusterRx<G, HD> rx;
    return rx;
}

// Elements of the group's G * HD that each block merges.
template <int G, int HD>
__device__ __forceinline__ int dec2_per(int nsplit) {
    return G * HD / nsplit;  // G * HD >= 64 and nsplit <= 16, both powers of two
}
// The bytes each block receives: from each block, the per accumulators and the max and sum of
// each head they cover.
template <int G, int HD>
__device__ __forceinline__ u32 dec2_rx_bytes(int nsplit) {
    const int per = dec2_per<G, HD>(nsplit);
    const int heads = per >= HD ? per / HD : 1;
    return (u32)(nsplit * (per + 2 * heads) * 4);
}

// At the start of a cluster block (before the PDL wait): its mbarrier expects the merge's bytes,
// and the block arrives (relaxed) on the cluster barrier that dec2_finish_cluster waits on.
template <int G, int HD>
__device__ __forceinline__ void dec2_cluster_start(int nsplit) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) {
        const u32 bar = (u32)__cvta_generic_to_shared(&dec2_rx<G, HD>().bar);
        mb_init(bar, 1);
        mb_expect_tx(bar, dec2_rx_bytes<G, HD>(nsplit));
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
#endif
}

// Stores v at shared address `addr` of cluster block `rank`, counted on that block's mbarrier
// at `bar` (both addresses as in this block: every block has the same layout).
__device__ __forceinline__ void dec2_push(u32 addr, float v, u32 rank, u32 bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile(
        "{\n.reg .b32 ra, rb;\n"
        "mapa.shared::cluster.u32 ra, %0, %2;\n"
        "mapa.shared::cluster.u32 rb, %3, %2;\n"
        "st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [ra], %1, [rb];\n}\n" ::"r"(addr),
        "r"(__float_as_uint(v)), "r"(rank), "r"(bar)
        : "memory");
#endif
}

// The cluster form's output step: this block's state of element (r, d) pushed to the block that
// merges it.
template <int G, int HD>
struct Dec2ClusterOut {
    u32 acc, m, l, bar;  // shared addresses of dec2_rx's fields
    int split, per;
    __device__ __forceinline__ void operator()(int r, int d, float mx, float sum, float a) const {
        const int idx = r * HD + d, k = idx / per, i = idx - k * per;
        dec2_push(acc + (u32)(split * per + i) * 4, a, k, bar);
        if (i == 0 || d == 0) {  // the first element of head r that block k merges
            dec2_push(m + (u32)(split * G + r) * 4, mx, k, bar);
            dec2_push(l + (u32)(split * G + r) * 4, sum, k, bar);
        }
    }
};

template <int G, int HD>
__device__ __forceinline__ void dec2_finish_cluster(float* m, float* l, float (*acc)[8], int g,
                                                    int row, int rank, int nsplit, bf16_t* out,
                                                    int out_stride) {
    __shared__ float red_m[DEC2_WARPS][G], red_l[DEC2_WARPS][G];
    __shared__ __align__(16) float red_acc[DEC2_WARPS][G][HD];
    Dec2ClusterRx<G, HD>& rx = dec2_rx<G, HD>();
    const int per = dec2_per<G, HD>(nsplit);
    const Dec2ClusterOut<G, HD> step{(u32)__cvta_generic_to_shared(rx.acc),
                                     (u32)__cvta_generic_to_shared(rx.m),
                                     (u32)__cvta_generic_to_shared(rx.l),
                                     (u32)__cvta_generic_to_shared(&rx.bar),
                                     rank,
                                     per};
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // Every block's mbarrier initialised (dec2_cluster_start) before the first push to it.
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
#endif
    dec2_block_merge<G, HD>(m, l, acc, red_m, red_l, red_acc, step);
    mb_wait(step.bar, 0);  // every pushed byte counted
    for (int i = threadIdx.x; i < per; i += blockDim.x) {
        const int idx = rank * per + i, r = idx / HD, d = idx % HD;
        float mx, sum, a;
        dec2_combine<DEC2_MAX_CLUSTER>(
            nsplit, [&](int c) { return rx.m[c][r]; }, [&](int c) { return rx.l[c][r]; },
            [&](int c) { return rx.acc[c * per + i]; }, mx, sum, a);
        dec2_store<HD>(out, out_stride, row, g * G + r, d, sum, a);
    }
}

// UNR: steps of KPS keys per warp iteration. PIPE: load the next iteration's K/V before
// computing the current one (software pipelining; twice the load registers). CHUNK: fold with
// dec2_chunk instead of dec2_step.
template <int G, int HD, int UNR, bool PIPE, bool CHUNK>
__device__ __forceinline__ void dec2_body(DEC2_PARAMS) {
    constexpr int LPK = HD / 8;
    constexpr int KPS = 32 / LPK;
    constexpr int STEP = KPS * UNR;
    pdl_enter();  // under PDL: q and this token's K/V row come from the previous kernel
    const Dec2Block blk = dec2_block(tile_info, block_tables, max_pages, split_len);
    // A split past the row's keys: nothing to do (attention_combine reads only the row's splits;
    // uniform over the block, so no barrier is skipped by part of it).
    if (blk.kbeg >= blk.kend) return;
    const int g = blk.g, row = blk.row, kbeg = blk.kbeg, kend = blk.kend;
    const int* bt = blk.bt;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub = lane / LPK, li = lane % LPK;

    float qf[G][8], m[G], l[G], acc[G][8];
    dec2_start<G, HD>(q, q_stride, row, g, li, scale, qf, m, l, acc);
    const u64 head_off = (u64)g * HD + li * 8;

    const int stride = DEC2_WARPS * STEP;
    auto load = [&](int t0, uint4* kr, uint4* vr, bool* ok) {
        dec2_load<HD, UNR>(k_pool, v_pool, bt, page_size, n_kv_heads, head_off, t0, sub, kend, kr,
                           vr, ok);
    };
    auto fold = [&](const uint4* kr, const uint4* vr, const bool* ok) {
        if (CHUNK)
            dec2_chunk<G, HD, UNR>(qf, kr, vr, ok, m, l, acc);
        else
            dec2_step<G, HD, UNR>(qf, kr, vr, ok, m, l, acc);
    };
    if (PIPE) {
        uint4 kc[UNR], vc[UNR];
        bool okc[UNR];
        int t0 = kbeg + warp * STEP;
        if (t0 < kend) load(t0, kc, vc, okc);
        for (; t0 < kend; t0 += stride) {
            uint4 kn[UNR], vn[UNR];
            bool okn[UNR];
            if (t0 + stride < kend) load(t0 + stride, kn, vn, okn);
            fold(kc, vc, okc);
#pragma unroll
            for (int u = 0; u < UNR; ++u) {
                kc[u] = kn[u];
                vc[u] = vn[u];
                okc[u] = okn[u];
            }
        }
    } else {
        for (int t0 = kbeg + warp * STEP; t0 < kend; t0 += stride) {
            uint4 kr[UNR], vr[UNR];
            bool ok[UNR];
            load(t0, kr, vr, ok);
            fold(kr, vr, ok);
        }
    }

    dec2_finish<G, HD>(m, l, acc, g, row, blk.split, blk.nsplit, out, out_stride, part_acc, part_ml,
                       total_rows, n_heads);
}

// Shared-memory pipelined form (the planner's kernels): the block streams its keys in tiles of
// ATK keys whose K and V rows are copied to shared memory with cp.async, ANST - 1 tiles in flight
// ahead of the one being scored, so later loads stay outstanding while the warps compute (no
// registers held by in-flight loads, unlike dec2_body). Keys past the end are zero-filled
// (src-size 0) and masked. Per tile each warp scores ATK / DEC2_WARPS keys with the same lane
// layout and fold as dec2_chunk. Static shared memory: ANST * ATK * HD * 4 bytes of K/V tiles
// plus dec2_finish's G * HD * 16 bytes, within the 48 KiB static limit.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    const u32 d = (u32)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
                 "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <int G, int HD, int ATK, int ANST, bool CLUSTER = false>
__device__ __forceinline__ void dec2_async_body(DEC2_PARAMS) {
    constexpr int LPK = HD / 8;
    constexpr int KPS = 32 / LPK;
    constexpr int PER_WARP = ATK / DEC2_WARPS;  // keys of a tile per warp
    constexpr int UNR = PER_WARP / KPS;
    static_assert(UNR >= 1 && UNR * KPS * DEC2_WARPS == ATK, "tile shape");
    __shared__ __align__(16) uint4 ks[ANST][ATK * LPK];
    __shared__ __align__(16) uint4 vs[ANST][ATK * LPK];

    // (Called before pdl_enter: the tile list is written before the forward starts.)
    Dec2Block blk = dec2_block(tile_info, block_tables, max_pages, split_len);
    if (CLUSTER) {
        // An equal share of the row's keys per cluster block, whole tiles; blocks past the end
        // get none but still take part in the cluster's merge.
        const int n = blk.pos + 1;
        const int share = ((n + blk.nsplit - 1) / blk.nsplit + ATK - 1) / ATK * ATK;
        blk.kbeg = min(blk.split * share, n);
        blk.kend = min(n, blk.kbeg + share);
        dec2_cluster_start<G, HD>(blk.nsplit);
    } else if (blk.kbeg >= blk.kend) {
        // A split past the row's keys: nothing to do (attention_combine reads only the row's
        // splits; uniform over the block, so no barrier is skipped by part of it). An exited
        // block counts as having triggered its dependents.
        return;
    }
    const int g = blk.g, row = blk.row, kbeg = blk.kbeg, kend = blk.kend;
    const int* bt = blk.bt;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub = lane / LPK, li = lane % LPK;

    // Issues the copies of the tile starting at key t0 into stage st.
    // A tile of ATK <= page_size keys spans at most two pages: one division per tile, not per key.
    auto issue = [&](int t0, int st) {
        const int p0 = t0 / page_size, r0 = t0 - p0 * page_size;
        for (int c = threadIdx.x; c < ATK * LPK; c += blockDim.x) {
            const int kk = c / LPK, key = t0 + kk, piece = c % LPK;
            const bool live = key < kend;
            u64 off = 0;
            if (live) {
                int page = p0, idx = r0 + kk;
                if (page_size >= ATK) {
                    if (idx >= page_size) {
                        idx -= page_size;
                        ++page;
                    }
                } else {
                    page = key / page_size;
                    idx = key - page * page_size;
                }
                const u64 slot = (u64)bt[page] * page_size + idx;
                off = slot * n_kv_heads * HD + (u64)g * HD + piece * 8;
            }
            cp_async16(&ks[st][c], k_pool + off, live ? 16 : 0);
            cp_async16(&vs[st][c], v_pool + off, live ? 16 : 0);
        }
    };

    // Programmatic dependent launch: the previous kernel (the qkv projection) writes q and this
    // token's own K/V row (key pos); every other key, the tile list and the block tables were
    // written before it started. A split that ends before pos issues its first tiles before
    // waiting, so they stream in during the previous kernel's tail.
    const int ntiles = kend > kbeg ? (kend - kbeg + ATK - 1) / ATK : 0;
    const bool early = kend <= blk.pos;
    auto prologue = [&]() {
#pragma unroll
        for (int p = 0; p < ANST - 1; ++p) {
            if (p < ntiles) issue(kbeg + p * ATK, p);
            cp_async_commit();
        }
    };
    if (early) prologue();
    pdl_enter();
    if (!early) prologue();

    float qf[G][8], m[G], l[G], acc[G][8];
    dec2_start<G, HD>(q, q_stride, row, g, li, scale, qf, m, l, acc);
    for (int i = 0; i < ntiles; ++i) {
        cp_async_wait<ANST - 2>();
        __syncthreads();
        // The stage refilled here was read in iteration i - 1, which every warp has finished.
        const int nxt = i + ANST - 1;
        if (nxt < ntiles) issue(kbeg + nxt * ATK, nxt % ANST);
        cp_async_commit();
        const int st = i % ANST, t0 = kbeg + i * ATK;
        uint4 kr[UNR], vr[UNR];
        bool ok[UNR];
#pragma unroll
        for (int u = 0; u < UNR; ++u) {
            const int kk = warp * PER_WARP + u * KPS + sub;
            kr[u] = ks[st][kk * LPK + li];
            vr[u] = vs[st][kk * LPK + li];
            ok[u] = t0 + kk < kend;
        }
        dec2_chunk<G, HD, UNR>(qf, kr, vr, ok, m, l, acc);
    }
    cp_async_wait<0>();
    if (CLUSTER)
        dec2_finish_cluster<G, HD>(m, l, acc, g, row, blk.split, blk.nsplit, out, out_stride);
    else
        dec2_finish<G, HD>(m, l, acc, g, row, blk.split, blk.nsplit, out, out_stride, part_acc,
                           part_ml, total_rows, n_heads);
}

// Iterations of keys the register cluster form keeps in flight: 3 (built with STRATA_DEC2R_RING3,
// the default; STRATA_DEC2R_RING3=0 in the environment at compile time gives 2, for A/B runs).
// A block iteration is 32 keys at both head sizes and a 1K-token row's share in a cluster of 16
// is 64 keys, but past 1024 keys the shares round up to 80: a third iteration whose loads, with
// two in flight, are issued only after the PDL wait, one fold before they are needed.
#ifdef STRATA_DEC2R_RING3
#define DEC2R_RING 3
#else
#define DEC2R_RING 2
#endif

// Register cluster form (the default cluster form since 2026-12-04; `STRATA_DECODE_CLUSTER_FORM=tiles`
// keeps dec2_async_body's): the same equal key shares and cluster merge, but each warp reads its
// keys straight into registers, DEC2R_RING iterations of UNR steps in flight (a ring: the one
// RING iterations ahead loaded as each is folded), with no shared-memory tiles and no block
// barrier per tile. The first RING iterations' keys before `pos` are loaded before the PDL wait
// (the previous kernel writes only key pos, fetched right after the wait), so at short contexts
// the whole share is in flight while the qkv projection finishes, and the block's serial part is
// one fold per iteration and the merges.
// SPLIT > 1 (the head-split form, `decode2rh`): the GQA group's SPLIT * G query heads are split
// over SPLIT clusters of G heads each (grid y = KV heads * SPLIT; y's query heads y * G ..., its
// KV head y / SPLIT). Each head's arithmetic is the unsplit kernel's, in the same order, so the
// output is the same; each block folds G heads' scores instead of SPLIT * G, so its serial
// chain per key iteration is shorter (at one row the chain is issue-bound: one warp per
// scheduler), and every K/V row is read by SPLIT blocks (from L2 after the first).
template <int G, int HD, int UNR, int SPLIT = 1>
__device__ __forceinline__ void dec2_regs_cluster_body(DEC2_PARAMS) {
    constexpr int RING = DEC2R_RING;
    constexpr int LPK = HD / 8;
    constexpr int KPS = 32 / LPK;
    constexpr int STEP = KPS * UNR;              // keys of one warp iteration
    constexpr int STRIDE = DEC2_WARPS * STEP;    // keys of one block iteration
    const Dec2Block blk = dec2_block(tile_info, block_tables, max_pages, split_len);
    // The async cluster form's shares (whole 16-key tiles), so both forms split alike.
    const int n = blk.pos + 1;
    const int share = ((n + blk.nsplit - 1) / blk.nsplit + 15) / 16 * 16;
    const int kbeg = min(blk.split * share, n), kend = min(n, kbeg + share);
    const int g = blk.g, row = blk.row, pos = blk.pos;
    const int* bt = blk.bt;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub = lane / LPK, li = lane % LPK;
    dec2_cluster_start<G, HD>(blk.nsplit);
    const u64 head_off = (u64)(g / SPLIT) * HD + li * 8;
    auto load_key = [&](uint4& kk, uint4& vv, int key) {
        const int p = key / page_size;
        const u64 slot = (u64)__ldg(bt + p) * page_size + (key - p * page_size);
        const u64 off = slot * n_kv_heads * HD + head_off;
        kk = *(const uint4*)(k_pool + off);
        vv = *(const uint4*)(v_pool + off);
    };
    // One warp iteration's keys from t: those below `below` (every live one when below > kend).
    auto load = [&](uint4* kr, uint4* vr, bool* ok, int t, int below) {
#pragma unroll
        for (int u = 0; u < UNR; ++u) {
            const int key = t + u * KPS + sub;
            ok[u] = key < kend;
            kr[u] = make_uint4(0, 0, 0, 0);
            vr[u] = kr[u];
            if (ok[u] && key < below) load_key(kr[u], vr[u], key);
        }
    };
    // Key pos, where an early load left it out: its page-table entry, like every other written
    // before the forward, is looked up before the PDL wait (by the block whose share holds pos),
    // so that only its K/V row, which the previous kernel writes, is loaded after it.
    u64 pos_off = 0;
    if (pos >= kbeg && pos < kend) {
        const int p = pos / page_size;
        pos_off = ((u64)__ldg(bt + p) * page_size + (pos - p * page_size)) * n_kv_heads * HD + head_off;
    }
    auto load_pos = [&](uint4* kr, uint4* vr, const bool* ok, int t) {
#pragma unroll
        for (int u = 0; u < UNR; ++u) {
            const int key = t + u * KPS + sub;
            if (ok[u] && key == pos) {
                kr[u] = *(const uint4*)(k_pool + pos_off);
                vr[u] = *(const uint4*)(v_pool + pos_off);
            }
        }
    };
    // Ring slot r holds the iteration r ahead of the one being folded (slot 0).
    uint4 kb[RING][UNR], vb[RING][UNR];
    bool okb[RING][UNR];
    int t0 = kbeg + warp * STEP;
#pragma unroll
    for (int r = 0; r < RING; ++r) load(kb[r], vb[r], okb[r], t0 + r * STRIDE, pos);
    pdl_enter();  // q and key pos's K/V row come from the previous kernel
#pragma unroll
    for (int r = 0; r < RING; ++r) load_pos(kb[r], vb[r], okb[r], t0 + r * STRIDE);

    float qf[G][8], m[G], l[G], acc[G][8];
    dec2_start<G, HD>(q, q_stride, row, g, li, scale, qf, m, l, acc);
    for (; t0 < kend; t0 += STRIDE) {
        dec2_chunk<G, HD, UNR>(qf, kb[0], vb[0], okb[0], m, l, acc);
#pragma unroll
        for (int r = 0; r + 1 < RING; ++r)
#pragma unroll
            for (int u = 0; u < UNR; ++u) {
                kb[r][u] = kb[r + 1][u];
                vb[r][u] = vb[r + 1][u];
                okb[r][u] = okb[r + 1][u];
            }
        if (t0 + RING * STRIDE < kend) load(kb[RING - 1], vb[RING - 1], okb[RING - 1], t0 + RING * STRIDE, kend);
        else {
#pragma unroll
            for (int u = 0; u < UNR; ++u) okb[RING - 1][u] = false;
        }
    }
    dec2_finish_cluster<G, HD>(m, l, acc, g, row, blk.split, blk.nsplit, out, out_stride);
}

// Kernel NAME (MINB blocks per SM at least) runs the body given after it on its arguments.
#define DEC2_KERNEL(NAME, MINB, ...)                                                          \
    extern "C" __global__ void __launch_bounds__(128, MINB) NAME(DEC2_PARAMS) {               \
        __VA_ARGS__(DEC2_ARGS);                                                               \
    }

#define DEC2_ASYNC(NAME, G, HD, ATK, ANST) \
    DEC2_KERNEL(NAME, 1, dec2_async_body<G, HD, ATK, ANST>)
// The cluster form (grid z = the cluster size, launched with that cluster shape).
#define DEC2_CLUSTER(NAME, G, HD, ATK, ANST) \
    DEC2_KERNEL(NAME, 1, dec2_async_body<G, HD, ATK, ANST, true>)
#define DEC2_VARIANT_LB(NAME, G, HD, UNR, PIPE, CHUNK, MINB) \
    DEC2_KERNEL(NAME, MINB, dec2_body<G, HD, UNR, PIPE, CHUNK>)
#define DEC2_VARIANT(NAME, G, HD, UNR, PIPE, CHUNK) \
    DEC2_VARIANT_LB(NAME, G, HD, UNR, PIPE, CHUNK, 1)

// The planner's kernels (the defaults chosen by the side-by-side timing in docs/perf.md): the
// cp.async pipeline, tiles of 16 keys, 4 stages (3 where G = 8 at head_dim 128, for the 48 KiB
// static shared-memory limit).
#define DEC2_UNR 2
DEC2_ASYNC(paged_attention_decode2_g1_d64, 1, 64, 16, 4)
DEC2_ASYNC(paged_attention_decode2_g2_d64, 2, 64, 16, 4)
DEC2_ASYNC(paged_attention_decode2_g4_d64, 4, 64, 16, 4)
DEC2_ASYNC(paged_attention_decode2_g8_d64, 8, 64, 16, 4)
DEC2_ASYNC(paged_attention_decode2_g1_d128, 1, 128, 16, 4)
DEC2_ASYNC(paged_attention_decode2_g2_d128, 2, 128, 16, 4)
DEC2_ASYNC(paged_attention_decode2_g4_d128, 4, 128, 16, 4)
DEC2_ASYNC(paged_attention_decode2_g8_d128, 8, 128, 16, 3)

// The cluster forms, same shapes (3 stages at G = 8, head_dim 128: the cluster merge's shared
// memory comes on top).
DEC2_CLUSTER(paged_attention_decode2c_g1_d64, 1, 64, 16, 4)
DEC2_CLUSTER(paged_attention_decode2c_g2_d64, 2, 64, 16, 4)
DEC2_CLUSTER(paged_attention_decode2c_g4_d64, 4, 64, 16, 4)
DEC2_CLUSTER(paged_attention_decode2c_g8_d64, 8, 64, 16, 4)
DEC2_CLUSTER(paged_attention_decode2c_g1_d128, 1, 128, 16, 4)
DEC2_CLUSTER(paged_attention_decode2c_g2_d128, 2, 128, 16, 4)
DEC2_CLUSTER(paged_attention_decode2c_g4_d128, 4, 128, 16, 4)
DEC2_CLUSTER(paged_attention_decode2c_g8_d128, 8, 128, 16, 3)

// The register cluster forms, same shapes: two iterations of 8 keys per warp in flight (UNR 2 at
// head_dim 64, 4 at 128; 2 at G = 8, head_dim 128, for registers), i.e. the 64-key share of a
// 1K-token row in a cluster of 16 in flight at once.
#define DEC2_REGS(NAME, G, HD, UNR) DEC2_KERNEL(NAME, 1, dec2_regs_cluster_body<G, HD, UNR>)
DEC2_REGS(paged_attention_decode2r_g1_d64, 1, 64, 2)
DEC2_REGS(paged_attention_decode2r_g2_d64, 2, 64, 2)
DEC2_REGS(paged_attention_decode2r_g4_d64, 4, 64, 2)
DEC2_REGS(paged_attention_decode2r_g8_d64, 8, 64, 2)
DEC2_REGS(paged_attention_decode2r_g1_d128, 1, 128, 4)
DEC2_REGS(paged_attention_decode2r_g2_d128, 2, 128, 4)
DEC2_REGS(paged_attention_decode2r_g4_d128, 4, 128, 4)
DEC2_REGS(paged_attention_decode2r_g8_d128, 8, 128, 2)

// The head-split register cluster forms (the default at head_dim 64; attention/choice.rs),
// named by the GQA group they serve: two clusters per (row, KV head), each with half the group's
// heads and the unsplit kernel's UNR.
#define DEC2_REGS_HALVES(NAME, G, HD, UNR) DEC2_KERNEL(NAME, 1, dec2_regs_cluster_body<G / 2, HD, UNR, 2>)
DEC2_REGS_HALVES(paged_attention_decode2rh_g2_d64, 2, 64, 2)
DEC2_REGS_HALVES(paged_attention_decode2rh_g4_d64, 4, 64, 2)
DEC2_REGS_HALVES(paged_attention_decode2rh_g8_d64, 8, 64, 2)
DEC2_REGS_HALVES(paged_attention_decode2rh_g2_d128, 2, 128, 4)
DEC2_REGS_HALVES(paged_attention_decode2rh_g4_d128, 4, 128, 4)
DEC2_REGS_HALVES(paged_attention_decode2rh_g8_d128, 8, 128, 2)

// Alternatives timed against the default by `strata gpu bench` (Llama-3-8B shape only).
DEC2_VARIANT(paged_attention_decode2_var_perkey_u4, 4, 128, 4, false, false)
DEC2_VARIANT(paged_attention_decode2_var_u4, 4, 128, 4, false, true)
DEC2_VARIANT(paged_attention_decode2_var_u8, 4, 128, 8, false, true)
DEC2_VARIANT(paged_attention_decode2_var_p4, 4, 128, 4, true, true)
DEC2_VARIANT_LB(paged_attention_decode2_var_lb6, 4, 128, 4, false, true, 6)
DEC2_VARIANT_LB(paged_attention_decode2_var_lb8, 4, 128, 4, false, true, 8)
DEC2_VARIANT_LB(paged_attention_decode2_var_u2lb8, 4, 128, 2, false, true, 8)
// The register-streaming kernel that was the default before the cp.async pipeline.
DEC2_VARIANT(paged_attention_decode2_var_regs, 4, 128, DEC2_UNR, false, true)
DEC2_ASYNC(paged_attention_decode2_var_async_t32s2, 4, 128, 32, 2)
DEC2_ASYNC(paged_attention_decode2_var_async_t16s3, 4, 128, 16, 3)
DEC2_ASYNC(paged_attention_decode2_var_async_t8s6, 4, 128, 8, 6)

