// What the two tensor-core prefill kernels share (the FA2 mma.sync kernel of attention_prefill.cu
// and the wgmma kernel of attention_prefill_wg.cu; prepended to both programs by
// kernels/src/cuda/nvrtc.rs): cp.async and conversion primitives, the decoding of one block's
// query tile and key split, the page-table lookup of a key, the source of a Q row, and the store
// of one finished row (the bf16 output, or the split's partial accumulator and (max, sum)).
//
// Grid = (KV head, tile, split), tiles taken last-first (the longest causal rows start first).
// tile_info[4 * tile ..] = (sequence, first token row, query rows, position of the first row).

__device__ __forceinline__ void pf_cp16(u32 dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void pf_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void pf_cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// 2^x in one MUFU.EX2 (flush-to-zero; 2^-inf = +0).
__device__ __forceinline__ float pf_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// The online softmax's new running maxima of N rows (scaled units, log2 base) after a tile:
// mx holds this lane's raw maxima of the tile's scores per row and becomes the new maxima,
// reduced over the quad (the 4 lanes sharing a row) and never below m. True when some row max
// of the warp grew, i.e. when the warp must rescale its accumulators and sums.
template <int N>
__device__ __forceinline__ bool pf_new_max(float* mx, const float* m, float sl2) {
    bool grew = false;
#pragma unroll
    for (int i = 0; i < N; ++i) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(FULL_MASK, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(FULL_MASK, mx[i], 2));
        mx[i] = fmaxf(m[i], mx[i] * sl2);
        grew |= mx[i] > m[i];
    }
    return __any_sync(FULL_MASK, grew);
}

// One block's work: KV head g, its query tile (rows r = token * group + head-in-group, r <
// nrows) and its split's keys [kbeg, kend).
struct PfTile {
    // h0: the query head of row 0 (g * group, unless a cluster form halves the group).
    int g, h0, group, gsh, seq, row0, qcount, pos0, nrows, split, nsplit, kbeg, kend;
    const int* bt;  // the sequence's page table
};
__device__ __forceinline__ PfTile pf_tile(const int* tile_info, const int* block_tables, int max_pages,
                                          int n_heads, int n_kv_heads, int split_len) {
    PfTile t;
    t.group = n_heads / n_kv_heads;
    t.gsh = __ffs(t.group) - 1;  // log2(group)
    t.g = blockIdx.x;
    t.h0 = t.g * t.group;
    const int tile = gridDim.y - 1 - blockIdx.y;
    t.split = blockIdx.z;
    t.nsplit = gridDim.z;
    t.seq = tile_info[tile * 4 + 0];
    t.row0 = tile_info[tile * 4 + 1];
    t.qcount = tile_info[tile * 4 + 2];
    t.pos0 = tile_info[tile * 4 + 3];
    t.nrows = t.qcount * t.group;
    t.kbeg = t.split * split_len;
    t.kend = min(t.pos0 + t.qcount, t.kbeg + split_len);
    t.bt = block_tables + (u64)t.seq * max_pages;
    return t;
}
// A key's page-table entry as loaded (not yet used) and its offset in the page, or off < 0 when
// this lane looks up nothing (`mine` false or the key past the split). Split from
// pf_slot_finish so a kernel can load a later tile's entries and use them a tile later, the
// load's latency hidden behind the tile's work.
struct PfSlot {
    int page, off;
};
__device__ __forceinline__ PfSlot pf_slot_load(const PfTile& t, int key, int page_size, bool mine) {
    if (!mine || key >= t.kend) return {0, -1};
    const int p = (u32)key / (u32)page_size;
    return {__ldg(t.bt + p), key - p * page_size};
}
// The pool slot as 2 * slot + 1, or 0 for no key: the copying lanes get it by shuffle and
// zero-fill dead keys.
__device__ __forceinline__ u32 pf_slot_finish(PfSlot s, int page_size) {
    return s.off < 0 ? 0u : (u32)(s.page * page_size + s.off) * 2u + 1u;
}
__device__ __forceinline__ u32 pf_slot_code(const PfTile& t, int key, int page_size, bool mine) {
    return pf_slot_finish(pf_slot_load(t, key, page_size, mine), page_size);
}
// Where 16-byte piece `piece` of tile row r's query is (r < nrows).
template <int HD>
__device__ __forceinline__ const bf16_t* pf_q_src(const PfTile& t, const bf16_t* q, int q_stride, int r,
                                                  int piece) {
    return q + (u64)(t.row0 + (r >> t.gsh)) * q_stride + (u64)(t.h0 + (r & (t.group - 1))) * HD +
           piece * 8;
}
// Stores tile row r's finished output: with one split, o / l as bf16; else the unnormalised
// accumulator and (max in natural-log units, like paged_attention's partials, sum). This lane
// holds dims 8 n + 2 tig + {0, 1} of the row as o2(n, 0), o2(n, 1); m is in log2 units.
template <int HD, class O2>
__device__ __forceinline__ void pf_store_row(const PfTile& t, int r, int tig, float m, float l, O2 o2,
                                             bf16_t* out, int out_stride, float* part_acc, float* part_ml,
                                             int n_heads, int total_rows) {
    const int grow = t.row0 + (r >> t.gsh), head = t.h0 + (r & (t.group - 1));
    if (t.nsplit == 1) {
        const float inv = l > 0.f ? 1.f / l : 0.f;
        bf16_t* orow = out + (u64)grow * out_stride + (u64)head * HD + tig * 2;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) *(u32*)(orow + n * 8) = pack_bf2(o2(n, 0) * inv, o2(n, 1) * inv);
    } else {
        const u64 base = ((u64)t.split * total_rows + grow) * n_heads + head;
        float* pa = part_acc + base * HD + tig * 2;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
            pa[n * 8] = o2(n, 0);
            pa[n * 8 + 1] = o2(n, 1);
        }
        if (tig == 0) {
            part_ml[base * 2] = m == NEG_BIG ? NEG_BIG : m * 0.6931471805599453f;
            part_ml[base * 2 + 1] = l;
        }
    }
}
