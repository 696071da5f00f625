//! The per-row LoRA kernels of kernels/cuda/lora.cu (`lora_shrink`, `lora_expand`: the form a
//! CUDA graph holds, each row naming its adapter's slot) against a direct host computation,
//! run on the CPU under the host-thread CUDA emulation (tests/cuda_emu/shim.h, compiled with
//! g++; see lora_main.cpp): rows of adapters of several ranks (one leaving the projection
//! alone, ranks past one pass of the row's warps), rows without an adapter kept bit for bit,
//! ranks above the buffer's width cut.
//! Seeded (the seed is printed; `STRATA_TEST_SEED` repeats one). Skipped, with a message, where
//! no g++ exists.

use std::path::Path;
use std::process::Command;

#[test]
fn per_row_lora_kernels_equal_the_host_under_emulation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lora_emu");
    let main = root.join("tests/cuda_emu/lora_main.cpp");
    let Some(exe) = strata_kernels::emu::build_emulator(&main, &exe, &[]) else {
        println!("SKIPPED: no g++ to build the CUDA emulation");
        return;
    };
    let seed = std::env::var("STRATA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(15, |d| d.as_nanos() as u64)
        });
    println!("seed {seed}");
    let run = Command::new(&exe)
        .arg(seed.to_string())
        .output()
        .expect("run the emulation");
    let report = String::from_utf8_lossy(&run.stdout);
    let ok = report.lines().filter(|l| l.starts_with("ok ")).count();
    let failed: Vec<&str> = report.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        run.status.success() && failed.is_empty(),
        "seed {seed}: {failed:#?}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // 5 cases x (shrink, expand, untouched rows).
    assert_eq!(ok, 15, "seed {seed}: expected 15 comparisons:\n{report}");
}
