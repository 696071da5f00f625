// The fused single-row decode kernels of kernels/cuda/gemv.cu against the kernels they replace
// (elementwise.cu and the plain GEMV), run on the CPU under shim.h: bit for bit, every output and
// pool row. What this holds in CI is the kernels' logic (weight-row maps, epilogue indexing, the
// staged norm replaying rmsnorm's reduction tree); rounding that depends on how nvcc contracts
// FMAs is `strata gpu check`'s to see on a GPU.
// Usage: fused_emu SEED. Prints one line per comparison ("ok" or "FAIL", the differing count);
// exits 1 when any differs.
#include "shim.h"
#include <algorithm>
#include <cstdio>
#include <string>
#include "common.cuh"
#include "elementwise.cu"
#include "gemv.cu"
#include "gemv_mma.cu"

#include "emu_rand.h"

static int g_failed = 0;
// Within `tol` relative error (the norm of the difference over the norm of b), for the mma
// kernels, whose sums run in another order.
static void expect_close(const std::string& what, const std::vector<bf16_t>& a, const std::vector<bf16_t>& b,
                         double tol = 1e-2) {
    double num = a.size() == b.size() ? 0 : 1e30, den = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
        const double d = (double)bf2f(a[i]) - bf2f(b[i]);
        num += d * d;
        den += (double)bf2f(b[i]) * bf2f(b[i]);
    }
    const double err = std::sqrt(num / (den > 0 ? den : 1));
    const bool ok = err <= tol;
    printf("%s %s (relative error %.2e)\n", ok ? "ok" : "FAIL", what.c_str(), err);
    g_failed += !ok;
}
static void expect_same(const std::string& what, const std::vector<bf16_t>& a, const std::vector<bf16_t>& b) {
    size_t diff = a.size() == b.size() ? 0 : a.size() + b.size();
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) diff += a[i] != b[i];
    printf("%s %s (%zu of %zu differ)\n", diff ? "FAIL" : "ok", what.c_str(), diff, a.size());
    g_failed += diff != 0;
}
// Launch shape of the single-row GEMVs (gemm.rs t1_dims): a warp per output, 8 per block.
static unsigned t1_grid(int n) { return (unsigned)((n + 7) / 8); }

