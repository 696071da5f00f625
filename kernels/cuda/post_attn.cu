// The single-row decode step's sub-layer after the attention in one persistent kernel
// (`post_attn_t1`, one block per SM): y_o = attn o^T, the residual add and the MLP's input norm
// (rmsnorm_add2's: resid += y + y_o, h = rmsnorm(resid) * w) and act = silu(h gate^T) *
// (h up^T), in place of gemv_bf16_t1 (o), rmsnorm_add2 and gemv_bf16_t1_gate, every output bit
// for bit theirs (the same per-row sums in the same order, rmsnorm's reduction tree, the same
// roundings). Appended to gemv.cu's program (its helpers).
//
// Why one kernel: launched under programmatic dependent launch it is resident while the decode
// attention runs, a latency-bound chain of ~7 us per layer that leaves the memory bus nearly
// idle, and its blocks spend that time copying weights into shared memory (cp.async, before the
// PDL wait: weights are constant): their o rows and each warp's first PA_PRE gate/up row pairs.
// What is streamed after the attention shrinks by that much, and the norm's launch and boundary
// are gone. The o rows feed the norm, which needs all of y_o: a grid-wide barrier (an arrival
// counter in global memory) stands between them, so every block must be resident at once: the
// grid is at most one block per SM, and the launcher keeps the kernel off where SMs may be
// shared (an MPS share).
//
// Shapes: hidden = q width = PA_K (2048: Llama-3.2-1B), 256 threads. Block b owns o rows
// [b n / G, (b + 1) n / G) (all staged: the launcher sizes shared memory for them) and gate/up
// pairs [b inter / G, (b + 1) inter / G); warp w takes pairs p0 + w + 8 i through a ring of
// PA_D shared-memory slots (i % PA_D): PA_PRE slots of its own, filled before the PDL wait, and
// one in the o rows' space once o is done; a consumed slot is refilled with the pair PA_D on.
// So each warp keeps PA_D pairs (24 KB) in flight without holding them in registers: the
// kernel's registers must leave room for an attention block on the same SM.
// `phases`: 3 on the GPU (both halves, the barrier between); the CPU emulation
// (tests/cuda_emu, blocks one after another) runs 1 (o) then 2 (norm and gate/up) as two
// launches. The updated residual is written by the grid's last block after the barrier; every
// block reads the old one before it.
#define PA_K 2048
#define PA_K8 (PA_K / 8)
#define PA_PRE 2
#define PA_LATE_NS 2000ull
#define PA_D (PA_PRE + 1)
// Rows of the o space: the block's o rows, at least one pair slot per warp (2 rows each).
#define PA_OROWS(ocap) ((ocap) > 16 ? (ocap) : 16)

// cp.async commit / wait for the staged rows (groups: o's rows, then one per gate/up pair).
__device__ __forceinline__ void pa_commit() {
#ifndef STRATA_CUDA_EMU
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void pa_wait() {
#ifndef STRATA_CUDA_EMU
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// y_o written by other blocks in this kernel: read at the L2 (not through the non-coherent
// path __ldg takes).
__device__ __forceinline__ uint4 pa_ld_l2(const uint4* p) {
#ifdef STRATA_CUDA_EMU
    return *p;
#else
    uint4 v;
    asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
#endif
}

// Every block has written its y_o rows (the block barrier orders its threads' stores before
// thread 0's fence and arrival) and sees every other block's after it.
__device__ __forceinline__ void pa_grid_barrier(unsigned* arrive) {
#ifndef STRATA_CUDA_EMU
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(arrive, 1u);
        unsigned seen;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(seen) : "l"(arrive) : "memory");
        } while (seen < gridDim.x);
        __threadfence();
    }
    __syncthreads();
#endif
}

// Timeline probe (gpu bench, STRATA_POST_ATTN_PROF=1): thread 0 of each block writes the global
// timer (ns) as stamp i of 4 (entry, PDL wait returned, grid barrier passed, done).
__device__ __forceinline__ void pa_stamp(unsigned long long* prof, int i) {
#ifndef STRATA_CUDA_EMU
    if (prof && threadIdx.x == 0) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        prof[blockIdx.x * 4 + i] = t;
    }
#endif
}

