// Runs argmax_rows, sample_rows and logprob_rows of kernels/cuda/sampling.cu under shim.h.
// Usage: emu IN OUT. IN: u32 vocab, rows, scale_bits, words, lp_words, ids_at; i32 words[words];
// f32 logits[rows * vocab]. OUT: i32 tokens[rows]; f32 logits after the kernels; i32 lp[lp_words].
#include "shim.h"
#include <cstdio>
#include "common.cuh"
#include "sampling.cu"
int main(int argc, char** argv) {
    if (argc != 3) return 2;
    FILE* f = fopen(argv[1], "rb");
    if (!f) return 2;
    uint32_t h[6];
    if (fread(h, 4, 6, f) != 6) return 2;
    const int vocab = h[0], rows = h[1], scale = (int)h[2], nwords = h[3], lpw = h[4], ids_at = h[5];
    std::vector<int> words(nwords);
    std::vector<float> logits((size_t)rows * vocab);
    if (fread(words.data(), 4, nwords, f) != (size_t)nwords) return 2;
    if (fread(logits.data(), 4, logits.size(), f) != logits.size()) return 2;
    fclose(f);
    std::vector<int> tokens(rows, -7), lp(lpw > 0 ? lpw : 1, 0);
    float* L = logits.data();
    int *T = tokens.data(), *W = words.data(), *LP = lp.data();
    launch(rows, 256, [=] { argmax_rows(L, vocab, T); });
    launch(rows, SAMPLE_THREADS, [=] { sample_rows(L, vocab, W, W + rows * ROW_WORDS, scale, T); });
    if (lpw > 0) launch(rows, SAMPLE_THREADS, [=] { logprob_rows(L, vocab, W, W + ids_at, T, LP); });
    FILE* o = fopen(argv[2], "wb");
    if (!o) return 2;
    fwrite(tokens.data(), 4, rows, o);
    fwrite(logits.data(), 4, logits.size(), o);
    fwrite(lp.data(), 4, lpw, o);
    fclose(o);
    return 0;
}
