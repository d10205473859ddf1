"""Soak: the scheduled flow in one process, --interval 1, for --runs runs (default 300).

Every tenth run's first request is answered 503, so retries happen. Prints resident memory and
open file descriptors after run 10 and after the last run, the growth per 100 runs, the largest
lateness of a run's start against its scheduled time, and any skipped or doubled run.

With --listen the service also runs its status server, and a client scrapes /metrics every 0.1 s
(and /healthz and the status page every second) for the whole soak.

Usage: .venv/bin/python bench/soak.py [--runs N] [--listen]
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from conftest import Source, ok, status  # noqa: E402
from stamp import stamp  # noqa: E402

SAMPLE = json.loads((ROOT / "sample" / "todos.json").read_text(encoding="utf-8"))


def probe(pid):
    """(resident MiB, open fds) of a process."""
    status_text = Path(f"/proc/{pid}/status").read_text()
    rss_kib = int(next(line for line in status_text.splitlines() if line.startswith("VmRSS:")).split()[1])
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def free_port():
    """A port free a moment ago: -q keeps the log, and the port it names, quiet."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(base, stop, counts):
    """GET /metrics every 0.1 s, and /healthz and / every tenth time, until stop is set; from the
    moment the server first answers."""
    while not stop.wait(0.1):
        try:
            requests.get(base + "/healthz", timeout=5)
            break
        except requests.ConnectionError:
            pass
    n = 0
    while not stop.wait(0.1):
        for path in ["/metrics"] + (["/healthz", "/"] if n % 10 == 0 else []):
            try:
                answer = requests.get(base + path, timeout=5)
                counts[answer.status_code] = counts.get(answer.status_code, 0) + 1
            except requests.RequestException as exc:
                counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1
        n += 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--listen", action="store_true", help="serve /metrics and scrape it every 0.1 s")
    options = parser.parse_args()
    runs = options.runs
    print(stamp())
    source = Source()
    actions = []
    for run in range(1, runs + 2):
        actions += [status(503), ok(SAMPLE)] if run % 10 == 0 else [ok(SAMPLE)]
    url = source.add("/todos", *actions)
    with tempfile.TemporaryDirectory() as tmp:
        history = Path(tmp) / "runs.jsonl"
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "prefectflow.py"), "--interval", "1", "--retry-delay", "0.1",
             "--url", url, "--output", str(Path(tmp) / "datos.json"), "--history", str(history), "-q",
             *(["--listen", f"127.0.0.1:{port}"] if options.listen else [])])
        stop, scrapes = threading.Event(), {}
        if options.listen:
            threading.Thread(target=scrape, args=(f"http://127.0.0.1:{port}", stop, scrapes), daemon=True).start()
        samples = {}
        while len(samples) < 2:
            done = len(history.read_text().splitlines()) if history.exists() else 0
            for mark in (10, runs):
                if done >= mark and mark not in samples:
                    samples[mark] = (done, *probe(proc.pid))
            time.sleep(0.05)
        stop.set()
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        lines = [json.loads(line) for line in history.read_text().splitlines()][:runs]
    source.close()

    import pendulum
    scheduled = [pendulum.parse(r["scheduled"]) for r in lines]
    steps = [(b - a).total_seconds() for a, b in zip(scheduled, scheduled[1:])]
    lateness = [(pendulum.parse(r["started"]) - s).total_seconds() for r, s in zip(lines, scheduled)]
    (n10, rss10, fd10), (nlast, rsslast, fdlast) = samples[10], samples[runs]
    growth = (rsslast - rss10) / (nlast - n10) * 100
    print(f"runs: {len(lines)}, failed: {sum(r['state'] != 'Success' for r in lines)}, "
          f"with retries: {sum(r['attempts'] > 1 for r in lines)}")
    print(f"\n| | after run {n10} | after run {nlast} | |\n|---|---|---|---|")
    print(f"| resident memory | {rss10:.1f} MiB | {rsslast:.1f} MiB | "
          f"{growth:+.3f} MiB per 100 runs, {growth * 10:+.2f} MiB per 1,000 |")
    print(f"| open file descriptors | {fd10} | {fdlast} | {fdlast - fd10:+d} |\n")
    ordered = sorted(lateness)
    print(f"lateness of starts: max {ordered[-1] * 1000:.1f} ms, 99th percentile "
          f"{ordered[int(len(ordered) * 0.99)] * 1000:.1f} ms, median {ordered[len(ordered) // 2] * 1000:.1f} ms, "
          f"over 100 ms: {sum(late > 0.1 for late in lateness)}")
    print(f"load average at the end (1, 5, 15 min): {os.getloadavg()}")
    if options.listen:
        print(f"answers to the scraping client: {scrapes}")
    print(f"skipped slots: {sum(round(s) - 1 for s in steps if s > 1)}, doubled: {sum(s < 1 for s in steps)}")


if __name__ == "__main__":
    main()
