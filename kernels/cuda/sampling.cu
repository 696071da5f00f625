// Token sampling and log-probabilities on the GPU with the CPU sampler's semantics
// (`strata_kernels::sampling::sample` after the server's penalties; docs/gpu.md "GPU sampling").
//
// One block of SAMPLE_THREADS threads per logits row. Per-row parameters and penalty entries come
// packed in one i32 buffer (layout: kernels/src/sample_rows.rs, ROW_WORDS words per row):
//   0 mode (0 skip, 1 greedy, 2 sample, 3 fixed token) | 16 if the repetition/frequency/presence
//     penalties apply      1 temperature   2 top_k (0: off)   3 top_p   4 min_p
//   5 repetition   6 frequency   7 presence   8 first entry   9 entries   10 fixed token
//   11 logprob top_n (-1: no logprobs)   12..13 uniform (f64)   14 first id   15 ids   16 out word
//   17 allow mask (-1: none): its word offset from `entries`, ceil(vocab / 32) words, bit t % 32
//     of word t / 32 set for each token the row may draw (a grammar's mask); the others -> -inf
//   18 uncounted token (-1: none): index into `pending` (a queued forward's input ids on the
//     device) of one more output token the entries' counts do not hold yet (overlap scheduling
//     feeds it forward before the host knows it); the penalties count it too
// An entry is 3 words: token (< vocab), count | BAN | BIAS flags, bias (f32 bits); tokens of a
// row are distinct, so one thread per entry edits the logits in place without conflicts.
//
// Sampling works on the CPU sampler's sorted order (probability descending, index ascending),
// represented exactly without sorting: x_i = (l_i - max) / T in f32 (as the CPU), the sort key is
// the bit pattern of |x_i| (ascending key = descending probability), the weight is
// w_i = round(exp((double)x_i) * 2^S) as a u64 (S = 62 - ceil(log2 vocab): the row's total fits in 2^62).
// top-k, top-p and min-p each keep a prefix of that order, so the kept set is its first N
// positions; the draw is the first position whose inclusive cumulative weight exceeds
// floor(u * kept weight). Positions are found by a 3-level radix select on the key (11 + 10 + 10
// bits; shared-memory histograms of counts and integer weights), inside a group of equal keys by
// arithmetic (all its weights are equal), and the token is the r-th index of its key group in
// index order (ballot scan). Integer weights make every sum order-independent: the result is
// deterministic and independent of the batch.

#ifndef SAMPLE_THREADS  // the launchers use 1024; the CI emulation builds with fewer
#define SAMPLE_THREADS 1024
#endif
#define ROW_WORDS 20
#define E_BAN (1 << 30)
#define E_BIAS (1 << 29)
#define E_COUNT ((1 << 29) - 1)
#define MODE_SKIP 0
#define MODE_GREEDY 1
#define MODE_SAMPLE 2
#define MODE_FIXED 3
#define MODE_PENALTY 16
#define KEY_NONE 0x7f800000u  // the key of -inf / NaN: weight 0

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

// Integer sum over the block; every thread gets the total.
__device__ long long block_sum_ll(long long v, long long* sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    long long t = lane < nw ? sh[lane] : 0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(FULL_MASK, t, o);
    return t;
}

