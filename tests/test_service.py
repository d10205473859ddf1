"""The scheduled flow as a long-running process: --runs, --history, skipped slots, signals."""
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import re

import pendulum
import pytest
import requests
from conftest import RECORDS_JSON, SCRIPT, caught_writing, cli, hang, history, ok, slow, status, wait_for

import prefectflow
from etl.service import Clock, serve


def test_three_runs_with_failures_keep_the_last_good_output(source, tmp_path):
    out, log = tmp_path / "datos.json", tmp_path / "runs.jsonl"
    out.write_bytes(b"old")
    url = source.add("/todos", status(503), ok(), status(500))
    result = cli("--runs", 3, "--interval", 1, "--retries", 0, "--url", url, "--output", out, "--history", log)
    assert result.returncode == 1, result.stderr
    assert source.hits("/todos") == 3
    assert out.read_bytes() == RECORDS_JSON
    runs = history(log)
    assert [r["state"] for r in runs] == ["Failed", "Success", "Failed"]
    assert [r["records"] for r in runs] == [0, 3, 0]
    assert [r["attempts"] for r in runs] == [1, 1, 1]
    assert runs[0]["error"] == f"extract failed: {url} answered HTTP 503 Service Unavailable"
    assert "error" not in runs[1]
    assert all(r["urls"] == [url] for r in runs)
    assert [(r["changed"], r["pages"]) for r in runs] == [(False, 0), (True, 1), (False, 0)]
    assert sorted(runs[0]) == ["attempts", "changed", "error", "finished", "output", "pages", "records", "scheduled",
                               "started", "state", "urls"]
    assert runs[0]["output"] == str(out)
    scheduled = [pendulum.parse(r["scheduled"]) for r in runs]
    gaps = [(b - a).total_seconds() for a, b in zip(scheduled, scheduled[1:])]
    assert all(gap >= 1 and gap == int(gap) for gap in gaps), gaps  # on the 1 s grid, a slot skipped at most
    for r, when in zip(runs, scheduled):
        assert pendulum.parse(r["started"]) >= when  # never early
        assert pendulum.parse(r["finished"]) >= pendulum.parse(r["started"])
    assert result.stdout.count("Run started") == 3
    assert result.stderr.splitlines() == [
        f"prefectflow.py: error: the run scheduled at {r['scheduled']} failed: {r['error']}" for r in runs[::2]]


def test_runs_exit_0_when_the_last_run_succeeds(source, tmp_path):
    url = source.add("/todos", status(503), ok())
    result = cli("--runs", 2, "--interval", 1, "--retries", 0, "--url", url, "--output", tmp_path / "d.json")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "d.json").read_bytes() == RECORDS_JSON


def test_a_run_longer_than_the_interval_skips_the_slots_it_missed(source, tmp_path):
    log = tmp_path / "runs.jsonl"
    url = source.add("/todos", slow(2.5), ok())
    result = cli("--runs", 2, "--interval", 1, "--url", url, "--output", tmp_path / "d.json", "--history", log)
    assert result.returncode == 0, result.stderr
    first, second = (pendulum.parse(r["scheduled"]) for r in history(log))
    gap = (second - first).total_seconds()
    assert gap >= 3.0 and gap == int(gap)  # the first free whole slot after a 2.5 s run
    assert f"The run took longer than the interval: skipping {int(gap) - 1} missed slot(s)" in result.stdout


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("moment", ["waiting", "running"])
def test_a_signal_stops_it_with_one_line(source, good_output, signum, code, moment):
    log = good_output.parent / "runs.jsonl"
    url = source.add("/todos", ok(), hang(30))
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "--interval", "2" if moment == "running" else "60", "--url", url,
         "--output", good_output, "--history", log],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Waiting: the first run is in the history. Running: the second run's request has arrived.
    deadline = time.monotonic() + 180
    while not (log.exists() and log.read_text()) or (moment == "running" and source.hits("/todos") < 2):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == code
    assert stderr == f"prefectflow.py: stopped by {signal.Signals(signum).name}\n"
    assert "Traceback" not in stdout
    assert good_output.read_bytes() == RECORDS_JSON
    assert [r["state"] for r in history(log)] == ["Success"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_that_another_thread_takes_stops_the_wait_at_once(source, good_output, signum):
    """Linux gives a process's signal to whichever of its threads can take it first, not always the
    main one: here the status server's thread takes it, while the main thread sleeps until the next
    run, an hour away. Python runs the handler in the main thread, so that sleep must end."""
    log = good_output.parent / "runs.jsonl"
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "--interval", "3600", "--url", source.add("/todos", ok()), "--output", good_output,
         "--history", log, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: proc.poll() is None and log.exists() and log.read_text(), "the first run in the history")
    other = next(int(tid) for tid in os.listdir(f"/proc/{proc.pid}/task") if int(tid) != proc.pid)
    assert ctypes.CDLL(None, use_errno=True).tgkill(proc.pid, other, signum) == 0, os.strerror(ctypes.get_errno())
    stdout, stderr = proc.communicate(timeout=30)  # the main thread's sleep is up to 60 s at a time
    assert proc.returncode == 128 + signum
    assert stderr == f"prefectflow.py: stopped by {signal.Signals(signum).name}\n"
    assert good_output.read_bytes() == RECORDS_JSON


