//! The fused single-row decode kernels of kernels/cuda/gemv.cu (qkv + RoPE + pool write, with
//! the input norm staged or not, one and two steps in flight; gate_up + SiLU; the SiLU staged in
//! the down GEMV; o into the residual with the MLP norm staged in the gate GEMV; the LM head with
//! the greedy pick in its epilogue, ties and NaN included, and its token's stores into a next-id word and
//! through a host cell), `rope_kv_write` (16-byte and scalar paths) and `rmsnorm_add2`, bit for bit
//! against the kernels they replace, and the few-row GEMVs against the single-row ones row by row
//! (the mma ones, gemv_mma.cu, within tolerance: shim.h emulates mma.sync), run on the CPU under the host-thread CUDA emulation
//! (tests/cuda_emu/shim.h, compiled with g++; see fused_main.cpp). CI has no GPU: this holds the
//! kernels' logic (weight-row maps, epilogue indexing, the staged norm's use of rmsnorm's
//! reduction) on every change. Rounding that depends on how nvcc contracts FMAs inside each
//! kernel is left to `strata gpu check` on a GPU. Seeded (the seed is printed;
//! `STRATA_TEST_SEED` repeats one). Skipped, with a message, where no g++ exists.

#[test]
fn fused_single_row_kernels_equal_the_unfused_ones_under_emulation() {
    // 3 head shapes x 3 inputs x 2 depths x 4 outputs, 2 x 2 gate GEMVs, 2 x 2 down GEMVs,
    // 3 x 3 rope_kv_write outputs, 2 x 2 norms, 3 x 2 x 2 o + norm + gate; the few-row GEMVs: 6 plain, 3 gate, 6 x 3 qkv;
    // the mma few-row GEMVs: 3 plain, 2 gate, 3 x 3 qkv; the LM head with the argmax: 4 x 4 x 4
    // (two depths, grouped tickets or one word; logits, token, the token's other stores, scratch).
    strata_kernels::emu::check_report(
        "fused_main.cpp",
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")),
        213,
    );
}
