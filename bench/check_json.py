#!/usr/bin/env python3
"""Runs a bench binary with --quick --json and checks what it prints.

Every line must be one JSON object with the fields DESIGN.md and
docs/BENCHMARKS.md name: the case, its percentiles, its same-run baseline
and ratio where it has one, and how long the measuring process waited for a
CPU (cpu_wait_ms). Cases between two pinned processes must also say how
much slower CPU 0 ran than CPU 1 around them (cpu0_slowdown_before/after)
and how long their other processes waited (workers_cpu_wait_ms). Numbers
are finite or null (JSON has no NaN). Nothing about speed is checked.

Usage: check_json.py BENCH_BINARY
"""
import json
import math
import subprocess
import sys

COMMON = ("bench", "case", "op", "samples", "p50_ns", "p99_ns", "p999_ns", "cpu_wait_ms")
WITH_BASELINE = ("baseline_p50_ns", "baseline_p99_ns", "ratio", "pair_ratio_median", "pair_ratios")
TWO_PROCESS_CASES = {
    "channel": {"pingpong_spin", "pingpong_event", "throughput", "throughput_zero_copy", "throughput_backoff",
                "fanout"},
    "scheduler": {"wakeup_eventfd", "wakeup_eventfd_vs_uring", "wakeup_eventfd_bounded"},
}


def finite_or_null(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(finite_or_null(v) for v in value)
    return True


def check(line):
    """The problems of one output line (empty: none)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return [f"not JSON ({e})"]
    if not isinstance(obj, dict):
        return ["not a JSON object"]
    problems = [f"missing {k}" for k in COMMON if k not in obj]
    if "baseline" in obj:
        problems += [f"missing {k} (the case has a baseline)" for k in WITH_BASELINE if k not in obj]
    if obj.get("case") in TWO_PROCESS_CASES.get(obj.get("bench"), ()):
        problems += [f"missing {k}" for k in ("cpu0_slowdown_before", "cpu0_slowdown_after") if k not in obj]
        if "workers_cpu_wait_ms" not in obj:
            problems.append("missing workers_cpu_wait_ms")
    problems += [f"{k} is not finite" for k, v in obj.items() if not finite_or_null(v)]
    return problems


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    run = subprocess.run([sys.argv[1], "--quick", "--json"], stdout=subprocess.PIPE, text=True, timeout=300)
    lines = [l for l in run.stdout.splitlines() if l.strip()]
    failed = run.returncode != 0
    if failed:
        print(f"{sys.argv[1]} exited with status {run.returncode}")
    if not lines:
        print("no output")
        failed = True
    for n, line in enumerate(lines, 1):
        for p in check(line):
            print(f"line {n}: {p}: {line[:160]}")
            failed = True
    print(f"{len(lines)} results checked")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