def _group(pgid):
    """The processes still alive in process group pgid."""
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) == pgid:
                alive.append(int(pid))
        except ProcessLookupError:
            pass
    return alive


@pytest.mark.parametrize("options, signum, code", [
    ([], signal.SIGTERM, 143),
    ([], signal.SIGINT, 130),
    (["--url"], signal.SIGTERM, 143),  # several sources: load runs in a thread of the threads executor
    (["--url"], signal.SIGINT, 130),
    (["--url", "--executor", "processes"], signal.SIGTERM, 143),  # in a child process
    (["--url", "--executor", "dask", "--workers", "2"], signal.SIGTERM, 143),  # in a local cluster's worker
], ids=["main-thread", "main-thread-int", "thread", "thread-int", "processes", "dask"])
def test_a_signal_during_the_write_abandons_it(source, good_output, options, signum, code):
    """Whichever thread or process writes, the old file stays, no temporary file is left, and no
    process of the run goes on after it."""
    todos = [{"userId": 1, "id": i, "title": "x" * 40, "completed": False} for i in range(200_000)]
    urls = [source.add("/a", ok(todos)), source.add("/b", ok(todos))]
    several = options[:1] == ["--url"]
    command = [sys.executable, SCRIPT, "--url", urls[0], *(["--url", urls[1]] if several else []),
               *options[1:], "--output", good_output]
    for _ in range(3):  # until the signal is sent while the write is in progress
        good_output.write_bytes(RECORDS_JSON)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        if caught_writing(proc, good_output):
            break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    else:
        pytest.fail("the write was never caught in progress")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr) == (code, f"prefectflow.py: stopped by {signal.Signals(signum).name}\n")
    deadline = time.monotonic() + 30  # a helper such as multiprocessing's resource tracker ends on its own
    while _group(proc.pid):
        assert time.monotonic() < deadline, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in _group(proc.pid)]
        time.sleep(0.1)
    assert good_output.read_bytes() == RECORDS_JSON  # no process of the run is left to replace it
    assert [p.name for p in good_output.parent.iterdir()] == [good_output.name]


@pytest.mark.parametrize("under, why", [
    ("datos.json", "{folder} is a file, not a folder"),  # as --output says it
    ("datos.json/deeper", "Not a directory"),
    ("a-folder", "Is a directory"),
])
def test_a_history_file_that_cannot_be_written_is_refused_before_any_run(source, good_output, under, why):
    (good_output.parent / "a-folder" / "runs.jsonl").mkdir(parents=True)
    history = good_output.parent / under / "runs.jsonl"
    result = cli("--runs", 1, "--interval", 1, "--url", source.add("/todos", ok()), "--output", good_output,
                 "--history", history)
    assert (result.returncode, result.stderr) == (
        1, f"prefectflow.py: error: cannot write --history {history}: {why.format(folder=history.parent)}\n")
    assert source.hits("/todos") == 0
    assert good_output.read_bytes() == RECORDS_JSON


def test_history_creates_missing_folders_as_output_does(source, tmp_path):
    result = cli("--once", "--url", source.add("/todos", ok()), "--output", "out/new/datos.json",
                 "--history", "data/new/runs.jsonl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out/new/datos.json").read_bytes() == RECORDS_JSON
    assert [run["state"] for run in history(tmp_path / "data/new/runs.jsonl")] == ["Success"]


