// The machine's two ceilings for the profile's roofline columns: how fast it multiplies
// matrices and how fast it moves memory. They are measured through a backend's own ops
// (be->gemm, be->add), so the same code measures the CPU and the CUDA backend, in the mode
// the run trained in (threads, -d bf16, --allow_tf32).
#pragma once

typedef struct Backend Backend;

typedef struct {
    double gflops;   // matrix-product rate, GFLOP/s (1e9 flop/s): the best large be->gemm
    double gbs;      // memory bandwidth, GB/s (1e9 bytes/s): the best be->add over large buffers,
                     // 12 bytes per element (2 reads + 1 write), as the profiler counts add
    double seconds;  // wall time the measurement took; 0 for ceilings given by hand
} Roofline;

// Times square be->gemm products (1024 on a CPU, larger while a product takes under 2 ms,
// up to 4096: a GPU) and be->add over 3 x 64 MiB buffers, the best of a few repetitions each,
// with be->synchronize around every timing. About 0.3-1 s on a 2-core CPU. Buffers come from
// be->alloc and go back by be->release. Pass an unwrapped backend: a profiled one would
// record the calibration as ops. VIT_ERR (with vit_fail) when an alloc or a gemm fails;
// *out is then zero.
int roofline_measure(Backend *be, Roofline *out);

// Both ceilings positive and finite: usable for the table.
int roofline_valid(const Roofline *r);
