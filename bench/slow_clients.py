"""The service under slow clients: prefectflow.py on a 1 s schedule with --listen and a lowered fd
limit, while N clients trickle requests that never end (reconnecting whenever the server drops
them). Prints, per case, the service's CPU share, /healthz's answer times (20 requests, 0.5 s apart),
the connections, threads and fds it holds, and the runs that succeeded meanwhile.

Usage: .venv/bin/python bench/slow_clients.py [CLIENTS:FDS ...]   (default: 0:1024 300:256 1030:1024)
"""
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
from conftest import Service, Source, ok  # noqa: E402
from test_web import Crowd, connections, threads  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(clients: int, fds: int) -> str:
    source = Source()
    service = Service(Path(tempfile.mkdtemp()), "--interval", 1, "--retries", 0, "--url", source.add("/todos", ok()),
                      max_fds=fds)
    pid = service.proc.pid
    try:
        service.runs(2)
        with Crowd(service.port, clients) as crowd:
            crowd.full.wait(120)
            cpu, start, before = cpu_seconds(pid), time.monotonic(), len(service.runs())
            answers = []
            for _ in range(20):
                asked = time.monotonic()
                assert requests.get(service.url + "/healthz", timeout=30).status_code == 200
                answers.append(time.monotonic() - asked)
                time.sleep(0.5)
            share = (cpu_seconds(pid) - cpu) / (time.monotonic() - start)
            held, alive = connections(pid, service.port), threads(pid)
            open_fds = len(os.listdir(f"/proc/{pid}/fd"))
            runs = service.runs()[before:]
        succeeded = sum(run["state"] == "Success" for run in runs)
        return (f"| {clients} | {fds} | {share:.0%} | {1000 * statistics.median(answers):.0f} ms | "
                f"{1000 * max(answers):.0f} ms | {held} | {alive} | {open_fds} | {succeeded} of {len(runs)} |")
    finally:
        service.stop()
        source.close()


def main() -> None:
    cases = [tuple(map(int, arg.split(":"))) for arg in sys.argv[1:]] or [(0, 1024), (300, 256), (1030, 1024)]
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print("| clients | fd limit | service CPU | /healthz median | /healthz max | connections held | threads "
          "| fds open | runs succeeded |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for clients, fds in cases:
        print(measure(clients, fds), flush=True)


if __name__ == "__main__":
    main()
