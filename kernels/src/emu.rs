//! Builds a host emulation of CUDA sources for CPU tests of kernel logic (CI has no GPU): a
//! `main` under `tests/cuda_emu` (shim.h, one host thread per CUDA thread) compiled with g++
//! against `cuda/`. The tests that use it: `tests/fused_emulated.rs` here and the server's
//! `gpu_sampling_emulated.rs`.

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
