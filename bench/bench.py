"""Benchmarks, each measured side by side in one run: alternating runs, medians of wall time and peak RSS.

1. prefectflow.py --once against the report's functions without Prefect (naive.py), at 200,
   100,000 and 1,000,000 records; the outputs must be byte-identical.
2. At 200 records, against the report's Prefect flow run once (report_flow.py).
3. 20 sources that each answer after 0.5 s against one such source, per executor.

Usage: .venv/bin/python bench/bench.py [--repeat N] [--sizes 200,100000,1000000] [--skip-sources]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "sample")]
from conftest import Source, ok, slow  # noqa: E402
from generate import todos  # noqa: E402
from stamp import stamp  # noqa: E402

PY = sys.executable
OURS = [PY, str(ROOT / "prefectflow.py"), "--once", "-q"]


# Runs a command in a process forked from this small one, not from the benchmark (whose memory a
# child started from it would count as its own peak), and writes "wall_seconds peak_kib" to argv[1].
LAUNCH = """import os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(f"{time.perf_counter() - started} {usage.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(command):
    """(wall seconds, peak RSS MiB) of one run of command."""
    with tempfile.NamedTemporaryFile("r") as report:
        code = subprocess.call([PY, "-c", LAUNCH, report.name, *command], stdout=subprocess.DEVNULL)
        if code:
            raise SystemExit(f"failed ({code}): {' '.join(command)}")
        wall, kib = report.read().split()
    return float(wall), int(kib) / 1024


def compare(commands, repeat, before=None):
    """Medians of (wall, RSS) for each named command, the runs alternating; before[name](), if any, is
    called before each run of that command, unmeasured (ours leaves a file that already holds its
    bytes alone, so its output is removed first)."""
    runs = {name: [] for name in commands}
    for _ in range(repeat):
        for name, command in commands.items():
            (before or {}).get(name, lambda: None)()
            runs[name].append(measure(command))
    return {name: (statistics.median(w for w, _ in r), statistics.median(m for _, m in r))
            for name, r in runs.items()}


def row(label, result, base, other):
    (w0, m0), (w1, m1) = result[base], result[other]
    print(f"| {label} | {w0:.2f} s | {w1:.2f} s | {w1 / w0:.2f}x | {m0:.0f} MiB | {m1:.0f} MiB | {m1 / m0:.2f}x |")


def payloads(source, tmp, sizes, repeat):
    print("\n1. `prefectflow.py --once` vs the naive script (no Prefect)\n")
    print("| records | naive wall | ours wall | ratio | naive RSS | ours RSS | ratio |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        url = source.add(f"/todos{size}", ok(json.dumps(todos(size)).encode()))
        naive, ours = tmp / f"naive{size}.json", tmp / f"ours{size}.json"
        result = compare({"naive": [PY, str(ROOT / "bench" / "naive.py"), url, str(naive)],
                          "ours": OURS + ["--url", url, "--output", str(ours)]}, repeat,
                         {"ours": lambda: ours.unlink(missing_ok=True)})
        assert naive.read_bytes() == ours.read_bytes(), "outputs differ"
        row(f"{size:,}", result, "naive", "ours")
        naive.unlink(), ours.unlink()

    print("\n2. `prefectflow.py --once` vs the report's Prefect flow run once, 200 records\n")
    print("| records | report wall | ours wall | ratio | report RSS | ours RSS | ratio |")
    print("|---|---|---|---|---|---|---|")
    url = source.add("/todos200", ok(json.dumps(todos(200)).encode()))
    result = compare({"report": [PY, str(ROOT / "bench" / "report_flow.py"), url, str(tmp / "r.json")],
                      "ours": OURS + ["--url", url, "--output", str(tmp / "o.json")]}, repeat)
    row("200", result, "report", "ours")


def sources(source, tmp, repeat):
    print("\n3. 20 sources that each answer after 0.5 s, against one such source\n")
    print("| executor | 1 source | 20 sources | 20 cost more by |")
    print("|---|---|---|---|")
    urls = [source.add(f"/slow{i}", slow(0.5, todos(200))) for i in range(20)]
    for label, options in [("sequential (`--executor local`)", ["--executor", "local"]),
                           ("`--executor threads --workers 20`", ["--executor", "threads", "--workers", "20"]),
                           ("`--executor dask` (local cluster)", ["--executor", "dask"])]:
        def command(count):
            return OURS + options + [a for u in urls[:count] for a in ("--url", u)] + ["--output", str(tmp / "s.json")]
        one, many = command(1), command(20)
        result = compare({"one": one, "many": many}, repeat)
        (w1, _), (w20, _) = result["one"], result["many"]
        print(f"| {label} | {w1:.2f} s | {w20:.2f} s | {w20 - w1:+.2f} s |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", default="200,100000,1000000")
    parser.add_argument("--skip-sources", action="store_true")
    args = parser.parse_args()
    print(f"{stamp()}; medians of {args.repeat} alternating runs")
    source = Source()
    with tempfile.TemporaryDirectory() as tmp:
        payloads(source, Path(tmp), [int(s) for s in args.sizes.split(",")], args.repeat)
        if not args.skip_sources:
            sources(source, Path(tmp), args.repeat)
    source.close()
    print(f"\nFinished with load average {', '.join(f'{v:.1f}' for v in os.getloadavg())} (1, 5, 15 min)")


if __name__ == "__main__":
    main()