// f64 sum over the block in a fixed order (deterministic for a fixed block size).
__device__ double block_sum_f64(double v, double* sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    double t = lane < nw ? sh[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(FULL_MASK, t, o);
    return t;
}

// The sampling key of logit l: bits of |(l - mx) / T| with the CPU's f32 rounding (no FMA).
__device__ __forceinline__ u32 samp_key(float l, float mx, float t, float* x) {
    if (!(l > NEG_INF)) { *x = NEG_INF; return KEY_NONE; }  // -inf and NaN
    float v = __fdiv_rn(__fsub_rn(l, mx), t);
    *x = v;
    return __float_as_uint(v) & 0x7fffffffu;
}

__device__ __forceinline__ u64 samp_weight(float x, double scale) {
    return __double2ull_rn(exp((double)x) * scale);
}

// The logprob top-N key: ascending key = descending logit (NaN last).
__device__ __forceinline__ u32 logit_key(float l) {
    if (l != l) return 0xffffffffu;
    u32 u = __float_as_uint(l);
    u32 ordered = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // ascending with l
    return ~ordered;
}

// Shared scratch of one row's radix selections (the histograms are separate arrays).
struct SelShared {
    u32 wcnt[32];
    u64 wmass[32];
    int found_digit;
    u32 found_cnt_before;
    u64 found_mass_before;
    int found_index;
};

// Scans bins [0, nbins) of sh (count, mass) in order and finds the bin holding the target: by
// count, the bin whose counts before it are <= target < counts through it; by mass, the bin whose
// mass before it is < target <= mass through it. Writes the digit and the totals before it.
__device__ void scan_find(SelShared& sh, const u32* cnt, const u64* mass, int nbins, bool by_mass,
                          u64 target) {
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int per = nbins / SAMPLE_THREADS;  // bins per thread (nbins is 1024 or 2048)
    if (tid == 0) sh.found_digit = 0;
    u32 c = 0;
    u64 m = 0;
    for (int j = 0; j < per; ++j) { c += cnt[tid * per + j]; m += mass[tid * per + j]; }
    // Inclusive warp scan.
    u32 ci = c;
    u64 mi = m;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        u32 oc = __shfl_up_sync(FULL_MASK, ci, o);
        u64 om = __shfl_up_sync(FULL_MASK, mi, o);
        if (lane >= o) { ci += oc; mi += om; }
    }
    if (lane == 31) { sh.wcnt[w] = ci; sh.wmass[w] = mi; }
    __syncthreads();
    u32 cb = 0;
    u64 mb = 0;
    for (int j = 0; j < w; ++j) { cb += sh.wcnt[j]; mb += sh.wmass[j]; }
    cb += ci - c;
    mb += mi - m;
    for (int j = 0; j < per; ++j) {
        const int d = tid * per + j;
        const u32 bc = cnt[d];
        const u64 bm = mass[d];
        const bool hit = by_mass ? (mb < target && target <= mb + bm)
                                 : ((u64)cb <= target && target < (u64)cb + bc);
        if (hit) { sh.found_digit = d; sh.found_cnt_before = cb; sh.found_mass_before = mb; }
        cb += bc;
        mb += bm;
    }
    __syncthreads();
}

// A selected position of the sorted order: its key, the count and weight of smaller keys, and
// the count and weight of its key group.
struct Sel {
    u32 key;
    u32 cnt_before;
    u64 mass_before;
    u32 grp_cnt;
    u64 grp_mass;
};

// *p += v for a shared u64 (a histogram bin's weight) as two native 32-bit atomic adds, the
// low word's carry (seen in the value it returns) added to the high word with its half. A 64-bit
// atomicAdd on shared memory compiles to a compare-and-swap loop, which retries once per lane
// that hit the same bin (most of a row's tokens share a few bins): Nsight Compute put 77 % of
// the kernel's stall samples in that loop. The sum is the same integer in any order.
__device__ __forceinline__ void shared_add_u64(u64* p, u64 v) {
    u32* w = reinterpret_cast<u32*>(p);  // little endian: w[0] low, w[1] high
    const u32 lo = (u32)v;
    const u32 old = atomicAdd(&w[0], lo);
    const u32 hi = (u32)(v >> 32) + (old + lo < old ? 1u : 0u);
    if (hi) atomicAdd(&w[1], hi);
}

// Calls f(i, lg[i]) for this thread's indices of a row: four consecutive ones per step from one
// 16-byte load where the row is 16-byte aligned (four values per round trip: the passes wait on
// their loads, Nsight Compute's long-scoreboard stalls), the rest one by one. For passes whose
// result does not depend on the order they visit the row in.
template <class F>
__device__ __forceinline__ void for_row(const float* lg, int vocab, F f) {
    int done = 0;
    if ((reinterpret_cast<unsigned long long>(lg) & 15) == 0) {
        const int n4 = vocab >> 2;
        const float4* l4 = reinterpret_cast<const float4*>(lg);
        for (int j = threadIdx.x; j < n4; j += SAMPLE_THREADS) {
            const float4 q = l4[j];
            f(4 * j, q.x);
            f(4 * j + 1, q.y);
            f(4 * j + 2, q.z);
            f(4 * j + 3, q.w);
        }
        done = n4 << 2;
    }
    for (int i = done + threadIdx.x; i < vocab; i += SAMPLE_THREADS) f(i, lg[i]);
}

