//! The fused single-row decode kernels (kernels/cuda/gemv.cu: `gemv_bf16_t1_norm`,
//! `gemv_bf16_t1_norm_rope`, `gemv_bf16_t1_norm_silu`, `gemv_bf16_t1_res`) run on the CPU under the host-thread CUDA
//! emulation (tests/cuda_emu/shim.h, g++ with FMA contraction off) next to the kernels they
//! replace (`rmsnorm`, `gemv_bf16_t1`, `rope_kv_write`, `silu_mul`) on the same seeded inputs:
//! every output (the qkv row after RoPE, the K/V pool rows, the new residual, a norm-fused GEMV in
//! bf16 and f32, the SiLU-mul of a fused gate_up) must be bitwise equal. This holds the fused
//! kernels' indexing (the RoPE and SiLU pair mapping of warps, the V blocks, the slot write) and
//! their reproduction of rmsnorm's sum-of-squares order to the unfused path in CI, which has no
//! GPU; `strata gpu check` (`fused_t1`) repeats it on hardware. Skipped, with a message, where no
//! C++20 g++ exists.

use std::path::Path;
use std::process::Command;

#[test]
fn fused_single_row_kernels_equal_the_unfused_ones_bitwise() {
    if Command::new("g++").arg("--version").output().is_err() {
        eprintln!("skipped: no g++");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kernels = root.join("../kernels/cuda");
    let dir = std::env::temp_dir().join(format!("strata-gemv-emu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The emulation has no dynamic shared memory: a static array stands in for it.
    let gemv = std::fs::read_to_string(kernels.join("gemv.cu")).unwrap();
    let gemv = gemv.replace("extern __shared__ uint4 xs[];", "static uint4 xs[16384];");
    assert!(
        !gemv.contains("extern __shared__"),
        "another dynamic shared array"
    );
    std::fs::write(dir.join("gemv_src.cu"), gemv).unwrap();
    std::fs::copy(
        kernels.join("elementwise.cu"),
        dir.join("elementwise_src.cu"),
    )
    .unwrap();
    let exe = dir.join("gemv_emu");
    let out = Command::new("g++")
        .args(["-std=c++20", "-O1", "-ffp-contract=off", "-pthread", "-w"])
        .arg("-I")
        .arg(root.join("tests/cuda_emu"))
        .arg("-I")
        .arg(&kernels)
        .arg("-I")
        .arg(&dir)
        .arg(root.join("tests/cuda_emu/gemv_main.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run g++");
    assert!(
        out.status.success(),
        "g++ failed on the emulated kernels:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 % 1_000_000_007)
        .unwrap_or(7);
    println!("seed {seed}");
    // (in, q heads, kv heads, head_dim, residual add, slot): head_dim 64 and 96, the rmsnorm
    // block wider than the GEMV's (in 4096: 512 threads = 16 virtual warps over 8), no add
    // (layer 0), slot -1 (no pool write).
    for case in ["256 4 2 64 1 3", "384 2 1 96 0 -1", "4096 2 1 64 1 6"] {
        let args: Vec<&str> = case.split(' ').collect();
        let run = Command::new(&exe)
            .args(&args)
            .arg(seed.to_string())
            .output()
            .expect("run the emulated kernels");
        let text = String::from_utf8_lossy(&run.stdout).to_string();
        assert!(run.status.success(), "case {case}: exit {:?}", run.status);
        assert_eq!(
            text.trim(),
            "qkv 0, pools 0, resid 0, norm_gemv 0, norm_gemv_f32 0, silu 0, res 0",
            "case {case} (seed {seed})"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
