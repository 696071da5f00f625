//! Builds a host emulation of CUDA sources for CPU tests of kernel logic (CI has no GPU): a
//! `main` under `tests/cuda_emu` (shim.h, one host thread per CUDA thread) compiled with g++
//! against `cuda/`. The tests that use it: `tests/fused_emulated.rs` and `tests/lora_emulated.rs`
//! here (through [`check_report`]) and the server's `gpu_sampling_emulated.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles `main` (a C++ file that includes shim.h and the CUDA sources it runs) into `exe`
/// with `-D` `defines`; None when no g++ exists (the caller skips, saying so). Panics with g++'s
/// message when the build fails.
pub fn build_emulator(main: &Path, exe: &Path, defines: &[&str]) -> Option<PathBuf> {
    Command::new("g++").arg("--version").output().ok()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("g++")
        .args(["-std=c++20", "-O1", "-ffp-contract=off", "-pthread", "-w"])
        .args(defines.iter().map(|d| format!("-D{d}")))
        .arg("-I")
        .arg(root.join("tests/cuda_emu"))
        .arg("-I")
        .arg(root.join("cuda"))
        .arg(main)
        .arg("-o")
        .arg(exe)
        .output()
        .expect("run g++");
    assert!(
        out.status.success(),
        "g++ failed on the emulated kernels:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe.to_path_buf())
}

/// Builds `tests/cuda_emu/{main}` into the test's temporary folder, runs it with a seed (the
/// `STRATA_TEST_SEED` one, else the clock's; printed) and asserts a report of comparison lines
/// ("ok ..." or "FAIL ...") with no FAIL, a zero exit and `expected` ok lines. Prints that it
/// skipped where no g++ exists.
pub fn check_report(main: &str, tmp: &Path, expected: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = tmp.join(main.trim_end_matches(".cpp"));
    let Some(exe) = build_emulator(&root.join("tests/cuda_emu").join(main), &exe, &[]) else {
        println!("SKIPPED: no g++ to build the CUDA emulation");
        return;
    };
    let seed = crate::seeded::test_seed();
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
    assert_eq!(
        ok, expected,
        "seed {seed}: expected {expected} comparisons:\n{report}"
    );
}