// One lane's share of a weight row (8 chunks of 16 bytes, k positions lane + 32 u) folded
// against the staged x row as gemv_rows_body folds it (even / odd products in two sums), then
// summed over the warp: the single-row GEMV's value of that row, bit for bit.
__device__ __forceinline__ float pa_row_sum(const uint4* wv, const uint4* xs, int lane) {
    float acc0 = 0.f, acc1 = 0.f;
#pragma unroll
    for (int u = 0; u < 8; ++u) {
        float wf[8], xf[8];
        unpack8(wv[u], wf);
        unpack8(xs[lane + 32 * u], xf);
#pragma unroll
        for (int e = 0; e < 8; e += 2) {
            acc0 += wf[e] * xf[e];
            acc1 += wf[e + 1] * xf[e + 1];
        }
    }
    return warp_sum(acc0 + acc1);
}
// The same for a row staged in shared memory.
__device__ __forceinline__ float pa_row_sum_smem(const uint4* row, const uint4* xs, int lane) {
    uint4 wv[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) wv[u] = row[lane + 32 * u];
    return pa_row_sum(wv, xs, lane);
}
// gemv_bf16_t1_gate's epilogue: both sums rounded to bf16 first, as the plain GEMV writes them.
__device__ __forceinline__ bf16_t pa_gate(float g, float u) {
    return f2bf(silu_times(bf2f(f2bf(g)), bf2f(f2bf(u))));
}