// The single-row qkv GEMV with RoPE and the pool write (mode 0: of the row x; 1: of the input
// norm of y + resid staged; 2: of resid alone), DEPTH 1 and 2, against rmsnorm + GEMV +
// rope_kv_write.
static void qkv_rope(int nq, int nk, int hd, int pos, int slot) {
    const int k = 2048, width = (nq + 2 * nk) * hd, kv_dim = nk * hd, slots = 8;
    const auto x = bf16_vec(k, 1.f), y = bf16_vec(k, 1.f), resid0 = bf16_vec(k, 1.f);
    const auto nw = bf16_vec(k, 0.5f, 1.f);
    const auto w = bf16_vec((size_t)width * k, 0.05f), pool0 = bf16_vec((size_t)slots * kv_dim, 1.f);
    std::vector<float> inv(hd / 2);
    for (int i = 0; i < hd / 2; ++i) inv[i] = powf(500000.f, -2.f * i / hd);
    const int p[1] = {pos}, s[1] = {slot};
    const float eps = 1e-5f;
    for (int mode = 0; mode < 3; ++mode) {
        // Unfused: the norm into h (residual added into a copy), then the GEMV and rope_kv_write.
        std::vector<bf16_t> h = x, r = resid0, qkv(width), kp = pool0, vp = pool0;
        {
            bf16_t *H = h.data(), *R = r.data();
            const bf16_t *Y = y.data(), *NW = nw.data();
            if (mode == 1) launch(1, k / 8, [=] { rmsnorm(Y, R, NW, H, k, eps); });
            if (mode == 2) launch(1, k / 8, [=] { rmsnorm(R, nullptr, NW, H, k, eps); });
            const bf16_t* W = w.data();
            bf16_t *Q = qkv.data(), *KP = kp.data(), *VP = vp.data();
            const float* I = inv.data();
            launch(t1_grid(width), 256, [=] { gemv_bf16_t1(H, W, Q, width, k, 0); });
            launch(1, 32, [=] { rope_kv_write(Q, width, 0, nq, nq * hd, nk, (nq + nk) * hd, p, I, hd, KP, VP, s); });
        }
        for (int depth = 1; depth <= 2; ++depth) {
            std::vector<bf16_t> r2 = resid0, qkv2(width), kp2 = pool0, vp2 = pool0;
            bf16_t *R = r2.data(), *Q = qkv2.data(), *KP = kp2.data(), *VP = vp2.data();
            const bf16_t* X = mode == 0 ? x.data() : mode == 1 ? y.data() : nullptr;
            const bf16_t *W = w.data(), *NW = mode == 0 ? nullptr : nw.data();
            const bf16_t* RI = mode == 0 ? nullptr : R;
            const float* I = inv.data();
            const int pairs = width / 2;
            if (depth == 1)
                launch(t1_grid(pairs), 256, [=] {
                    gemv_bf16_t1_qkv_rope(X, W, Q, pairs, k, nq, nk, hd, p, I, KP, VP, s, RI, NW, eps);
                });
            else
                launch(t1_grid(pairs), 256, [=] {
                    gemv_bf16_t1_qkv_rope_pipe(X, W, Q, pairs, k, nq, nk, hd, p, I, KP, VP, s, RI, NW, eps);
                });
            const char* of[] = {"h", "rmsnorm(y + resid)", "rmsnorm(resid)"};
            const std::string what = std::string("qkv+RoPE of ") + of[mode] + " h" + std::to_string(nq) + "/" +
                                     std::to_string(nk) + " d" + std::to_string(hd) + " pos" + std::to_string(pos) +
                                     " slot" + std::to_string(slot) + " depth" + std::to_string(depth);
            expect_same(what + ": qkv", qkv2, qkv);
            expect_same(what + ": k pool", kp2, kp);
            expect_same(what + ": v pool", vp2, vp);
            // The staged norm leaves the residual alone.
            expect_same(what + ": residual untouched", r2, resid0);
        }
    }
}

// The gate GEMV with SiLU * up in its epilogue against the GEMV of gate_up and silu_mul.
static void gate_silu(int k, int inter) {
    const auto x = bf16_vec(k, 1.f), w = bf16_vec((size_t)2 * inter * k, 0.05f);
    std::vector<bf16_t> gu(2 * inter), act(inter), fused(inter);
    const bf16_t *X = x.data(), *W = w.data();
    bf16_t *GU = gu.data(), *A = act.data(), *F = fused.data();
    launch(t1_grid(2 * inter), 256, [=] { gemv_bf16_t1(X, W, GU, 2 * inter, k, 0); });
    launch(1, 256, [=] { silu_mul(GU, A, inter); });
    for (int depth = 1; depth <= 2; ++depth) {
        if (depth == 1) launch(t1_grid(inter), 256, [=] { gemv_bf16_t1_gate(X, W, F, inter, k, 0); });
        else launch(t1_grid(inter), 256, [=] { gemv_bf16_t1_gate_pipe(X, W, F, inter, k, 0); });
        expect_same("gate_up+SiLU in" + std::to_string(k) + " inter" + std::to_string(inter) + " depth" +
                        std::to_string(depth),
                    fused, act);
    }
}

// The down GEMV with silu_mul staged in every block (the fallback where the gate epilogue does
// not apply) against silu_mul and the plain GEMV.
static void silu_down(int inter, int out) {
    const auto gu = bf16_vec(2 * inter, 2.f), w = bf16_vec((size_t)out * inter, 0.05f);
    std::vector<bf16_t> act(inter), y(out), fused(out);
    const bf16_t *GU = gu.data(), *W = w.data();
    bf16_t *A = act.data(), *Y = y.data(), *F = fused.data();
    launch(1, 256, [=] { silu_mul(GU, A, inter); });
    launch(t1_grid(out), 256, [=] { gemv_bf16_t1(A, W, Y, out, inter, 0); });
    for (int depth = 1; depth <= 2; ++depth) {
        if (depth == 1) launch(t1_grid(out), 256, [=] { gemv_bf16_t1_silu(GU, W, F, out, inter, 0); });
        else launch(t1_grid(out), 256, [=] { gemv_bf16_t1_silu_pipe(GU, W, F, out, inter, 0); });
        expect_same("SiLU staged in down inter" + std::to_string(inter) + " out" + std::to_string(out) +
                        " depth" + std::to_string(depth),
                    fused, y);
    }
}

