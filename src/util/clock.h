// The one monotonic clock (CLOCK_MONOTONIC: time since an arbitrary fixed point), for
// durations and rates. Wall-clock timestamps (event files) use CLOCK_REALTIME instead.
#pragma once
#include <stdint.h>

double clock_seconds(void);  // seconds
uint64_t clock_ns(void);     // the same clock in whole nanoseconds (the profiler's spans)
