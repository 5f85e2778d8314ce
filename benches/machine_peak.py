"""The cores' multiply-add rate at the time of a comparison, from `accelmesh bench peak`.

A shared host can slow this machine's cores several times over for minutes at a time, and
the two vCPUs need not run at the same speed. The comparison scripts print this line at their
start and end, so a table says what the cores could do while it was measured.
"""

import json
import os
import subprocess


def measure(binary, threads=None, reps=3):
    """{threads: record} from `accelmesh bench peak --json` (1 and every core by default),
    or {} when the binary cannot run it."""
    threads = threads or sorted({1, os.cpu_count() or 1})
    cmd = [binary, "bench", "peak", "--threads", ",".join(map(str, threads)),
           "--reps", str(reps), "--json"]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["threads"]: r for r in records}


def describe(peaks):
    """One line: the rate on one thread and on every thread at once (slowest to fastest)."""
    if not peaks:
        return "FMA peak: not measured (accelmesh bench peak failed)"
    parts = []
    for threads, r in sorted(peaks.items()):
        if threads == 1:
            parts.append(f"1 thread {r['gflops']:.0f} GFLOP/s")
        else:
            parts.append(f"{threads} threads {r['gflops']:.0f} GFLOP/s "
                         f"({r['thread_min']:.0f}-{r['thread_max']:.0f} per thread)")
    isa = next(iter(peaks.values()))["isa"]
    return f"FMA peak ({isa}, accelmesh bench peak): " + ", ".join(parts)