// rope_kv_write (its 16-byte path where head_dim allows) against rope + kv_write on T token
// rows of a fused qkv projection, one slot skipped (-1); nq 0 leaves Q alone.
static void rope_kv_write_case(int nq, int nk, int hd) {
    const int t = 3, width = (nq + 2 * nk) * hd, kv_dim = nk * hd, slots = 8;
    const auto qkv0 = bf16_vec((size_t)t * width, 2.f), pool0 = bf16_vec((size_t)slots * kv_dim, 1.f);
    std::vector<float> inv(hd / 2);
    for (int i = 0; i < hd / 2; ++i) inv[i] = powf(500000.f, -2.f * i / hd);
    static const int pos[3] = {5, 70000, 131071}, sl[3] = {6, -1, 1};
    const float* I = inv.data();
    std::vector<bf16_t> a = qkv0, ka = pool0, va = pool0, b = qkv0, kb = pool0, vb = pool0;
    bf16_t *A = a.data(), *KA = ka.data(), *VA = va.data(), *B = b.data(), *KB = kb.data(), *VB = vb.data();
    launch(t, 64, [=] { rope_kv_write(A, width, 0, nq, nq * hd, nk, (nq + nk) * hd, pos, I, hd, KA, VA, sl); });
    launch(t, 64, [=] { rope(B, width, nq, B + nq * hd, width, nk, pos, I, hd); });
    launch(t, 64, [=] { kv_write(B + nq * hd, width, B + (nq + nk) * hd, width, KB, VB, sl, kv_dim); });
    const std::string what = "rope_kv_write h" + std::to_string(nq) + "/" + std::to_string(nk) + " d" + std::to_string(hd);
    expect_same(what + ": qkv rows", a, b);
    expect_same(what + ": k pool", ka, kb);
    expect_same(what + ": v pool", va, vb);
}

