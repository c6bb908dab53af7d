#!/usr/bin/env bash
# Builds hone with the `cuda` feature on a machine without a GPU or a system CUDA toolkit:
# CUDA 13.0's compiler, headers and libraries come from PyPI wheels, and a stub
# `libcuda.so.1` (the driver API's symbols, from cudarc's bindings) satisfies the linker;
# at run time the GPU machine's driver provides the real one. Used 2026-11-26 to build the
# binary that ran the CUDA smoke test (scripts/cuda_check.sh) on an H200.
#
#   bash scripts/build_cuda.sh          # -> $CARGO_TARGET_DIR/release/hone (default target-cuda/)
#
# Environment: HONE_CUDA_PREFIX (where the wheels go, default ~/.cache/hone-cuda13),
# CUDA_COMPUTE_CAP (default 90: H100/H200), CARGO_TARGET_DIR (default target-cuda).
# CUDA 13.0 and not newer: a driver of the 580 series loads PTX of CUDA <= 13.0 only.
# Run the result with LD_LIBRARY_PATH holding libcudart.so.13, libcublas.so.13,
# libcublasLt.so.13 and libcurand.so.10 (a CUDA 13 toolkit's lib64 has them).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${HONE_CUDA_PREFIX:-$HOME/.cache/hone-cuda13}
T=$prefix/nvidia/cu13
if [ ! -x "$T/bin/nvcc" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$prefix" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14
fi
# The wheels ship versioned libraries only; the linker looks for the unversioned names.
for lib in cudart cublas cublasLt nvrtc; do
  [ -e "$T/lib/lib$lib.so" ] || ln -s "lib$lib.so.13" "$T/lib/lib$lib.so"
done
[ -e "$T/lib/libcurand.so" ] || ln -s libcurand.so.10 "$T/lib/libcurand.so"
# A link-time stub of the driver library, soname libcuda.so.1.
cargo fetch --locked --quiet
cudarc=$(cargo metadata --format-version 1 --locked --features cuda |
  python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc").rsplit("/", 1)[0])')
mkdir -p "$T/lib/stubs"
if [ ! -e "$T/lib/stubs/libcuda.so" ]; then
  grep -o 'pub unsafe fn cu[A-Za-z0-9_]*' "$cudarc/src/driver/sys/mod.rs" | sed 's/pub unsafe fn //' | sort -u |
    sed 's/.*/int &(void){return 999;}/' > "$T/lib/stubs/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$T/lib/stubs/libcuda.so" "$T/lib/stubs/libcuda_stub.c"
fi
export PATH=$T/bin:$T/nvvm/bin:$PATH
export CUDA_HOME=$T
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export NVCC_PREPEND_FLAGS="-I$T/include"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
export LIBRARY_PATH="$T/lib:$T/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
cargo build --release --locked --features cuda
ls -l "$CARGO_TARGET_DIR/release/hone"