// Histogram of the elements whose key agrees with `prefix` above bit `shift + bits` into the
// 2^bits bins of digit (key >> shift); with `mass`, weights too. `sampling`: keys and weights of
// samp_key; otherwise logit_key and no weights.
__device__ void hist_pass(u32* cnt, u64* mass_out, const float* lg, int vocab, float mx, float t, double scale,
                          bool sampling, int shift, int bits, u32 prefix, bool mass) {
    const int nb = 1 << bits;
    for (int d = threadIdx.x; d < nb; d += SAMPLE_THREADS) { cnt[d] = 0; mass_out[d] = 0; }
    __syncthreads();
    const int hi = shift + bits;
    for_row(lg, vocab, [&](int, float l) {
        float x = 0.f;
        const u32 key = sampling ? samp_key(l, mx, t, &x) : logit_key(l);
        if (hi < 32 && (key >> hi) != prefix) return;
        const int d = (key >> shift) & (nb - 1);
        atomicAdd(&cnt[d], 1u);
        if (mass) {
            const u64 wgt = samp_weight(x, scale);
            if (wgt) shared_add_u64(&mass_out[d], wgt);
        }
    });
    __syncthreads();
}

// The index of the r-th element (index order, 0-based) whose key equals `key`; -1 if none. Each
// thread counts the matches of its own contiguous stretch of the row, a block scan of the counts
// names the stretch holding the r-th, and its thread walks it again (one pass and two barriers;
// chunks of the row in order, a ballot and three barriers each, took a third of sample_rows'
// time).
__device__ int nth_with_key(SelShared& sh, const float* lg, int vocab, float mx, float t,
                            bool sampling, u32 key, int r) {
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int seg = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    const int lo = min(vocab, tid * seg), hi = min(vocab, lo + seg);
    auto hit = [&](int i) {
        float x;
        return (sampling ? samp_key(lg[i], mx, t, &x) : logit_key(lg[i])) == key;
    };
    int c = 0;
    for (int i = lo; i < hi; ++i) c += hit(i) ? 1 : 0;
    int ci = c;  // inclusive warp scan
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int oc = __shfl_up_sync(FULL_MASK, ci, o);
        if (lane >= o) ci += oc;
    }
    if (lane == 31) sh.wcnt[w] = (u32)ci;
    if (tid == 0) sh.found_index = -1;
    __syncthreads();
    int before = ci - c;
    for (int j = 0; j < w; ++j) before += (int)sh.wcnt[j];
    if (before <= r && r < before + c) {
        int k = r - before;
        for (int i = lo; i < hi; ++i) {
            if (hit(i) && k-- == 0) {
                sh.found_index = i;
                break;
            }
        }
    }
    __syncthreads();
    return sh.found_index;
}

// Radix select over the sampling keys (levels of 11 + 10 + 10 bits; level 0 given in l0_cnt /
// l0_mass) or the logit keys (11 + 11 + 10 bits; level 0 computed here, l0_cnt null). The work
// histograms wc / wm hold 2048 bins for logit keys, 1024 for sampling keys.
__device__ Sel radix_select(SelShared& sh, const u32* l0_cnt, const u64* l0_mass, u32* wc, u64* wm,
                            const float* lg, int vocab, float mx, float t, double scale,
                            bool sampling, bool by_mass, u64 target) {
    const int shifts[3] = {sampling ? 20 : 21, 10, 0};
    const int bits[3] = {11, sampling ? 10 : 11, 10};
    u32 prefix = 0, cnt_before = 0;
    u64 mass_before = 0;
    Sel s;
    for (int lv = 0; lv < 3; ++lv) {
        const u32* c = wc;
        const u64* m = wm;
        if (lv == 0 && l0_cnt) {
            c = l0_cnt;
            m = l0_mass;
        } else {
            hist_pass(wc, wm, lg, vocab, mx, t, scale, sampling, shifts[lv], bits[lv], prefix,
                      sampling);
        }
        const u64 tgt = by_mass ? target - mass_before : target - cnt_before;
        scan_find(sh, c, m, 1 << bits[lv], by_mass, tgt);
        const int d = sh.found_digit;
        cnt_before += sh.found_cnt_before;
        mass_before += sh.found_mass_before;
        prefix = (prefix << bits[lv]) | (u32)d;
        if (lv == 2) { s.grp_cnt = c[d]; s.grp_mass = m[d]; }
        __syncthreads();
    }
    s.key = prefix;
    s.cnt_before = cnt_before;
    s.mass_before = mass_before;
    return s;
}

