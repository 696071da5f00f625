// Minimal CUDA emulation on host threads, for the kernels' logic in CI (which has no GPU): one
// std::thread per CUDA thread of a block, blocks run one after another on them, `__syncthreads`
// is a std::barrier of the block, warp shuffles and ballots exchange through a per-warp buffer
// between two per-warp barriers, `__shared__` variables are function statics (shared by the
// block's threads), atomics are std::atomic_ref. Valid only for kernels whose barriers are
// reached by every thread of the block and whose warp collectives by every lane of the warp, as
// the sampling and single-row GEMV kernels' are. Float arithmetic is the host's IEEE single /
// double (compile with -ffp-contract=off); `exp`/`log`/`sincosf` are the host libm's. Dynamic
// shared memory (`DYN_SHARED`) is a static array of 128 KiB per declaration.
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#include <memory>
struct Dim3 { unsigned x, y, z; };
thread_local Dim3 threadIdx, blockIdx;
Dim3 blockDim, gridDim;
std::unique_ptr<std::barrier<>> g_block_bar;
std::vector<std::unique_ptr<std::barrier<>>> g_warp_bar;
static uint64_t g_warp_buf[64][32];
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define DYN_SHARED(T, name) static T name[(128 << 10) / sizeof(T)]
#define __shared__ static
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { g_warp_bar[threadIdx.x >> 5]->arrive_and_wait(); }
template <class T> T shfl_from(T v, int src) {
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint64_t bits = 0; std::memcpy(&bits, &v, sizeof(T));
    g_warp_buf[w][lane] = bits;
    g_warp_bar[w]->arrive_and_wait();
    uint64_t got = g_warp_buf[w][src];
    g_warp_bar[w]->arrive_and_wait();
    T r; std::memcpy(&r, &got, sizeof(T));
    return r;
}
template <class T> T __shfl_xor_sync(unsigned, T v, int o) { return shfl_from(v, (threadIdx.x & 31) ^ o); }
template <class T> T __shfl_up_sync(unsigned, T v, unsigned o) {
    int lane = threadIdx.x & 31; return shfl_from(v, lane >= (int)o ? lane - (int)o : lane);
}
inline unsigned __ballot_sync(unsigned, bool p) {
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    g_warp_buf[w][lane] = p ? 1 : 0;
    g_warp_bar[w]->arrive_and_wait();
    unsigned m = 0; for (int j = 0; j < 32; ++j) if (g_warp_buf[w][j]) m |= 1u << j;
    g_warp_bar[w]->arrive_and_wait();
    return m;
}
inline bool __any_sync(unsigned m, bool p) { return __ballot_sync(m, p) != 0; }
template <class T, class U> T atomicAdd(T* p, U v) { return std::atomic_ref<T>(*p).fetch_add((T)v); }
template <class T, class U> T atomicExch(T* p, U v) { return std::atomic_ref<T>(*p).exchange((T)v); }
template <class T, class U> T atomicMax(T* p, U v) {
    std::atomic_ref<T> r(*p);
    T old = r.load();
    while (old < (T)v && !r.compare_exchange_weak(old, (T)v)) {}
    return old;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float x) { int f; std::memcpy(&f, &x, 4); return f; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float x) { unsigned f; std::memcpy(&f, &x, 4); return f; }
// mma.sync.m16n8k16 bf16 -> f32 (common.cuh mma_bf16_16816) of one warp: every lane deposits its A and B
// fragments, then computes its own four accumulators (rows g and g + 8, columns 2q and 2q + 1,
// g = lane / 4, q = lane % 4) from all of them, the 16 products added in k order (the
// hardware's order is its own: results compare within tolerance, not bit for bit). Two deposit
// buffers used in turn: a lane can write call i + 2's only after every lane passed call i + 1's
// barrier, i.e. finished reading call i's, so one barrier per call suffices.
#define STRATA_CUDA_EMU 1
static unsigned g_mma_buf[2][64][32][6];
thread_local int g_mma_turn;
inline void emu_mma16816(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    auto& buf = g_mma_buf[g_mma_turn ^= 1][w];
    const unsigned mine[6] = {a0, a1, a2, a3, b0, b1};
    std::memcpy(buf[lane], mine, sizeof mine);
    g_warp_bar[w]->arrive_and_wait();
    auto half = [](unsigned v, int hi) { return hi ? __uint_as_float(v & 0xffff0000u) : __uint_as_float(v << 16); };
    // A[r][k] lives in lane (r % 8) * 4 + (k % 8) / 2, register (k >= 8) * 2 + (r >= 8), half k % 2;
    // B[k][n] in lane n * 4 + (k % 8) / 2, register 4 + (k >= 8), half k % 2.
    auto A = [&](int r, int k) { return half(buf[(r % 8) * 4 + (k % 8) / 2][(k >= 8) * 2 + (r >= 8)], k % 2); };
    auto B = [&](int k, int n) { return half(buf[n * 4 + (k % 8) / 2][4 + (k >= 8)], k % 2); };
    for (int i = 0; i < 4; ++i) {
        const int r = g + 8 * (i >> 1), n = 2 * q + (i & 1);
        float s = c[i];
        for (int k = 0; k < 16; ++k) s += A(r, k) * B(k, n);
        c[i] = s;
    }
}
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline unsigned long long __double2ull_rn(double x) { return (unsigned long long)std::nearbyint(x); }
inline double __hiloint2double(int hi, int lo) {
    uint64_t b = ((uint64_t)(uint32_t)hi << 32) | (uint32_t)lo; double d; std::memcpy(&d, &b, 8); return d;
}
using std::exp; using std::log; using std::ceil; using std::floor; using std::ldexp; using std::min;
struct uint4 { unsigned x, y, z, w; };
struct float4 { float x, y, z, w; };
struct float2 { float x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
template <class T> T __ldg(const T* p) { return *p; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// Runs grid blocks of f one after another on `block` host threads (created once per launch and
// reused: a block barrier between blocks, so a block's shared statics and warp buffers are free
// before the next block starts).
template <class F> void launch(unsigned grid, unsigned block, F f) {
    blockDim = {block, 1, 1}; gridDim = {grid, 1, 1};
    g_block_bar = std::make_unique<std::barrier<>>(block);
    g_warp_bar.clear();
    for (unsigned w = 0; w < block / 32; ++w) g_warp_bar.push_back(std::make_unique<std::barrier<>>(32));
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < block; ++t)
        ts.emplace_back([=] {
            threadIdx = {t, 0, 0};
            for (unsigned b = 0; b < grid; ++b) {
                blockIdx = {b, 0, 0};
                f();
                g_block_bar->arrive_and_wait();
            }
        });
    for (auto& t : ts) t.join();
}
