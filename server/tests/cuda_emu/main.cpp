// Runs argmax_rows, sample_rows and logprob_rows of kernels/cuda/sampling.cu under shim.h.
// Usage: emu IN OUT. IN: u32 vocab, rows, scale_bits, words, lp_words, ids_at, pending;
// i32 words[words]; f32 logits[rows * vocab]; i32 pending ids[pending] (the device ids rows'
// uncounted tokens index, row word 18). OUT: i32 tokens[rows]; f32 logits after the kernels; i32 lp[lp_words].
// Or: emu --sum64 SEED: one block adds seeded 47-bit weights into three shared bins with
// shared_add_u64 (every lane colliding) and compares the bins with the host's sums; exit 0 if
// equal.
#include "shim.h"
#include <cstdio>
#include <cstdlib>
#include <string>
#include "common.cuh"
#include "sampling.cu"
static int sum64(uint64_t seed) {
    const int per = 40, n = SAMPLE_THREADS * per;
    std::vector<uint64_t> v(n);
    uint64_t host[3] = {0, 0, 0};
    for (int i = 0; i < n; ++i) {
        seed += 0x9E3779B97F4A7C15ull;  // SplitMix64
        uint64_t z = seed;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        v[i] = (z ^ (z >> 31)) >> 17;  // < 2^47: n of them stay below 2^62
        host[i % 3] += v[i];
    }
    uint64_t got[3];
    const uint64_t* V = v.data();
    uint64_t* G = got;
    launch(1, SAMPLE_THREADS, [=] {
        __shared__ u64 bins[3];
        if (threadIdx.x < 3) bins[threadIdx.x] = 0;
        __syncthreads();
        for (int k = 0; k < per; ++k) {
            const int i = k * SAMPLE_THREADS + threadIdx.x;
            shared_add_u64(&bins[i % 3], V[i]);
        }
        __syncthreads();
        if (threadIdx.x < 3) G[threadIdx.x] = bins[threadIdx.x];
    });
    int bad = 0;
    for (int b = 0; b < 3; ++b) {
        printf("%s bin %d: %llu vs host %llu\n", got[b] == host[b] ? "ok" : "FAIL", b,
               (unsigned long long)got[b], (unsigned long long)host[b]);
        bad += got[b] != host[b];
    }
    return bad ? 1 : 0;
}
int main(int argc, char** argv) {
    if (argc == 3 && std::string(argv[1]) == "--sum64")
        return sum64(strtoull(argv[2], nullptr, 10));
    if (argc != 3) return 2;
    FILE* f = fopen(argv[1], "rb");
    if (!f) return 2;
    uint32_t h[7];
    if (fread(h, 4, 7, f) != 7) return 2;
    const int vocab = h[0], rows = h[1], scale = (int)h[2], nwords = h[3], lpw = h[4], ids_at = h[5];
    std::vector<int> words(nwords), pending(h[6] + 1);
    std::vector<float> logits((size_t)rows * vocab);
    if (fread(words.data(), 4, nwords, f) != (size_t)nwords) return 2;
    if (fread(logits.data(), 4, logits.size(), f) != logits.size()) return 2;
    if (fread(pending.data(), 4, h[6], f) != h[6]) return 2;
    const int* PD = h[6] > 0 ? pending.data() : nullptr;
    fclose(f);
    std::vector<int> tokens(rows, -7), lp(lpw > 0 ? lpw : 1, 0);
    float* L = logits.data();
    int *T = tokens.data(), *W = words.data(), *LP = lp.data();
    launch(rows, 256, [=] { argmax_rows(L, vocab, T); });
    launch(rows, SAMPLE_THREADS, [=] { sample_rows(L, vocab, W, W + rows * ROW_WORDS, scale, T, PD); });
    if (lpw > 0) launch(rows, SAMPLE_THREADS, [=] { logprob_rows(L, vocab, W, W + ids_at, T, LP); });
    FILE* o = fopen(argv[2], "wb");
    if (!o) return 2;
    fwrite(tokens.data(), 4, rows, o);
    fwrite(logits.data(), 4, logits.size(), o);
    fwrite(lp.data(), 4, lpw, o);
    fclose(o);
    return 0;
}
