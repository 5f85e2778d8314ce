"""The cores' multiply-add rate at the time of a comparison, from `accelmesh bench peak`, and
the CPUs a comparison runs on.

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
    threads = threads or sorted({1, len(os.sched_getaffinity(0))})
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


def pin(cpus):
    """Keeps this process and every engine it starts (children inherit it) on the CPUs listed
    in `cpus` (`1`, `0,1`, `0-1`); returns them. Two vCPUs of a shared host can run at
    different speeds for minutes: engines timed one after the other on the same CPUs compare
    alike, while a process left to the scheduler lands on either."""
    chosen = set()
    for part in cpus.split(","):
        first, _, last = part.strip().partition("-")
        chosen.update(range(int(first), int(last or first) + 1))
    # Every thread of this process (a BLAS pool may have started at import), then new ones.
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), chosen)
    return sorted(chosen)


def add_cpus_option(parser):
    """Adds `--cpus LIST` (see `pin`) to an argparse parser."""
    parser.add_argument("--cpus", metavar="LIST",
                        help="run every engine on these CPUs only, e.g. 1 or 0-1 "
                             "(with one thread on both sides, compares them on one core)")


def apply_cpus_option(args):
    """Pins to `args.cpus` if given, and prints which CPUs every engine runs on."""
    if args.cpus:
        print(f"pinned to CPUs {','.join(map(str, pin(args.cpus)))} (every engine)", flush=True)
