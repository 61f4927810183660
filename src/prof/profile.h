// A step profiler: spans of backend ops (recorded by the wrapper in
// prof/profiled_backend.h) and of the trainer's phases, written as a Chrome trace-event
// file (Perfetto, chrome://tracing) and summed into a table of the costliest ops.
//
// Usage: create one Profiler per process, wrap the backend with it, and switch it on for the
// few steps to look at; while it is off every hook returns at once and nothing is allocated.
// Spans are kept in memory until the profiler is destroyed, so profile a few steps, not a run.
// Not thread-safe: the training thread alone records (the backend is only called from it).
#pragma once
#include <stdint.h>
#include <stdio.h>
#include "prof/roofline.h"

typedef struct Profiler Profiler;

// rank becomes the trace's "pid", so the traces of several MPI ranks show as one row group
// each. NULL (with vit_fail) when out of memory. The profiler starts inactive.
Profiler *profiler_create(int rank);
void profiler_destroy(Profiler *p);  // NULL-safe
// Spans are recorded only while active; switching off closes nothing (open phases still end).
void profiler_set_active(Profiler *p, int on);
int profiler_active(const Profiler *p);  // 0 for NULL

// Phase spans, nestable up to 64 deep: "step 12" (cat "step"), "forward", "backward",
// "update", "data wait", "allreduce", "checkpoint". Each prof_begin needs its prof_end, also
// when the profiler was switched in between. Names are copied. Op statistics are keyed by the
// innermost phase whose cat is not "step" (step names are unique, so a row per step would be
// noise). NULL p is a no-op, so call sites need no checks.
void prof_begin(Profiler *p, const char *name, const char *cat);
void prof_end(Profiler *p);

// Chrome trace JSON: {"traceEvents":[...],"displayTimeUnit":"ms"} with an "X" event per span
// (ts and dur in microseconds since profiler_create, pid = rank, tid = 0; op events carry
// their shapes, flops and bytes in args) and process_name metadata "rank N". Phases still
// open are written as ending now. Written atomically; VIT_ERR with a message naming path.
int profiler_write_trace(const Profiler *p, const char *path);

// The machine's ceilings (prof/roofline.h) for the table's roofline columns and the trace's
// otherData. Ceilings that are not positive and finite, or NULL, clear them.
void profiler_set_roofline(Profiler *p, const Roofline *r);

// Top ops by total time, one row per (op, phase): calls, total ms, % of the profiled time
// (the time the profiler was active), mean us, GFLOP/s where the op's flops are modelled,
// GB/s of its compulsory memory traffic, and flop/B (arithmetic intensity) where flops are
// modelled. With ceilings set, a header line prints them and each row adds "bound" (compute
// or memory: what limits most of its roofline time) and "% roofline": the time its calls would
// take at the roofline, sum of max(flops / peak rate, bytes / bandwidth), over the measured
// time. Ops without flops are memory-bound by construction. At most `top` op rows (0 = all),
// then the phases. Cheap enough for the end of a run only.
void profiler_print_table(const Profiler *p, FILE *out, int top);

// Totals of one (op, phase) row, for tests and tools. phase NULL or "" is the row of calls
// made outside any non-step phase (printed as "-"). All zero when there is no such row.
typedef struct {
    long calls;
    double total_ms;
    double flops, bytes;  // summed over the calls
    double roofline_ms;   // the calls' time at the roofline; 0 without ceilings
    int compute_bound;    // compute-bound calls make most of roofline_ms
} ProfStat;
ProfStat profiler_stat(const Profiler *p, const char *op, const char *phase);
// Spans recorded so far (ops and phases); spans dropped at the memory cap are not counted.
long profiler_span_count(const Profiler *p);

// ---- for backend wrappers ----------------------------------------------------------------
// One finished op call. name and dims must outlive the profiler (string literals): dims
// names the used entries of dim[], comma-separated ("batch,M,N,K"). flops and bytes are the
// op's modelled work (0 = not modelled).
typedef struct {
    const char *name;
    const char *dims;
    int64_t dim[8];
    double flops, bytes;
} ProfOpSpan;

// CLOCK_MONOTONIC in nanoseconds.
uint64_t prof_clock_ns(void);
// Records an op span from start_ns to end_ns (prof_clock_ns values) under the current phases.
// Does nothing while inactive.
void prof_record_op(Profiler *p, const ProfOpSpan *op, uint64_t start_ns, uint64_t end_ns);