def test_a_signal_does_not_wait_for_threads_blocked_on_sources(source, good_output):
    """The sources say nothing until the test ends, and --timeout is longer: the run stops at once
    only if it does not wait for the threads that read them."""
    urls = [source.add(f"/hang{i}", hang(600)) for i in range(3)]
    proc = subprocess.Popen([sys.executable, SCRIPT, "--once", "--timeout", "600", "--output", good_output,
                             *[a for u in urls for a in ("--url", u)]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while sum(source.hits(f"/hang{i}") for i in range(3)) < 3:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr) == (143, "prefectflow.py: stopped by SIGTERM\n")
    assert good_output.read_bytes() == RECORDS_JSON


class FakeClock(Clock):
    """Time that passes only when the service sleeps, and a system clock a test can move."""

    def __init__(self, start, jump_in_first_nap=0.0):
        super().__init__()
        self.mono, self.shift, self.start = 0.0, 0.0, start
        self.jump_in_first_nap, self.naps = jump_in_first_nap, []

    def wall(self):
        return self.start.add(seconds=self.mono + self.shift)

    def monotonic(self):
        return self.mono

    def sleep(self, seconds):
        if not self.naps:
            self.shift += self.jump_in_first_nap
        self.naps.append(seconds)
        self.mono += seconds


def serve_with(clock, source, tmp_path, runs, *actions, interval=120, cron=None):
    """serve() on a fake clock; each request runs its action, then answers with the todos."""
    def act(action):
        def handle(handler):
            action()
            ok()(handler)
        return handle
    url = source.add("/todos", *map(act, actions))
    log = tmp_path / "runs.jsonl"
    flow = prefectflow.build_flow(output=str(tmp_path / "d.json"), interval=interval, cron=cron, start_date=clock.start)
    assert serve(flow, [url], runs=runs, history=str(log), clock=clock) == 0
    return [pendulum.parse(r["scheduled"]) for r in history(log)]


START = pendulum.datetime(2030, 1, 1, 12, 0, 0)


def test_a_clock_moved_back_never_runs_a_slot_twice(source, tmp_path, caplog):
    clock = FakeClock(START)
    def back():
        if source.hits("/todos") == 2:  # during the 12:02 run
            clock.shift -= 3600
    scheduled = serve_with(clock, source, tmp_path, 3, back)
    assert scheduled == [START, START.add(minutes=2), START.add(minutes=4)]
    assert caplog.text.count("The system clock jumped back by 3600 s") == 1
    assert "skipping" not in caplog.text.lower()


def test_a_clock_moved_forward_skips_the_slots_it_jumped_over_as_a_jump(source, tmp_path, caplog):
    clock = FakeClock(START)
    def forward():
        if source.hits("/todos") == 1:
            clock.shift += 3600
    scheduled = serve_with(clock, source, tmp_path, 2, forward)
    assert scheduled == [START, START.add(minutes=62)]
    assert "The system clock jumped forward by 3600 s" in caplog.text
    assert "Skipping 30 slot(s) the clock jumped over" in caplog.text
    assert "took longer than the interval" not in caplog.text


def test_a_clock_moved_back_while_waiting_waits_for_the_next_slot_not_yet_run(source, tmp_path, caplog):
    clock = FakeClock(START, jump_in_first_nap=-600)
    scheduled = serve_with(clock, source, tmp_path, 2, lambda: None)
    assert scheduled == [START, START.add(minutes=2)]
    assert "The system clock jumped back by 600 s" in caplog.text
    assert clock.wall() >= START.add(minutes=2)
    assert sum(clock.naps) == pytest.approx(120 + 600, abs=0.5)  # the 2 minutes, and the 10 it went back


def test_a_clock_moved_forward_while_waiting_skips_the_slots_it_jumped_over_as_a_jump(source, tmp_path, caplog):
    clock = FakeClock(START, jump_in_first_nap=3600)
    scheduled = serve_with(clock, source, tmp_path, 3, lambda: None)
    assert scheduled == [START, START.add(minutes=2), START.add(minutes=62)]
    assert "The system clock jumped forward by 3600 s" in caplog.text
    assert "Skipping 29 slot(s) the clock jumped over" in caplog.text
    assert "took longer than the interval" not in caplog.text


def test_cron_runs_only_at_its_times_with_no_run_at_start_up(source, tmp_path, caplog):
    clock = FakeClock(START.add(seconds=30))
    scheduled = serve_with(clock, source, tmp_path, 2, lambda: None, cron="*/5 * * * *")
    assert scheduled == [START.add(minutes=5), START.add(minutes=10)]
    assert "Waiting for next scheduled run at 2030-01-01T12:05:00+00:00" in caplog.text


def test_a_cron_run_longer_than_the_gap_skips_the_times_it_missed(source, tmp_path, caplog):
    clock = FakeClock(START.add(seconds=30))
    def long_run():
        if source.hits("/todos") == 1:
            clock.mono += 150  # the 12:01 run ends at 12:03:30
    scheduled = serve_with(clock, source, tmp_path, 2, long_run, cron="* * * * *")
    assert scheduled == [START.add(minutes=1), START.add(minutes=4)]
    assert "The run took longer than the interval: skipping 2 missed slot(s)" in caplog.text


def test_a_clock_moved_forward_skips_the_cron_times_it_jumped_over_and_back_runs_none_twice(source, tmp_path, caplog):
    clock = FakeClock(START.add(seconds=30))
    def jump():
        if source.hits("/todos") == 1:
            clock.shift += 3600
        if source.hits("/todos") == 2:
            clock.shift -= 7200
    scheduled = serve_with(clock, source, tmp_path, 3, jump, cron="*/30 * * * *")
    assert scheduled == [START.add(minutes=30), START.add(minutes=120), START.add(minutes=150)]
    assert "Skipping 2 slot(s) the clock jumped over" in caplog.text
    assert "The system clock jumped back by 7200 s" in caplog.text


MADRID = "Europe/Madrid"


@pytest.mark.parametrize("cron, start, expected", [
    # An hourly job runs every real hour of the night the clocks go back, the repeated 02:00 too.
    ("0 * * * *", pendulum.datetime(2027, 10, 31, 0, 30, tz=MADRID),
     ["2027-10-30T23:00:00+00:00", "2027-10-31T00:00:00+00:00", "2027-10-31T01:00:00+00:00", "2027-10-31T02:00:00+00:00"]),
    # 02:30 runs at 03:00 (+02:00) the day it does not exist, and at the first of the two 02:30 when it repeats.
    ("30 2 * * *", pendulum.datetime(2027, 3, 27, 12, tz=MADRID), ["2027-03-28T01:00:00+00:00", "2027-03-29T00:30:00+00:00"]),
    ("30 2 * * *", pendulum.datetime(2027, 10, 30, 12, tz=MADRID), ["2027-10-31T00:30:00+00:00", "2027-11-01T01:30:00+00:00"]),
])
def test_runs_on_the_nights_the_clocks_change(source, tmp_path, cron, start, expected):
    scheduled = serve_with(FakeClock(start), source, tmp_path, len(expected), lambda: None, cron=cron)
    assert [when.isoformat() for when in scheduled] == expected
    assert source.hits("/todos") == len(expected)


def test_a_signal_while_waiting_for_a_cron_time_stops_it_with_one_line(source, good_output):
    log = good_output.parent / "service.log"
    url = source.add("/todos", ok())
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, SCRIPT, "--cron", "0 0 1 1 *", "--timezone", MADRID, "--url", url,
                                 "--output", good_output], stdout=out, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: proc.poll() is None and "Waiting for next scheduled run at" in log.read_text(), "the wait")
    assert re.search(r"Waiting for next scheduled run at 20\d\d-01-01T00:00:00\+01:00\n", log.read_text())
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert (proc.returncode, stderr) == (143, "prefectflow.py: stopped by SIGTERM\n")
    assert source.hits("/todos") == 0
    assert good_output.read_bytes() == RECORDS_JSON


