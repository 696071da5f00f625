#!/usr/bin/env python3
"""Compiles a wgmma program (kernels/cuda; the prefill attention, or with PROGRAM=gemm the gate_up
GEMM) with NVRTC for sm_90a, as the server does on an H100/H200, and disassembles the cubin: ptxas' register and spill report, and
the SASS to read the kernels' loops without a GPU.

Usage: scripts/nvrtc-sass.py [OUT_PREFIX] [extra NVRTC options...]
  NVRTC_LIB: path of libnvrtc.so.13 (default: the copy .ci/run installs under .ci-cache/nvrtc)
  PROGRAM:   gemm for the gate_up GEMM (default: the attention)
  NVDISASM:  path of nvdisasm (pip download nvidia-cuda-nvdisasm==13.*, unzip; default: on PATH)
Writes OUT_PREFIX.cubin and OUT_PREFIX.sass (default /tmp/wg).
"""
import ctypes, glob, os, subprocess, sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
lib = os.environ.get("NVRTC_LIB") or next(iter(glob.glob(f"{root}/.ci-cache/nvrtc/**/libnvrtc.so.13", recursive=True)), None)
if not lib:
    sys.exit("libnvrtc.so.13 not found: set NVRTC_LIB (pip install nvidia-cuda-nvrtc==13.*)")
nvrtc = ctypes.CDLL(lib)
out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/wg"
extra = sys.argv[2:]
k = f"{root}/kernels/cuda/"
# The translation unit the server builds (kernels/src/cuda/nvrtc.rs, Program::AttentionWg or
# Program::GemmWg).
if os.environ.get("PROGRAM") == "gemm":
    parts = ["wgmma.cuh", "gemm_wg.cu"]
else:
    parts = ["prefill_common.cuh", "wgmma.cuh", "attention_prefill_wg.cu"]
src = (open(k + "common.cuh").read() + f'\n#line 1 "{parts[-1]}"\n'
       + "\n".join(open(k + f).read() for f in parts))
prog = ctypes.c_void_p()
assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"wg.cu", 0, None, None) == 0
opts = [b"--gpu-architecture=sm_90a", b"--std=c++17", b"-default-device", b"--ptxas-options=-v"]
opts += [e.encode() for e in extra]
rc = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
n = ctypes.c_size_t()
nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
log = ctypes.create_string_buffer(n.value)
nvrtc.nvrtcGetProgramLog(prog, log)
print(log.value.decode())
if rc != 0:
    sys.exit(1)
nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(n))
cubin = ctypes.create_string_buffer(n.value)
nvrtc.nvrtcGetCUBIN(prog, cubin)
open(out + ".cubin", "wb").write(cubin.raw)
nvdisasm = os.environ.get("NVDISASM", "nvdisasm")
try:
    with open(out + ".sass", "w") as f:
        subprocess.run([nvdisasm, "-c", out + ".cubin"], stdout=f, check=True)
    print("wrote", out + ".cubin", out + ".sass")
except (OSError, subprocess.CalledProcessError) as e:
    print("wrote", out + ".cubin; nvdisasm failed:", e)