// The few-row GEMVs (T = 2, 4, 8 rows staged, `rows` of them live; T = 0: the mma kernels of
// gemv_mma.cu) against the single-row kernels on each row: plain (y of each row), gate_up +
// SiLU, and qkv + RoPE + pool write (of the rows, of rmsnorm(y + resid) and of rmsnorm(resid)
// staged), every row its own position and slot (one skipped). The exact kernels bit for bit,
// the mma ones within tolerance, on a persistent grid of at most 3 blocks (gemm_rows.rs
// mma_grid on a 3-SM device at one block per SM), so blocks loop over several groups.
static unsigned mma_grid(int n, bool paired, int k) {
    const int per_tile = paired ? 8 : 16, steps = (k + 127) / 128;
    const int split = steps >= 8 ? 8 : steps >= 4 ? 4 : steps >= 2 ? 2 : 1;
    const int groups = ((n + per_tile - 1) / per_tile + 8 / split - 1) / (8 / split);
    return (unsigned)std::min(groups, 3);
}
static void rows_check(int T, const std::string& what, const std::vector<bf16_t>& got, const std::vector<bf16_t>& want) {
    if (T == 0) expect_close("mma " + what, got, want);
    else expect_same("rows" + std::to_string(T) + " " + what, got, want);
}
static void rows_plain(int T, int rows, int k, int n) {
    const auto x = bf16_vec((size_t)rows * k, 1.f), w = bf16_vec((size_t)n * k, 0.05f);
    std::vector<bf16_t> want((size_t)rows * n), got((size_t)rows * n);
    const bf16_t *X = x.data(), *W = w.data();
    for (int t = 0; t < rows; ++t) {
        bf16_t* Y = want.data() + (size_t)t * n;
        const bf16_t* Xt = X + (size_t)t * k;
        launch(t1_grid(n), 256, [=] { gemv_bf16_t1(Xt, W, Y, n, k, 0); });
    }
    bf16_t* G = got.data();
    if (T == 2) launch(t1_grid(n), 256, [=] { gemv_bf16_rows2(X, W, G, rows, n, k, 0); });
    if (T == 4) launch(t1_grid(n), 256, [=] { gemv_bf16_rows4(X, W, G, rows, n, k, 0); });
    if (T == 8) launch(t1_grid(n), 256, [=] { gemv_bf16_rows8(X, W, G, rows, n, k, 0); });
    if (T == 0) launch(mma_grid(n, false, k), 256, [=] { gemv_bf16_mma(X, W, G, rows, n, k, 0); });
    rows_check(T, "GEMV of " + std::to_string(rows) + " rows in" + std::to_string(k) + " out" + std::to_string(n),
               got, want);
}
static void rows_gate(int T, int rows, int k, int inter) {
    const auto x = bf16_vec((size_t)rows * k, 1.f), w = bf16_vec((size_t)2 * inter * k, 0.05f);
    std::vector<bf16_t> want((size_t)rows * inter), got((size_t)rows * inter);
    const bf16_t *X = x.data(), *W = w.data();
    for (int t = 0; t < rows; ++t) {
        bf16_t* Y = want.data() + (size_t)t * inter;
        const bf16_t* Xt = X + (size_t)t * k;
        launch(t1_grid(inter), 256, [=] { gemv_bf16_t1_gate(Xt, W, Y, inter, k, 0); });
    }
    bf16_t* G = got.data();
    if (T == 2) launch(t1_grid(inter), 256, [=] { gemv_bf16_rows2_gate(X, W, G, rows, inter, k, 0); });
    if (T == 4) launch(t1_grid(inter), 256, [=] { gemv_bf16_rows4_gate(X, W, G, rows, inter, k, 0); });
    if (T == 8) launch(t1_grid(inter), 256, [=] { gemv_bf16_rows8_gate(X, W, G, rows, inter, k, 0); });
    if (T == 0) launch(mma_grid(inter, true, k), 256, [=] { gemv_bf16_mma_gate(X, W, G, rows, inter, k, 0); });
    rows_check(T, "gate_up+SiLU of " + std::to_string(rows) + " rows in" + std::to_string(k) + " inter" +
                      std::to_string(inter),
               got, want);
}
static void rows_qkv_rope(int T, int rows, int nq, int nk, int hd, int mode) {
    const int k = 2048, width = (nq + 2 * nk) * hd, kv_dim = nk * hd, slots = 16, pairs = width / 2;
    const auto x = bf16_vec((size_t)rows * k, 1.f), resid = bf16_vec((size_t)rows * k, 1.f);
    const auto nw = bf16_vec(k, 0.5f, 1.f), w = bf16_vec((size_t)width * k, 0.05f);
    const auto pool0 = bf16_vec((size_t)slots * kv_dim, 1.f);
    std::vector<float> inv(hd / 2);
    for (int i = 0; i < hd / 2; ++i) inv[i] = powf(500000.f, -2.f * i / hd);
    static int pos[8], sl[8];
    for (int t = 0; t < 8; ++t) {
        pos[t] = (int)(next_u64() % 131072);
        sl[t] = t == 1 ? -1 : 2 * t;  // row 1 writes no slot
    }
    const float* I = inv.data();
    const float eps = 1e-5f;
    const bf16_t *W = w.data(), *NW = mode == 0 ? nullptr : nw.data();
    std::vector<bf16_t> qa((size_t)rows * width), ka = pool0, va = pool0;
    std::vector<bf16_t> qb((size_t)rows * width), kb = pool0, vb = pool0;
    for (int t = 0; t < rows; ++t) {
        const bf16_t* X = mode == 2 ? nullptr : x.data() + (size_t)t * k;
        const bf16_t* R = mode == 0 ? nullptr : resid.data() + (size_t)t * k;
        bf16_t *Q = qa.data() + (size_t)t * width, *KP = ka.data(), *VP = va.data();
        const int *P = pos + t, *S = sl + t;
        launch(t1_grid(pairs), 256, [=] {
            gemv_bf16_t1_qkv_rope(X, W, Q, pairs, k, nq, nk, hd, P, I, KP, VP, S, R, NW, eps);
        });
    }
    const bf16_t* X = mode == 2 ? nullptr : x.data();
    const bf16_t* R = mode == 0 ? nullptr : resid.data();
    bf16_t *Q = qb.data(), *KP = kb.data(), *VP = vb.data();
    const int *P = pos, *S = sl;
    if (T == 2)
        launch(t1_grid(pairs), 256, [=] {
            gemv_bf16_rows2_qkv_rope(X, W, Q, rows, pairs, k, nq, nk, hd, P, I, KP, VP, S, R, NW, eps);
        });
    if (T == 4)
        launch(t1_grid(pairs), 256, [=] {
            gemv_bf16_rows4_qkv_rope(X, W, Q, rows, pairs, k, nq, nk, hd, P, I, KP, VP, S, R, NW, eps);
        });
    if (T == 8)
        launch(t1_grid(pairs), 256, [=] {
            gemv_bf16_rows8_qkv_rope(X, W, Q, rows, pairs, k, nq, nk, hd, P, I, KP, VP, S, R, NW, eps);
        });
    if (T == 0)
        launch(mma_grid(pairs, true, k), 256, [=] {
            gemv_bf16_mma_qkv_rope(X, W, Q, rows, pairs, k, nq, nk, hd, P, I, KP, VP, S, R, NW, eps);
        });
    const char* of[] = {"rows", "rmsnorm(y + resid)", "rmsnorm(resid)"};
    const std::string what = "qkv+RoPE of " + std::to_string(rows) + " " + of[mode] + " h" + std::to_string(nq) +
                             "/" + std::to_string(nk) + " d" + std::to_string(hd);
    rows_check(T, what + ": qkv", qb, qa);
    rows_check(T, what + ": k pool", kb, ka);
    rows_check(T, what + ": v pool", vb, va);
}