def test_a_real_cron_run_at_a_minute_boundary_and_what_the_watches_say(source, service, tmp_path):
    """The one test that waits for the clock: up to a minute for the first run of "* * * * *"."""
    before = pendulum.now("utc")
    running = service("--cron", "* * * * *", "--timezone", "Asia/Kolkata", "--url", source.add("/todos", ok()))
    health = wait_for(lambda: (h := requests.get(running.url + "/healthz", timeout=10).json())["next_run"] and h,
                      "next run in /healthz")
    first = pendulum.parse(health["next_run"])
    assert health["next_run"].endswith("+00:00") and (first.second, first.microsecond) == (0, 0)
    assert before < first <= before.add(seconds=61)
    metrics = requests.get(running.url + "/metrics", timeout=10).text
    assert float(re.search(r"^prefectflow_next_run_timestamp_seconds (\S+)$", metrics, re.M)[1]) == first.timestamp()
    page = requests.get(running.url + "/", timeout=10).text
    assert f"<tr><th>Next run</th><td>{first.format('YYYY-MM-DD HH:mm:ss')} UTC</td></tr>" in page
    (run,) = running.runs(1)
    assert pendulum.parse(run["scheduled"]) == first and run["scheduled"].endswith("+00:00")
    assert pendulum.parse(run["started"]) >= first
    assert source.hits("/todos") == 1  # nothing ran at start-up
    following = first.add(minutes=1).isoformat()
    wait_for(lambda: requests.get(running.url + "/healthz", timeout=10).json()["next_run"] == following, "the next run")
    assert f"Waiting for next scheduled run at {first.add(minutes=1).in_tz('Asia/Kolkata').isoformat()}" in \
        running.log.read_text()
