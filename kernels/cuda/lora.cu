// LoRA adapters applied per row (the segmented form, which CUDA graphs can hold): every row of a
// forward names a slot of an adapter table (-1: no adapter), and a projection's change
// y += (x A^T) B^T for each row's adapter runs as two kernels, lora_shrink (mid = x A^T in f32)
// and lora_expand (y = bf16(y + mid B^T)). A table entry (LoraRef) per slot holds the adapter's
// A [rank, in] and B^T [rank, out] (bf16, the scaling folded into B) for one layer's projection
// and its rank (0: the adapter leaves that projection alone). The rows' slots and the table are
// written before the forward (stream-ordered copies), so a graph captured once reads the
// batch's adapters at every replay. A row's arithmetic never depends on the other rows.
struct LoraRef {
    u64 a;
    u64 bt;
    int rank;
    int pad;
};

#define LORA_SHRINK_BLOCKS 16  // blocks per row in lora_shrink
#define LORA_WARPS 8            // warps per lora_shrink block (256 threads)

// mid[t, r] = sum_i x[t, i] A[r, i] (f32) for the ranks r of row t's adapter: a warp per rank
// (block g's warp w takes ranks 8 g + w, then 128 further on), each lane summing its 16-byte
// chunks of the row, the warp's shuffle tree adding the lanes. Rows without an adapter, and
// ranks past the adapter's (or past mid_cap), are not written (lora_expand reads only
// r < rank). Grid: rows x LORA_SHRINK_BLOCKS blocks (1-D, row-major) of LORA_WARPS warps; in a
// multiple of 8.
extern "C" __global__ void lora_shrink(const bf16_t* x, const int* slot, const LoraRef* refs,
                                       int n_slots, float* mid, int in, int mid_cap) {
    const int t = blockIdx.x / LORA_SHRINK_BLOCKS, g = blockIdx.x % LORA_SHRINK_BLOCKS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    // The slots and the table were copied in before the forward: read before the PDL wait.
    const int s = slot[t];
    if (s < 0 || s >= n_slots) return;
    const LoraRef ref = refs[s];
    const int rank = min(ref.rank, mid_cap);
    if (g * LORA_WARPS >= rank) return;
    pdl_enter();
    const int in8 = in >> 3;
    const uint4* x4 = (const uint4*)(x + (u64)t * in);
    for (int r = g * LORA_WARPS + warp; r < rank; r += LORA_SHRINK_BLOCKS * LORA_WARPS) {
        const uint4* a4 = (const uint4*)((const bf16_t*)ref.a + (u64)r * in);
        float acc0 = 0.f, acc1 = 0.f;
#pragma unroll 4
        for (int i = lane; i < in8; i += 32) {
            const uint4 xv = x4[i], av = __ldg(a4 + i);
            const u32 xe[4] = {xv.x, xv.y, xv.z, xv.w}, ae[4] = {av.x, av.y, av.z, av.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                acc0 += bf_lo(xe[j]) * bf_lo(ae[j]);
                acc1 += bf_hi(xe[j]) * bf_hi(ae[j]);
            }
        }
        const float sum = warp_sum(acc0 + acc1);
        if (lane == 0) mid[(u64)t * mid_cap + r] = sum;
    }
}

// y[t, j] = bf16(y[t, j] + sum_r mid[t, r] B^T[r, j]) for the rows with an adapter that changes
// this projection; other rows untouched. Grid: rows x blocks_per_row blocks (1-D, row-major), a
// thread per output.
extern "C" __global__ void lora_expand(const float* mid, const int* slot, const LoraRef* refs,
                                       int n_slots, bf16_t* y, int out, int mid_cap,
                                       int blocks_per_row) {
    const int t = blockIdx.x / blocks_per_row;
    const int j = (blockIdx.x % blocks_per_row) * blockDim.x + threadIdx.x;
    const int s = slot[t];
    if (s < 0 || s >= n_slots || j >= out) return;
    const LoraRef ref = refs[s];
    const int rank = min(ref.rank, mid_cap);
    if (rank <= 0) return;
    const bf16_t* bt = (const bf16_t*)ref.bt + j;
    pdl_enter();
    const float* m = mid + (u64)t * mid_cap;
    float acc = 0.f;
#pragma unroll 8
    for (int r = 0; r < rank; ++r) acc += m[r] * bf2f(__ldg(bt + (u64)r * out));
    bf16_t* yp = y + (u64)t * out + j;
    *yp = f2bf(bf2f(*yp) + acc);
}