// rmsnorm_add2 against two rmsnorm calls: the output and the residual.
static void rmsnorm_add2_case(int h) {
    const auto x1 = bf16_vec(h, 1.f), x2 = bf16_vec(h, 1.f), r0 = bf16_vec(h, 1.f), w = bf16_vec(h, 0.5f, 1.f);
    std::vector<bf16_t> ra = r0, rb = r0, oa(h), ob(h);
    const bf16_t *X1 = x1.data(), *X2 = x2.data(), *W = w.data();
    bf16_t *RA = ra.data(), *RB = rb.data(), *OA = oa.data(), *OB = ob.data();
    const unsigned threads = (unsigned)((h / 8 + 31) / 32 * 32);
    launch(1, threads, [=] { rmsnorm_add2(X1, X2, RA, W, OA, h, 1e-5f); });
    launch(1, threads, [=] { rmsnorm(X1, RB, W, OB, h, 1e-5f); });
    launch(1, threads, [=] { rmsnorm(X2, RB, W, OB, h, 1e-5f); });
    expect_same("rmsnorm_add2 H" + std::to_string(h) + ": out", oa, ob);
    expect_same("rmsnorm_add2 H" + std::to_string(h) + ": residual", ra, rb);
}

// o added into the residual in its GEMV's epilogue (with and without the previous MLP output to
// add first), then the gate GEMV with the MLP's input norm staged from that residual
// (Gemm::o_norm_gate_t1), against o into its own row, rmsnorm_add2 (or rmsnorm) and the gate
// GEMV: the residual and the act row. Hidden 2048 (the staged width), o's depth by q width.
static void o_norm_gate(int qd, int inter) {
    const int h = 2048;
    const auto attn = bf16_vec(qd, 1.f), o = bf16_vec((size_t)h * qd, 0.05f), add = bf16_vec(h, 1.f);
    const auto r0 = bf16_vec(h, 1.f), nw = bf16_vec(h, 0.5f, 1.f), gu = bf16_vec((size_t)2 * inter * h, 0.05f);
    const bf16_t *AT = attn.data(), *O = o.data(), *AD = add.data(), *NW = nw.data(), *GU = gu.data();
    for (int with_add = 0; with_add < 2; ++with_add) {
        std::vector<bf16_t> ra = r0, rb = r0, yo(h), hn(h), aa(inter), ab(inter);
        bf16_t *RA = ra.data(), *RB = rb.data(), *YO = yo.data(), *HN = hn.data(), *AA = aa.data(), *AB = ab.data();
        const bf16_t* a = with_add ? AD : nullptr;
        launch(t1_grid(h), 256, [=] { gemv_bf16_t1(AT, O, YO, h, qd, 0); });
        if (a) launch(1, h / 8, [=] { rmsnorm_add2(a, YO, RA, NW, HN, h, 1e-5f); });
        else launch(1, h / 8, [=] { rmsnorm(YO, RA, NW, HN, h, 1e-5f); });
        launch(t1_grid(inter), 256, [=] { gemv_bf16_t1_gate(HN, GU, AA, inter, h, 0); });
        if (qd >= 8192) launch(t1_grid(h), 256, [=] { gemv_bf16_t1_resid_pipe(AT, O, a, RB, h, qd); });
        else launch(t1_grid(h), 256, [=] { gemv_bf16_t1_resid(AT, O, a, RB, h, qd); });
        launch(t1_grid(inter), 256, [=] { gemv_bf16_t1_gate_norm(RB, NW, 1e-5f, GU, AB, inter, h); });
        const std::string what = "o+resid, norm staged in gate q" + std::to_string(qd) + " inter" +
                                 std::to_string(inter) + (a ? " (add)" : "");
        expect_same(what + ": residual", rb, ra);
        expect_same(what + ": act", ab, aa);
    }
}