// Position (in the sorted order) of the first element whose inclusive cumulative weight reaches
// theta, given the selection that found its group.
__device__ __forceinline__ u32 pos_by_mass(const Sel& s, u64 theta) {
    const u64 w = s.grp_mass / s.grp_cnt;  // equal keys have equal weights
    const u64 need = theta - s.mass_before;
    return s.cnt_before + (u32)((need + w - 1) / w) - 1;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_rows(
    float* logits, int vocab, const int* params, const int* entries, int scale_bits,
    int* out_tokens, const int* pending) {
    pdl_enter();
    __shared__ SelShared sh;
    __shared__ u32 l0_cnt[2048];
    __shared__ u64 l0_mass[2048];
    __shared__ u32 wc[1024];
    __shared__ u64 wm[1024];
    __shared__ float shf[32];
    __shared__ int shi[32];
    __shared__ long long shl[32];
    __shared__ int uncounted_seen;
    const int row = blockIdx.x, tid = threadIdx.x;
    const int* P = params + (u64)row * ROW_WORDS;
    const int mode = P[0] & 15;
    if (mode == MODE_SKIP) return;
    if (mode == MODE_FIXED) {
        if (tid == 0) out_tokens[row] = P[10];
        return;
    }
    float* lg = logits + (u64)row * vocab;
    // Penalties, bias and bans, in place (the logprobs report the penalised logits, as the CPU).
    const bool pen = (P[0] & MODE_PENALTY) != 0;
    const float rep = __int_as_float(P[5]), freq = __int_as_float(P[6]),
                pres = __int_as_float(P[7]);
    // The uncounted token: its entry's count gains one, or it gets an entry of its own.
    int unc = -1;
    if (pen && P[18] >= 0 && pending != nullptr) {
        unc = pending[P[18]];
        if (unc >= vocab) unc = -1;
        if (tid == 0) uncounted_seen = 0;
        __syncthreads();
    }
    for (int e = tid; e < P[9]; e += SAMPLE_THREADS) {
        const int* E = entries + 3 * (u64)(P[8] + e);
        const int tok = E[0], f = E[1];
        float l = lg[tok];
        if (f & E_BIAS) l = __fadd_rn(l, __int_as_float(E[2]));
        int c = f & E_COUNT;
        if (tok == unc) {
            c += 1;
            uncounted_seen = 1;
        }
        if (pen && c > 0) {
            if (rep != 1.f) l = l > 0.f ? __fdiv_rn(l, rep) : __fmul_rn(l, rep);
            l = __fsub_rn(l, __fadd_rn(__fmul_rn(freq, (float)c), pres));
        }
        if (f & E_BAN) l = NEG_INF;
        lg[tok] = l;
    }
    __syncthreads();
    if (unc >= 0) {  // (the same for the whole block)
        if (tid == 0 && !uncounted_seen) {
            float l = lg[unc];
            if (rep != 1.f) l = l > 0.f ? __fdiv_rn(l, rep) : __fmul_rn(l, rep);
            lg[unc] = __fsub_rn(l, __fadd_rn(freq, pres));
        }
        __syncthreads();
    }
    if (P[17] >= 0) {
        // The allow mask: one word per 32 tokens (a warp's 32 lanes read the same word).
        const u32* mk = (const u32*)(entries + P[17]);
        for (int i = tid; i < vocab; i += SAMPLE_THREADS)
            if (!((mk[i >> 5] >> (i & 31)) & 1u)) lg[i] = NEG_INF;
        __syncthreads();
    }

    float best = NEG_INF;
    int bi = 0x7fffffff;
    for_row(lg, vocab, [&](int i, float v) {
        if (v > best || (v == best && i < bi)) { best = v; bi = i; }
    });
    block_argmax(best, bi, shf, shi);
    const float temp = __int_as_float(P[1]);
    const int top_k = P[2];
    if (mode == MODE_GREEDY || !(temp > 0.f) || top_k == 1 || !(best > NEG_INF)) {
        if (tid == 0) out_tokens[row] = bi == 0x7fffffff ? 0 : bi;
        return;
    }
    const float mx = best;
    const double scale = ldexp(1.0, scale_bits);
    const float top_p = __int_as_float(P[3]), min_p = __int_as_float(P[4]);
    const double u = __hiloint2double(P[13], P[12]);

    // Level 0 of every selection: counts and weights over the top 11 key bits; also the number
    // of tokens min-p keeps (e >= min_p * e_max, e_max = 1).
    for (int d = tid; d < 2048; d += SAMPLE_THREADS) { l0_cnt[d] = 0; l0_mass[d] = 0; }
    __syncthreads();
    long long n_min = 0;
    for_row(lg, vocab, [&](int, float l) {
        float x;
        const u32 key = samp_key(l, mx, temp, &x);
        const int d = key >> 20;
        const double e = exp((double)x);
        atomicAdd(&l0_cnt[d], 1u);
        const u64 wgt = __double2ull_rn(e * scale);
        if (wgt) shared_add_u64(&l0_mass[d], wgt);
        if (min_p > 0.f && e >= (double)min_p) ++n_min;
    });
    __syncthreads();
    n_min = block_sum_ll(n_min, shl);
    long long total = 0;
    for (int d = tid; d < 2048; d += SAMPLE_THREADS) total += (long long)l0_mass[d];
    const u64 W = (u64)block_sum_ll(total, shl);

    // Kept prefix length N = min(top_k, top-p cut, min-p count).
    u32 n = (u32)vocab;
    if (top_k > 0 && top_k < vocab) n = (u32)top_k;
    if (top_p < 1.f) {
        u64 theta = (u64)ceil((double)top_p * (double)W);
        theta = theta < 1 ? 1 : (theta > W ? W : theta);
        const Sel s = radix_select(sh, l0_cnt, l0_mass, wc, wm, lg, vocab, mx, temp, scale, true, true, theta);
        const u32 np = pos_by_mass(s, theta) + 1;
        n = np < n ? np : n;
    }
    if (min_p > 0.f) {
        const u32 nm = n_min < 1 ? 1u : (u32)n_min;
        n = nm < n ? nm : n;
    }
    u64 kept = W;
    if (n < (u32)vocab) {
        const Sel s = radix_select(sh, l0_cnt, l0_mass, wc, wm, lg, vocab, mx, temp, scale, true, false,
                                   (u64)(n - 1));
        kept = s.mass_before + (u64)(n - s.cnt_before) * (s.grp_mass / s.grp_cnt);
    }
    // The draw: the first position whose inclusive weight exceeds floor(u * kept).
    u64 theta = (u64)floor(u * (double)kept) + 1;
    if (theta > kept) theta = kept;
    const Sel s = radix_select(sh, l0_cnt, l0_mass, wc, wm, lg, vocab, mx, temp, scale, true, true, theta);
    u32 pos = pos_by_mass(s, theta);
    if (pos > n - 1) pos = n - 1;  // only reachable through a zero-weight tail
    const int r = (int)(pos - s.cnt_before);
    const int tok = nth_with_key(sh, lg, vocab, mx, temp, true, s.key, r);
    if (tid == 0) out_tokens[row] = tok < 0 ? bi : tok;
}

// (key, index) of a top-N candidate as one u64: a smaller value ranks first (logit descending,
// index ascending, the order of the radix selection's ties).
__device__ __forceinline__ u64 lp_pack(float l, int i) { return ((u64)logit_key(l) << 32) | (u32)i; }

// Keeps the LP_TOP smallest candidates in b (ascending): c inserted by one compare-exchange per
// place (static register indexing).
#define LP_TOP 8
__device__ __forceinline__ void lp_insert(u64* b, u64 c) {
#pragma unroll
    for (int k = 0; k < LP_TOP; ++k) {
        const u64 lo = b[k] < c ? b[k] : c;
        c = b[k] < c ? c : b[k];
        b[k] = lo;
    }
}

// Top-N up to LP_MID takes the candidates' path too (the warps' lists merged by rank), falling
// back to the radix selection where a thread's LP_TOP candidates may have been too few.
#define LP_MID 32

// The n smallest of the warp's lanes' ascending lists b (consumed), in order, written by lane 0
// to shared out[0..n). Candidates are distinct (their indices are). Returns true on a lane whose
// LP_TOP candidates were all taken before the last round: what it dropped (worse than its
// LP_TOP-th) may then belong in the n, so its warp's result is not known to be complete. A lane
// whose list ends in the last round, or never runs out, dropped only elements worse than the
// n-th.
__device__ __forceinline__ bool lp_warp_top(u64* b, int n, u64* out) {
    int taken = 0;
    bool short_list = false;
    for (int r = 0; r < n; ++r) {
        u64 w = b[0];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const u64 x = __shfl_xor_sync(FULL_MASK, w, o);
            w = x < w ? x : w;
        }
        if (b[0] == w) {
            if (++taken == LP_TOP && r + 1 < n) short_list = true;
#pragma unroll
            for (int k = 0; k + 1 < LP_TOP; ++k) b[k] = b[k + 1];
            b[LP_TOP - 1] = ~0ull;
        }
        if ((threadIdx.x & 31) == 0) out[r] = w;
    }
    return short_list;
}