// At most 104 registers where NVRTC has __maxnreg__ (12.4+): 256 x 104 is what an SM holding two
// blocks of the register cluster attention (148 registers x 128 threads each, two share an SM
// where a GPC has fewer SMs than the 16-block cluster) leaves free.
#if defined(__CUDACC_VER_MAJOR__) && (__CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 4))
#define PA_BOUNDS __maxnreg__(104)
#else
#define PA_BOUNDS __launch_bounds__(256, 1)
#endif
extern "C" __global__ void PA_BOUNDS
    post_attn_t1(const bf16_t* attn, const bf16_t* o_w, bf16_t* y_o, const bf16_t* y, bf16_t* resid,
                 const bf16_t* norm_w, float eps, const bf16_t* gu_w, bf16_t* act, int n, int inter,
                 unsigned* ctr, unsigned long long* prof, int phases) {
    DYN_SHARED(uint4, sm);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int G = gridDim.x, b = blockIdx.x;
    const int r0 = (int)((u64)b * n / G), ocount = (int)((u64)(b + 1) * n / G) - r0;
    const int p0 = (int)((u64)b * inter / G), p1 = (int)((u64)(b + 1) * inter / G);
    const int ocap = (n + G - 1) / G;
    uint4* xa = sm;                               // attn row
    uint4* xh = xa + PA_K8;                       // the normed row h
    uint4* os = xh + PA_K8;                       // o rows (PA_OROWS of them)
    uint4* ring = os + PA_OROWS(ocap) * PA_K8;    // PA_PRE pair slots per warp
    const uint4* ow4 = (const uint4*)o_w;
    const uint4* gw4 = (const uint4*)gu_w;
    // This warp's i-th pair (gate row, then up row) and its slot.
    auto slot = [&](int i) {
        const int d = i % PA_D;
        return d < PA_PRE ? ring + (warp * PA_PRE + d) * 2 * PA_K8 : os + warp * 2 * PA_K8;
    };
    // Copies pair i into its slot (16 pieces per lane) as one cp.async group (empty past the
    // block's pairs, so every lane commits one group per pair).
    pa_stamp(prof, 0);
    auto fetch = [&](int i) {
        const int j = p0 + warp + 8 * i;
        if (j < p1) {
            uint4* s = slot(i);
#pragma unroll
            for (int q = 0; q < 16; ++q) {
                const int piece = lane + 32 * (q & 7), r = q >> 3;
                gemv_cp16(s + r * PA_K8 + piece, gw4 + (u64)(j + r * inter) * PA_K8 + piece);
            }
        }
        pa_commit();
    };

    // A block that could not become resident beside the attention enters when it ends, more
    // than PA_LATE_NS after the grid's first block (the first entry time is kept beside the
    // barrier's counters): its o rows and the loads of its o phase decide when the grid barrier
    // opens, and must not queue behind its pair copies (the timeline probe showed the barrier
    // opening 7 us after the attention with every block copying its pairs first). A late block
    // copies its first PA_D pairs after the barrier instead.
    __shared__ int late_sh;
    if (tid == 0) {
        int late = 0;
#ifndef STRATA_CUDA_EMU
        if (phases == 3) {
            unsigned long long t;
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
            const unsigned long long first = atomicCAS((unsigned long long*)(ctr + 2), 0ull, t);
            late = first != 0 && t - first > PA_LATE_NS;
        }
#endif
        late_sh = late;
    }
    __syncthreads();
    const bool late = late_sh;

    // Before the wait (constant weights): o's rows, then, once they landed, this warp's first
    // pairs (an early block's).
    if (phases & 1) {
        for (int i = tid; i < ocount * PA_K8; i += 256) gemv_cp16(os + i, ow4 + (u64)r0 * PA_K8 + i);
    }
    pa_commit();
    pa_wait<0>();
#pragma unroll
    for (int i = 0; i < PA_PRE; ++i) {
        if ((phases & 2) && !late) fetch(i);
        else pa_commit();
    }
    pdl_wait();
    pdl_trigger();
    pa_stamp(prof, 1);

    // The norm's inputs of this thread's chunk, read before any block can pass the barrier (the
    // last block rewrites the residual after it).
    uint4 rc = make_uint4(0, 0, 0, 0), yc = rc;
    if (phases & 2) {
        rc = ((const uint4*)resid)[tid];
        if (y) yc = ((const uint4*)y)[tid];
    }
    if (phases & 1) {
        xa[tid] = ((const uint4*)attn)[tid];
        pa_wait<PA_PRE>();
        __syncthreads();
        for (int i = warp; i < ocount; i += 8) {
            const float s = pa_row_sum_smem(os + i * PA_K8, xa, lane);
            if (lane == 0) y_o[r0 + i] = f2bf(s);
        }
    }
    // The o space is free: each warp's third slot fills during the barrier and the norm (a late
    // block's three after the barrier: the groups stay in pair order).
    __syncthreads();
    if ((phases & 2) && !late) fetch(PA_PRE);
    if (phases == 3) pa_grid_barrier(ctr);
    pa_stamp(prof, 2);
    if (!(phases & 2)) return;
    if (late) {
#pragma unroll
        for (int i = 0; i < PA_D; ++i) fetch(i);
    }

    // rmsnorm_add2 of (y, y_o, resid) at 256 threads, one chunk each: e = y_o + (y + resid).
    {
        __shared__ float sh[32];
        uint4 e = pa_ld_l2((const uint4*)y_o + tid);
        if (y) {
            bf8_add(yc, rc);
            bf8_add(e, yc);
        } else {
            bf8_add(e, rc);
        }
        float ss = 0.f;
        bf8_sumsq(e, ss);
        const float r = rsqrtf(block_sum(ss, sh) / (float)PA_K + eps);
        xh[tid] = bf8_norm(e, ((const uint4*)norm_w)[tid], r);
        if (b == G - 1) ((uint4*)resid)[tid] = e;
    }
    // Every block has passed the barrier (it arrived here after it): the last one to count
    // itself resets the counters (and the first entry time) for the next launch.
    if (phases == 3 && tid == 0 && atomicAdd(ctr + 1, 1u) == (unsigned)G - 1) {
        ctr[0] = 0;
        ctr[1] = 0;
        *(unsigned long long*)(ctr + 2) = 0;
    }
    __syncthreads();

    // gate/up through the ring: pair i landed once at most PA_D - 1 newer groups are pending.
    for (int i = 0, j = p0 + warp; j < p1; ++i, j += 8) {
        pa_wait<PA_D - 1>();
        __syncwarp();
        const uint4* s = slot(i);
        const float g = pa_row_sum_smem(s, xh, lane), u = pa_row_sum_smem(s + PA_K8, xh, lane);
        if (lane == 0) act[j] = pa_gate(g, u);
        __syncwarp();
        fetch(i + PA_D);
    }
    if (prof) {
        __syncthreads();
        pa_stamp(prof, 3);
    }
}
