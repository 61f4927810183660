#!/bin/sh
# Chooses the matrix library by measurement: the ViT-B/16 product shapes (forward, dX, dW at
# batch 8 and 64) and a square 2048^3 product, fp32 and bf16, through
#   Debian's oneDNN 2.6 (vit built with `make DNNL=system`),
#   oneDNN 3 from the package index (`onednn-devel-cpu-gomp`, what `make deps` installs),
#   MKL from the package index (`mkl`, its GNU OpenMP layer; bench/mkl_gemm.c).
# The oneDNN rows go through vit's own backend (build/bench/gemm_ceiling), so they are what
# vit runs. MKL's wheel is downloaded into build/libs (pip download, nothing installed).
# usage: bench/matrix_libraries.sh [threads]      (from the repository root)
threads=${1:-$(nproc)}
export OMP_NUM_THREADS=$threads
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, threads $threads," \
     "avx512f: $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no)," \
     "avx512_bf16: $(grep -qw avx512_bf16 /proc/cpuinfo && echo yes || echo no)," \
     "amx: $(grep -qw amx_bf16 /proc/cpuinfo && echo yes || echo no); $(date -u '+%Y-%m-%d %H:%M UTC')"
make -s BUILD=build-dnnl2 DNNL=system CUDA=0 build-dnnl2/bench/gemm_ceiling >/dev/null || exit 1
make -s CUDA=0 build/bench/gemm_ceiling >/dev/null || exit 1
echo "== Debian oneDNN"; build-dnnl2/bench/gemm_ceiling
if [ -d .deps/lib ]; then echo "== oneDNN 3 (package index)"; build/bench/gemm_ceiling
else echo "== oneDNN 3: not installed (make deps)"; fi
mkl=$(ls build/libs/mkl-*.data/data/lib/libmkl_rt.so.* 2>/dev/null | head -1)
if [ -z "$mkl" ]; then
    mkdir -p build/libs
    python3 -m pip download --quiet --no-deps -d build/libs "${MKL_WHEEL:-mkl==2026.2.1}" &&
        (cd build/libs && unzip -qo mkl-*.whl 'mkl-*.data/data/lib/*')
    mkl=$(ls build/libs/mkl-*.data/data/lib/libmkl_rt.so.* 2>/dev/null | head -1)
fi
if [ -n "$mkl" ]; then
    mkdir -p build/bench && cc -std=c11 -D_GNU_SOURCE -O2 -fopenmp -Isrc bench/mkl_gemm.c src/util/clock.c -ldl -o build/bench/mkl_gemm &&
        { echo "== MKL (package index)"; build/bench/mkl_gemm "$mkl"; build/bench/mkl_gemm "$mkl" $((64 * 197)) | tail -n +3; }
else
    echo "== MKL: wheel not available"
fi
