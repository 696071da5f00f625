// Token sampling on the GPU, one block of 1024 threads per row of f32 logits.
//
// temperature <= 0: greedy (argmax, ties to the lowest index). Otherwise p = softmax(logits / T)
// and the kept set is {i : p_i >= tau}, tau = max(tau_k, tau_p, min_p * p_max) where tau_k is the
// k-th largest probability (top_k > 0 and < vocab) and tau_p the probability of the last token of
// the shortest descending prefix whose mass reaches top_p (top_p < 1). Both are found exactly by
// bisection on the IEEE bit pattern (non-negative floats order like their bits). The token is the
// first index, in index order, where the running kept mass exceeds uniform * kept mass.
// `probs` is a [rows, vocab] f32 scratch buffer.

#define SAMPLE_THREADS 1024

__device__ void block_argmax(float& v, int& i, float* shv, int* shi) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, v, o);
        int oi = __shfl_xor_sync(FULL_MASK, i, o);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
    __syncthreads();
    if (lane == 0) { shv[w] = v; shi[w] = i; }
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? shv[lane] : NEG_INF;
    i = lane < (int)(blockDim.x >> 5) ? shi[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, v, o);
        int oi = __shfl_xor_sync(FULL_MASK, i, o);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_tokens(
    const float* logits, float* probs, int vocab, const float* temperature, const int* top_k,
    const float* top_p, const float* min_p, const float* uniform, int* out_tokens) {
    pdl_enter();
    __shared__ float shf[32];
    __shared__ int shi[32];
    __shared__ float scan[SAMPLE_THREADS];
    __shared__ int pick, fallback;
    const int row = blockIdx.x, tid = threadIdx.x, bd = blockDim.x;
    const float* lg = logits + (u64)row * vocab;
    float* pr = probs + (u64)row * vocab;

    float best = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = tid; i < vocab; i += bd) {
        float v = lg[i];
        if (v > best || (v == best && i < bi)) { best = v; bi = i; }
    }
    block_argmax(best, bi, shf, shi);
    const float temp = temperature[row];
    if (!(temp > 0.f)) {
        if (tid == 0) out_tokens[row] = bi;
        return;
    }
    const float mx = best;
    float sum = 0.f;
    for (int i = tid; i < vocab; i += bd) {
        float e = expf((lg[i] - mx) / temp);
        pr[i] = e;
        sum += e;
    }
    const float inv = 1.f / block_sum(sum, shf);
    for (int i = tid; i < vocab; i += bd) pr[i] *= inv;
    // The chunked scan below reads elements other threads normalised: a barrier is needed even
    // when no bisection pass (which has its own barriers) runs.
    __syncthreads();
    const float pmax = inv;  // the argmax has e = 1

    const int k = top_k[row];
    const bool use_k = k > 0 && k < vocab;
    const float pp = top_p[row];
    const bool use_p = pp < 1.f;
    u32 lo_k = 0, hi_k = use_k ? __float_as_uint(pmax) : 0;
    u32 lo_p = 0, hi_p = use_p ? __float_as_uint(pmax) : 0;
    while (lo_k < hi_k || lo_p < hi_p) {
        u32 mid_k = lo_k + (hi_k - lo_k + 1) / 2;
        u32 mid_p = lo_p + (hi_p - lo_p + 1) / 2;
        float tk = __uint_as_float(mid_k), tp = __uint_as_float(mid_p);
        float cnt = 0.f, mass = 0.f;
        for (int i = tid; i < vocab; i += bd) {
            float p = pr[i];
            cnt += p >= tk ? 1.f : 0.f;
            mass += p >= tp ? p : 0.f;
        }
        cnt = block_sum(cnt, shf);
        mass = block_sum(mass, shf);
        if (lo_k < hi_k) { if (cnt >= (float)k) lo_k = mid_k; else hi_k = mid_k - 1; }
        if (lo_p < hi_p) { if (mass >= pp) lo_p = mid_p; else hi_p = mid_p - 1; }
    }
    float tau = min_p[row] > 0.f ? min_p[row] * pmax : 0.f;
    if (use_k) tau = fmaxf(tau, __uint_as_float(lo_k));
    if (use_p) tau = fmaxf(tau, __uint_as_float(lo_p));

    // Index-order prefix sum of kept mass: thread tid owns the contiguous chunk [c0, c1).
    const int chunk = (vocab + bd - 1) / bd;
    const int c0 = min(tid * chunk, vocab), c1 = min(c0 + chunk, vocab);
    float own = 0.f;
    int last_kept = -1;
    for (int i = c0; i < c1; ++i) {
        float p = pr[i];
        if (p >= tau) { own += p; last_kept = i; }
    }
    __syncthreads();
    scan[tid] = own;
    if (tid == 0) {
        pick = 0x7fffffff;
        fallback = -1;
    }
    __syncthreads();
    for (int off = 1; off < bd; off <<= 1) {
        float add = tid >= off ? scan[tid - off] : 0.f;
        __syncthreads();
        scan[tid] += add;
        __syncthreads();
    }
    const float total = scan[bd - 1];
    const float target = uniform[row] * total;
    const float before = scan[tid] - own;
    if (own > 0.f && target < before + own && target >= before) {
        float cum = before;
        int found = last_kept;
        for (int i = c0; i < c1; ++i) {
            float p = pr[i];
            if (p >= tau) {
                cum += p;
                if (cum > target) { found = i; break; }
            }
        }
        atomicMin(&pick, found);
    }
    if (last_kept >= 0) atomicMax(&fallback, last_kept);
    __syncthreads();
    // Rounding can leave target >= total: then the last kept token is taken.
    if (tid == 0) out_tokens[row] = pick != 0x7fffffff ? pick : fallback;
}

// Greedy pick per row of f32 logits [rows, vocab]: the index of the largest value, lowest index on
// ties (the CPU `argmax`). One block of 256 threads per row; graph-capturable (no host inputs).
extern "C" __global__ void __launch_bounds__(256) argmax_rows(const float* logits, int vocab,
                                                              int* out_tokens) {
    pdl_enter();
    __shared__ float shv[32];
    __shared__ int shi[32];
    const float* row = logits + (u64)blockIdx.x * vocab;
    float v = NEG_INF;
    int i = 0x7fffffff;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float x = row[j];
        if (x > v) { v = x; i = j; }
    }
    block_argmax(v, i, shv, shi);
    if (threadIdx.x == 0) out_tokens[blockIdx.x] = i == 0x7fffffff ? 0 : i;
}
