//! The per-row LoRA kernels of kernels/cuda/lora.cu (`lora_shrink`, `lora_expand`: the form a
//! CUDA graph holds, each row naming its adapter's slot) against a direct host computation,
//! run on the CPU under the host-thread CUDA emulation (tests/cuda_emu/shim.h, compiled with
//! g++; see lora_main.cpp): rows of adapters of several ranks (one leaving the projection
//! alone, ranks past one pass of the row's warps), rows without an adapter kept bit for bit,
//! ranks above the buffer's width cut.
//! Seeded (the seed is printed; `STRATA_TEST_SEED` repeats one). Skipped, with a message, where
//! no g++ exists.

#[test]
fn per_row_lora_kernels_equal_the_host_under_emulation() {
    // 5 cases x (shrink, expand, untouched rows).
    strata_kernels::emu::check_report(
        "lora_main.cpp",
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")),
        15,
    );
}
