"""Checks a `vit train --profile A,B` Chrome trace: valid JSON, step spans exactly A..B,
every op span inside one of them, a span for each expected op kind and phase, and the
machine's ceilings in otherData.roofline well-formed where present (required by --roofline).

usage: python3 tools/check_trace.py TRACE.json --steps A,B [--ops gemm,layernorm_forward,...]
                                    [--phases forward,backward,update,...] [--roofline]
Prints "check_trace: N passed, M failed"; exit 1 on any failure.
"""

import argparse
import json
import math
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--steps", required=True)
    ap.add_argument("--ops", default="")
    ap.add_argument("--phases", default="")
    ap.add_argument("--roofline", action="store_true", help="require the measured ceilings in otherData")
    a = ap.parse_args()
    first, last = (int(x) for x in a.steps.split(","))
    passed = failed = 0

    def check(ok, what):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
            print(f"FAIL {what}")

    try:
        with open(a.trace) as f:
            trace = json.load(f)
    except (OSError, ValueError) as e:
        print(f"FAIL {a.trace}: not readable JSON: {e}")
        print("check_trace: 0 passed, 1 failed")
        sys.exit(1)
    spans = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    steps = [e for e in spans if e.get("cat") == "step"]
    names = sorted(int(e["name"].split()[1]) for e in steps)
    check(names == list(range(first, last + 1)), f"step spans are {names}, expected {first}..{last}")

    def inside(e, s):
        return s["ts"] <= e["ts"] and e["ts"] + e["dur"] <= s["ts"] + s["dur"] + 1e-3

    ops = [e for e in spans if e.get("cat") == "op"]
    stray = [e["name"] for e in ops if not any(inside(e, s) for s in steps)]
    check(not stray, f"{len(stray)} op spans outside the profiled steps: {stray[:5]}")
    kinds = {e["name"] for e in ops}
    for k in filter(None, a.ops.split(",")):
        check(k in kinds, f"no span for op {k} (have {sorted(kinds)})")
    phases = {e["name"] for e in spans if e.get("cat") not in ("op", "step")}
    for p in filter(None, a.phases.split(",")):
        check(p in phases, f"no span for phase {p} (have {sorted(phases)})")
    gemm = [e for e in ops if e["name"] == "gemm"]
    check(all(e.get("args", {}).get("flops", 0) > 0 for e in gemm), "every gemm span carries its flop count")
    roof = trace.get("otherData", {}).get("roofline")
    if a.roofline:
        check(roof is not None, "no otherData.roofline (the measured ceilings)")
    if roof is not None:

        def value(k):  # the number at k, or NaN when missing or not a number
            v = roof.get(k) if isinstance(roof, dict) else None
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan

        gf, gbs, sec = value("matrix_gflops"), value("memory_gbs"), value("measured_seconds")
        check(all(math.isfinite(v) for v in (gf, gbs, sec)) and gf > 0 and gbs > 0 and sec >= 0,
              f"otherData.roofline needs positive matrix_gflops, memory_gbs, measured_seconds >= 0: {roof}")
    print(f"check_trace: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