// Log-probabilities of the (penalised) logits rows, for rows with P[11] >= 0 (top_n): writes at
// word P[16] of `out`: lse (f32), the logit of tokens[row], the logits of the P[15] requested ids
// (ids[P[14]..]; an id < 0 or >= vocab gives -inf), then top_n (token, logit) pairs, unordered
// (the host orders them: logit descending, then token ascending). lse = max + ln(sum exp(l -
// max)) as logprobs.rs, in one pass over the row: each thread keeps its running maximum and its
// sum of exponentials around it (f32 exp, f64 sum, rescaled when the maximum moves; the block
// then scales each thread's sum to the row's maximum), and for top_n <= LP_MID its best LP_TOP
// candidates, which each warp merges over its lanes into its top_n; the row's top_n are then the
// first warp's merge of those lists (top_n <= LP_TOP) or, up to LP_MID, each list entry's rank
// among all of them (a binary search per list). Where a thread may have held more than LP_TOP
// of its warp's top_n (lp_warp_top), and for larger top_n, the row's top_n are selected by radix
// on the logit key instead (further passes). Every order is fixed, so a row's words are the same
// in every launch and batch (within ~1e-7 of the host's f64 exponentials).
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) logprob_rows(
    const float* logits, int vocab, const int* params, const int* ids, const int* tokens,
    int* out) {
    pdl_enter();
    __shared__ SelShared sh;
    __shared__ u32 wc[2048];
    __shared__ u64 wm[2048];
    __shared__ float shf[32];
    __shared__ int shi[32];
    __shared__ double shd[32];
    __shared__ int slot, short_lists;
    const int row = blockIdx.x, tid = threadIdx.x;
    const int* P = params + (u64)row * ROW_WORDS;
    const int top_n = P[11];
    if (top_n < 0) return;
    if (tid == 0) short_lists = 0;  // read after block_argmax's barriers
    const float* lg = logits + (u64)row * vocab;
    int* o = out + P[16];
    const int n = top_n < vocab ? top_n : vocab;
    const bool few = n <= LP_MID;
    float m = NEG_INF;
    double s = 0.0;
    u64 best[LP_TOP];
#pragma unroll
    for (int k = 0; k < LP_TOP; ++k) best[k] = ~0ull;
    for_row(lg, vocab, [&](int i, float v) {
        if (v > m) {
            s = m > NEG_INF ? s * (double)expf(m - v) : 0.0;
            m = v;
        }
        if (v > NEG_INF) s += (double)expf(v - m);
        if (few) {
            const u64 c = lp_pack(v, i);
            if (c < best[LP_TOP - 1]) lp_insert(best, c);
        }
    });
    float mx = m;
    int mi = 0;
    block_argmax(mx, mi, shf, shi);
    const double sum = block_sum_f64(m > NEG_INF ? s * exp((double)(m - mx)) : 0.0, shd);
    const float lse = mx > NEG_INF ? mx + (float)log(sum) : NEG_INF;
    const int nids = P[15];
    if (tid == 0) {
        o[0] = __float_as_int(lse);
        const int t = tokens[row];
        o[1] = __float_as_int(t >= 0 && t < vocab ? lg[t] : NEG_INF);
    }
    for (int j = tid; j < nids; j += SAMPLE_THREADS) {
        const int t = ids[P[14] + j];
        o[2 + j] = __float_as_int(t >= 0 && t < vocab ? lg[t] : NEG_INF);
    }
    if (n == 0) return;
    int* top = o + 2 + nids;
    if (few) {
        // [warps][n]: each warp's top n, ascending; then [n] past them, the row's.
        constexpr int NW = SAMPLE_THREADS >> 5;
        u64* wt = wm;
        const int lane = tid & 31, w = tid >> 5;
        const bool short_list = lp_warp_top(best, n, wt + w * n);
        if (__any_sync(FULL_MASK, short_list) && lane == 0) short_lists = 1;
        __syncthreads();
        // A short list somewhere: the radix selection below (uniform over the block).
        if (!short_lists) {
            if (n <= LP_TOP) {
                if (w == 0) {
                    u64* row_top = wt + NW * n;
#pragma unroll
                    for (int k = 0; k < LP_TOP; ++k)
                        best[k] = lane < NW && k < n ? wt[lane * n + k] : ~0ull;
                    lp_warp_top(best, n, row_top);
                    __syncwarp();
                    if (lane < n) {
                        const int i = (int)(u32)row_top[lane];
                        top[2 * lane] = i;
                        top[2 * lane + 1] = __float_as_int(lg[i]);
                    }
                }
            } else if (tid < NW * n) {
                // Entry tid's rank among every warp's list (NW * n <= SAMPLE_THREADS entries;
                // each real one distinct, the padding of short warps ~0): its place in the
                // row's top n.
                const u64 c = wt[tid];
                int rank = 0;
                for (int v = 0; v < NW; ++v) {
                    const u64* list = wt + v * n;
                    int lo = 0, hi = n;
                    while (lo < hi) {
                        const int mid = (lo + hi) >> 1;
                        if (list[mid] < c) lo = mid + 1;
                        else hi = mid;
                    }
                    rank += lo;
                }
                if (rank < n && c != ~0ull) {
                    const int i = (int)(u32)c;
                    top[2 * rank] = i;
                    top[2 * rank + 1] = __float_as_int(lg[i]);
                }
            }
            return;
        }
    }
    const Sel sel = radix_select(sh, nullptr, nullptr, wc, wm, lg, vocab, 0.f, 1.f, 1.0, false, false,
                                 (u64)(n - 1));
    const int last = nth_with_key(sh, lg, vocab, 0.f, 1.f, false, sel.key, (int)(n - 1 - sel.cnt_before));
    if (tid == 0) slot = 0;
    __syncthreads();
    for (int i = tid; i < vocab; i += SAMPLE_THREADS) {
        const u32 k = logit_key(lg[i]);
        if (k < sel.key || (k == sel.key && i <= last)) {
            const int at = atomicAdd(&slot, 1);
            top[2 * at] = i;
            top[2 * at + 1] = __float_as_int(lg[i]);
        }
    }
}

