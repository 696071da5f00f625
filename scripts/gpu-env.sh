# Sourced by the GPU scripts: cudarc loads libnvrtc / libcublas / libcublasLt by soname, so make
# the CUDA toolkit's and pip's (nvidia-*) copies findable, and keep compiled kernels in one cache.
libdirs=$(ls -d /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib 2>/dev/null)
pyroot=$(python3 -c 'import nvidia; print(" ".join(nvidia.__path__))' 2>/dev/null || true)
for r in $pyroot; do libdirs="$libdirs $(ls -d "$r"/*/lib "$r"/cu13/lib 2>/dev/null)"; done
for d in $libdirs; do LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
export LD_LIBRARY_PATH
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/strata-gpu-cache}
