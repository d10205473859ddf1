"""The test suite's wall time, in one process against several (pytest-xdist), measured side by side
in one run, optionally with every core kept busy by another program (`sha256sum /dev/zero`, one per
core), as on a shared machine. Each run's summary line is printed: a failed test fails the benchmark.

Usage: .venv/bin/python bench/suite.py [--workers 1,2,3,4] [--rounds N] [--busy N]
  --workers 1 is plain pytest (one process), and a number given twice runs twice in a row (4,4,4,1);
  --busy 0 leaves the machine as it is.
"""
import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import PY, ROOT  # noqa: E402
from stamp import stamp  # noqa: E402


def run(workers):
    """(wall seconds, pytest's summary line) of one run of the suite."""
    command = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider"] + (["-n", str(workers)] if workers > 1 else [])
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    if result.returncode != 0:
        print(result.stdout[-5000:] + result.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"{' '.join(command[1:])} failed ({result.returncode}): {summary}")
    return wall, re.sub(r"\s*in [\d.]+s.*", "", summary.strip("= "))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="1,2,3,4")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--busy", type=int, default=0, help="programs that keep a core busy, while it runs")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    busy = [subprocess.Popen(["sha256sum", "/dev/zero"], stdout=subprocess.DEVNULL) for _ in range(args.busy)]
    try:
        print(f"{stamp()}; {args.busy} cores kept busy by sha256sum\n")
        print("| round | processes | wall | result |")
        print("|---|---|---|---|")
        walls = {w: [] for w in counts}
        for round in range(1, args.rounds + 1):
            for workers in counts:
                wall, summary = run(workers)
                walls[workers].append(wall)
                print(f"| {round} | {workers} | {wall:.0f} s | {summary} |", flush=True)
    finally:
        for program in busy:
            program.kill()
            program.wait()
    base = statistics.median(walls[counts[0]])
    print(f"\n| processes | median wall | against {counts[0]} |")
    print("|---|---|---|")
    for workers in walls:
        wall = statistics.median(walls[workers])
        print(f"| {workers} | {wall:.0f} s | {wall / base:.2f}x |")


if __name__ == "__main__":
    main()