// Greedy pick per row of f32 logits [rows, vocab]: the index of the largest value, lowest index on
// ties (the CPU `argmax`). One block per row (1024 threads from the launcher: at batch 1 the pick is
// one block's latency, so each thread reads 16-byte chunks, several in flight); graph-capturable (no
// host inputs). Each thread visits its elements in increasing index order and keeps the first of
// equal maxima, and block_argmax prefers the lower index, so the result does not depend on the
// block size or the chunking.
extern "C" __global__ void __launch_bounds__(1024) argmax_rows(const float* logits, int vocab,
                                                               int* out_tokens) {
    pdl_enter();
    __shared__ float shv[32];
    __shared__ int shi[32];
    const float* row = logits + (u64)blockIdx.x * vocab;
    float v = NEG_INF;
    int i = 0x7fffffff;
    if ((vocab & 3) == 0 && ((u64)row & 15) == 0) {
        const float4* r4 = (const float4*)row;
        const int n4 = vocab >> 2;
#pragma unroll 4
        for (int c = threadIdx.x; c < n4; c += blockDim.x) {
            const float4 x = r4[c];
            const int j = c * 4;
            if (x.x > v) { v = x.x; i = j; }
            if (x.y > v) { v = x.y; i = j + 1; }
            if (x.z > v) { v = x.z; i = j + 2; }
            if (x.w > v) { v = x.w; i = j + 3; }
        }
    } else {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            const float x = row[j];
            if (x > v) { v = x; i = j; }
        }
    }
    block_argmax(v, i, shv, shi);
    if (threadIdx.x == 0) out_tokens[blockIdx.x] = i == 0x7fffffff ? 0 : i;
}
