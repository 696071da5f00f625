// The per-row LoRA kernels of kernels/cuda/lora.cu (lora_shrink, lora_expand) against a direct
// host computation, run on the CPU under shim.h: rows of three adapters of different ranks
// (one of them rank 0 for the projection), rows without an adapter, ranks above the mid
// buffer's width cut. mid within 1e-5 relative of the double sum; y within one bf16 rounding of
// bf16(y + change); rows without a change bit for bit unchanged.
// Usage: lora_emu SEED. Prints one line per comparison ("ok" or "FAIL ..."); exits 1 on any FAIL.
#include "shim.h"
#include <cstdio>
#include <string>
#include "common.cuh"
#include "lora.cu"

#include "emu_rand.h"

static int g_failed = 0;
static void report(const std::string& what, int bad) {
    if (bad) ++g_failed;
    printf("%s %s%s\n", bad ? "FAIL" : "ok", what.c_str(), bad ? (" (" + std::to_string(bad) + " differ)").c_str() : "");
}

// T rows of x [T, in] and y [T, out]; adapters of ranks `ranks` (slot i), rows' slots cycling
// through -1 and the adapters; mid of width cap.
static void lora_case(int T, int in, int out, std::vector<int> ranks, int cap) {
    const int S = (int)ranks.size();
    std::vector<std::vector<bf16_t>> A(S), Bt(S);
    std::vector<LoraRef> refs(S);
    for (int s = 0; s < S; ++s) {
        A[s] = bf16_vec((size_t)std::max(ranks[s], 1) * in, 0.5f);
        Bt[s] = bf16_vec((size_t)std::max(ranks[s], 1) * out, 0.5f);
        refs[s] = LoraRef{(u64)A[s].data(), (u64)Bt[s].data(), ranks[s], 0};
    }
    std::vector<int> slot(T);
    for (int t = 0; t < T; ++t) slot[t] = (int)(next_u64() % (S + 1)) - 1;
    if (T > 2) slot[0] = -1;
    slot[T > 1 ? 1 : 0] = 0;
    const auto x = bf16_vec((size_t)T * in, 1.f);
    auto y = bf16_vec((size_t)T * out, 2.f);
    const auto y0 = y;
    std::vector<float> mid((size_t)T * cap, -7.f);
    const bf16_t* X = x.data();
    const int* SL = slot.data();
    const LoraRef* R = refs.data();
    float* M = mid.data();
    bf16_t* Y = y.data();
    launch(T * LORA_SHRINK_BLOCKS, 256, [=] { lora_shrink(X, SL, R, S, M, in, cap); });
    const int per_row = (out + 255) / 256;
    launch(T * per_row, 256, [=] { lora_expand(M, SL, R, S, Y, out, cap, per_row); });
    int bad_mid = 0, bad_y = 0, bad_kept = 0;
    for (int t = 0; t < T; ++t) {
        const int s = slot[t];
        const int rank = s < 0 ? 0 : std::min(ranks[s], cap);
        std::vector<double> m(rank);
        for (int r = 0; r < rank; ++r) {
            double acc = 0;
            for (int i = 0; i < in; ++i) acc += (double)bf2f(x[(size_t)t * in + i]) * bf2f(A[s][(size_t)r * in + i]);
            m[r] = acc;
            const double got = mid[(size_t)t * cap + r];
            if (std::fabs(got - acc) > 1e-5 * (std::fabs(acc) + 1.0)) ++bad_mid;
        }
        for (int j = 0; j < out; ++j) {
            const size_t k = (size_t)t * out + j;
            if (rank == 0) {
                bad_kept += y[k] != y0[k];
                continue;
            }
            double d = 0;
            for (int r = 0; r < rank; ++r) d += (double)mid[(size_t)t * cap + r] * bf2f(Bt[s][(size_t)r * out + j]);
            const double want = bf2f(y0[k]) + d;
            // One bf16 rounding of the exact sum, plus the f32 sum's own error.
            const double ulp = std::ldexp(1.0, (int)std::floor(std::log2(std::fabs(want) + 1e-30)) - 7);
            if (std::fabs(bf2f(y[k]) - want) > ulp + 1e-4 * (std::fabs(d) + 1.0)) ++bad_y;
        }
    }
    const std::string shape = "T" + std::to_string(T) + " in" + std::to_string(in) + " out" +
                              std::to_string(out) + " cap" + std::to_string(cap);
    report("lora_shrink " + shape, bad_mid);
    report("lora_expand " + shape, bad_y);
    report("lora rows kept " + shape, bad_kept);
}

int main(int argc, char** argv) {
    g_rng = argc > 1 ? strtoull(argv[1], nullptr, 10) : 1;
    lora_case(7, 256, 384, {16, 0, 8}, 64);
    lora_case(5, 2048, 1000, {48, 24}, 64);
    lora_case(4, 512, 300, {40, 8}, 32);  // rank 40 cut at the mid width 32
    lora_case(1, 64, 64, {8}, 8);
    lora_case(3, 128, 96, {200, 136}, 256);  // past one pass of 128 ranks per row
    return g_failed ? 1 : 0;
}
