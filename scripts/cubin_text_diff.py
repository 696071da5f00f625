#!/usr/bin/env python3
"""Is a kernel refactor behaviour-neutral without a GPU? Compiles every NVRTC program of the tree
(as kernels/src/cuda/nvrtc.rs builds its sources and options: sm_90, the wgmma one sm_90a) from
git revision REV and from the working tree, and compares each kernel's machine code (the cubin's
.text.<kernel> section) byte for byte. Identical code computes identical bits, so a refactor that
prints "differing kernels: 0" keeps every GPU check's result.

Usage: scripts/cubin_text_diff.py REV   (env NVRTC_LIB: path of libnvrtc.so; default: the one
.ci/run installs under .ci-cache/)."""
import ctypes, glob, os, struct, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
libpath = os.environ.get("NVRTC_LIB") or next(iter(sorted(glob.glob(
    os.path.join(ROOT, ".ci-cache/nvrtc/nvidia/*/lib/libnvrtc.so*")))), None)
if not libpath:
    sys.exit("no libnvrtc: set NVRTC_LIB or run .ci/run once")
lib = ctypes.CDLL(libpath)


def git_show(rev, path):
    if rev is None:
        return open(os.path.join(ROOT, path)).read()
    r = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{path}"], capture_output=True)
    return r.stdout.decode() if r.returncode == 0 else ""  # a file added since REV
PROGS = {
 "transfer.cu": ["kernels/cuda/transfer.cu"],
 "elementwise.cu": ["kernels/cuda/elementwise.cu","kernels/cuda/lora.cu"],
 "attention.cu": ["kernels/cuda/attention.cu","kernels/cuda/attention_decode.cu","kernels/cuda/attention_decode2.cu","kernels/cuda/prefill_common.cuh","kernels/cuda/attention_prefill.cu","kernels/cuda/attention_decode_mma.cu"],
 "sampling.cu": ["kernels/cuda/sampling.cu"],
 "gemv.cu": ["kernels/cuda/gemv.cu","kernels/cuda/gemv_mma.cu"],
 "backend_f32.cu": ["kernels/cuda/backend_f32.cu"],
 "attention_prefill_wg.cu": ["kernels/cuda/prefill_common.cuh","kernels/cuda/wgmma.cuh","kernels/cuda/attention_prefill_wg.cu"],
 "gemm_wg.cu": ["kernels/cuda/wgmma.cuh","kernels/cuda/gemm_wg.cu"],
}
# The sm_90a programs (kernels/src/cuda/nvrtc.rs compiles these for the "a" target).
WGMMA = {"attention_prefill_wg.cu", "gemm_wg.cu"}
def compile_(src, arch):
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"p.cu", 0, None, None) == 0
    # nvrtc.rs options, with the decode chain's default defines (STRATA_PDL_EARLY=0 /
    # STRATA_W_EVICT_FIRST=0 in the environment leave one out, as there).
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"-default-device"]
    opts += [f"-D{k}".encode() for k in ("STRATA_PDL_EARLY", "STRATA_W_EVICT_FIRST")
             if os.environ.get(k) != "0"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    if rc != 0:
        n = ctypes.c_size_t(); lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value); lib.nvrtcGetProgramLog(prog, buf)
        raise SystemExit(buf.value.decode()[:3000])
    n = ctypes.c_size_t(); lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value); lib.nvrtcGetCUBIN(prog, buf)
    return buf.raw
def texts(elf):
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i*shentsize) for i in range(shnum)]
    stro = secs[shstrndx][4]
    def name(o):
        e = elf.index(b"\0", stro + o); return elf[stro+o:e].decode()
    return {name(s[0]): elf[s[4]:s[4]+s[5]] for s in secs if name(s[0]).startswith(".text.")}
def source(rev, prog):
    common = git_show(rev, "kernels/cuda/common.cuh")
    body = "\n".join(git_show(rev, p) for p in PROGS[prog])
    return f"{common}\n#line 1 \"{prog}\"\n{body}"
if len(sys.argv) != 2:
    sys.exit(__doc__)
rev = sys.argv[1]
bad = 0
for prog in PROGS:
    arch = "sm_90a" if prog in WGMMA else "sm_90"
    a, b = texts(compile_(source(rev, prog), arch)), texts(compile_(source(None, prog), arch))
    for k in sorted(set(a) | set(b)):
        same = a.get(k) == b.get(k)
        if not same: bad += 1
        print(("SAME " if same else "DIFF ") + prog + " " + k + f" {len(a.get(k,b''))}/{len(b.get(k,b''))}")
print("differing kernels:", bad)
sys.exit(1 if bad else 0)
