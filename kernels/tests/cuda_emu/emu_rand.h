// Seeded test data for the emulated kernels' mains (fused_main.cpp, lora_main.cpp): SplitMix64
// from the seed in g_rng (each main sets it from its argument), bf16 vectors uniform around a
// center. Include after shim.h and common.cuh (bf16_t, f2bf).
#pragma once
static uint64_t g_rng;
static uint64_t next_u64() {
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
// n bf16 values uniform in [center - scale, center + scale).
static std::vector<bf16_t> bf16_vec(size_t n, float scale, float center = 0.f) {
    std::vector<bf16_t> v(n);
    for (auto& x : v) x = f2bf(center + scale * (float)((double)(next_u64() >> 11) / 9007199254740992.0 * 2.0 - 1.0));
    return v;
}