// The LM head GEMV with the greedy pick in its epilogue against the plain GEMV's f32 logits and
// the host's pick (largest, lowest index on ties, NaN never; 0 when nothing is above -inf), one
// and two steps in flight, with the grouped tickets and with one ticket word, launched twice on
// the same scratch (which must be zero again after each launch), the first launch also storing
// the token through a host cell and into a next-id word, the second with neither. mode 0: random
// rows; 1: the largest row copied to a lower and a higher index (a three-way tie); 2: that row's
// first weight NaN (its logit NaN, the pick another row); 3: every row zero (every logit +0: the
// pick 0).
static void head_argmax(int n, int k, int mode) {
    const auto x = bf16_vec(k, 1.f);
    auto w = bf16_vec((size_t)n * k, 0.05f);
    std::vector<float> ref(n);
    const bf16_t* X = x.data();
    auto plain = [&] {
        const bf16_t* W = w.data();
        float* R = ref.data();
        launch(t1_grid(n), 256, [=] { gemv_bf16_t1(X, W, R, n, k, 1); });
    };
    auto host_pick = [&] {
        float v = NEG_INF;
        int at = -1;
        for (int j = 0; j < n; ++j)
            if (ref[j] > v) v = ref[j], at = j;
        return at < 0 ? 0 : at;
    };
    plain();
    const int top = host_pick();
    auto copy_row = [&](int to) { std::copy_n(w.begin() + (size_t)top * k, k, w.begin() + (size_t)to * k); };
    if (mode == 1) {
        copy_row(top / 2);
        copy_row(top + 1 < n ? top + 1 : n - 1);
    }
    if (mode == 2) w[(size_t)top * k] = 0x7fc0;  // bf16 NaN
    if (mode == 3) std::fill(w.begin(), w.end(), (bf16_t)0);
    plain();
    const int want = host_pick();
    for (int form = 0; form < 4; ++form) {
        const int depth = 1 + form % 2;
        const bool grouped = form >= 2;
        std::vector<float> y(n);
        // best, done in the low word of the second, the group tickets from byte 128 (gemm_head.rs)
        std::vector<u64> scratch((128 + 128 * HEAD_GROUPS) / 8, 0);
        int tokens[2] = {-1, -1};
        // The token's other destinations: launch 0 stores into host_words[0] through its cell
        // and into next_ids[0]; launch 1's cell holds 0 (nothing stored) and it has no next id.
        int host_words[2] = {-5, -5}, next_ids[2] = {-3, -3};
        const u64 cells[2] = {(u64)(uintptr_t)&host_words[0], 0};
        for (int rep = 0; rep < 2; ++rep) {
            const bf16_t* W = w.data();
            float* Y = y.data();
            u64* B = scratch.data();
            u32* D = (u32*)(scratch.data() + 1);
            u32* G = grouped ? (u32*)(scratch.data() + 16) : nullptr;
            int* T = tokens + rep;
            int* N = rep == 0 ? &next_ids[0] : nullptr;
            const u64* H = &cells[rep];
            if (depth == 1) launch(t1_grid(n), 256, [=] { gemv_bf16_t1_argmax(X, W, Y, n, k, B, D, G, T, N, H); });
            else launch(t1_grid(n), 256, [=] { gemv_bf16_t1_argmax_pipe(X, W, Y, n, k, B, D, G, T, N, H); });
        }
        const std::string what = "lm_head+argmax n" + std::to_string(n) + " in" + std::to_string(k) + " mode" +
                                 std::to_string(mode) + " depth" + std::to_string(depth) +
                                 (grouped ? " grouped" : " one ticket");
        const bool same = std::memcmp(y.data(), ref.data(), n * sizeof(float)) == 0;
        printf("%s %s: logits\n", same ? "ok" : "FAIL", what.c_str());
        g_failed += !same;
        const bool picked = tokens[0] == want && tokens[1] == want;
        printf("%s %s: token %d %d (host %d)\n", picked ? "ok" : "FAIL", what.c_str(), tokens[0], tokens[1], want);
        g_failed += !picked;
        const bool stored = host_words[0] == want && next_ids[0] == want && host_words[1] == -5 && next_ids[1] == -3;
        printf("%s %s: stored %d next %d, none where unset (%d %d)\n", stored ? "ok" : "FAIL", what.c_str(),
               host_words[0], next_ids[0], host_words[1], next_ids[1]);
        g_failed += !stored;
        const bool reset = std::all_of(scratch.begin(), scratch.end(), [](u64 v) { return v == 0; });
        printf("%s %s: scratch zero after\n", reset ? "ok" : "FAIL", what.c_str());
        g_failed += !reset;
    }
}

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    g_rng = std::stoull(argv[1]);
    qkv_rope(4, 2, 64, 1000, 3);
    qkv_rope(2, 1, 128, 131000, 0);
    qkv_rope(2, 2, 32, 9, -1);
    gate_silu(2048, 256);
    gate_silu(1000, 77);
    silu_down(2048, 96);
    silu_down(1000, 40);
    rope_kv_write_case(4, 2, 64);
    rope_kv_write_case(2, 1, 128);
    rope_kv_write_case(3, 1, 40);
    // K alone (the prefill attention rotating Q as it loads it).
    rope_kv_write_case(0, 2, 128);
    rmsnorm_add2_case(2048);
    rmsnorm_add2_case(4096);
    o_norm_gate(2048, 256);
    o_norm_gate(8192, 40);
    o_norm_gate(1000, 77);
    rows_plain(2, 2, 1000, 77);
    rows_plain(2, 1, 2048, 64);
    rows_plain(4, 4, 1000, 77);
    rows_plain(4, 3, 4096, 40);
    rows_plain(8, 8, 1000, 77);
    rows_plain(8, 5, 2048, 33);
    rows_gate(2, 2, 1000, 40);
    rows_gate(4, 3, 2048, 64);
    rows_gate(8, 8, 1000, 24);
    rows_qkv_rope(4, 3, 4, 2, 64, 0);
    rows_qkv_rope(4, 4, 4, 2, 64, 1);
    rows_qkv_rope(4, 2, 4, 2, 64, 2);
    rows_qkv_rope(2, 2, 2, 1, 128, 1);
    rows_qkv_rope(8, 8, 2, 1, 128, 1);
    rows_qkv_rope(8, 6, 2, 2, 32, 0);
    // The mma kernels: S = 8 (in 1024, 2048), S = 2 (in 256: 4 tiles per group), odd outputs.
    rows_plain(0, 5, 1024, 200);
    rows_plain(0, 6, 256, 300);
    rows_plain(0, 8, 2048, 64);
    rows_gate(0, 7, 1024, 77);
    rows_gate(0, 3, 256, 40);
    rows_qkv_rope(0, 3, 2, 1, 64, 0);
    rows_qkv_rope(0, 8, 2, 1, 32, 1);
    rows_qkv_rope(0, 5, 2, 2, 32, 2);
    head_argmax(1001, 2048, 0);
    head_argmax(640, 1000, 1);
    head_argmax(333, 2048, 2);
    head_argmax(100, 256, 3);
    return g_failed ? 1 : 0;
}
