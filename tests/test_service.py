"""The scheduled flow as a long-running process: --runs, --history, skipped slots, signals."""
import signal
import subprocess
import sys
import time

import pendulum
import pytest
from conftest import RECORDS_JSON, SCRIPT, caught_writing, cli, hang, history, ok, slow, status


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
    assert sorted(runs[0]) == ["attempts", "error", "finished", "records", "scheduled", "started", "state", "urls"]
    scheduled = [pendulum.parse(r["scheduled"]) for r in runs]
    gaps = [(b - a).total_seconds() for a, b in zip(scheduled, scheduled[1:])]
    assert all(gap >= 1 and gap == int(gap) for gap in gaps), gaps  # on the 1 s grid, a slot skipped at most
    for r, when in zip(runs, scheduled):
        assert pendulum.parse(r["started"]) >= when  # never early
        assert pendulum.parse(r["finished"]) >= pendulum.parse(r["started"])
    assert result.stdout.count("Run started") == 3


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
    deadline = time.monotonic() + 60
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


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_the_write_abandons_it(source, good_output, signum, code):
    todos = [{"userId": 1, "id": i, "title": "x" * 40, "completed": False} for i in range(300_000)]
    url = source.add("/todos", ok(todos))
    for _ in range(3):  # until the signal is sent while the write is in progress
        good_output.write_bytes(RECORDS_JSON)
        proc = subprocess.Popen([sys.executable, SCRIPT, "--url", url, "--output", good_output],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if caught_writing(proc, good_output):
            break
        proc.kill()
        proc.communicate()
    else:
        pytest.fail("the write was never caught in progress")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=30)
    assert (proc.returncode, stderr) == (code, f"prefectflow.py: stopped by {signal.Signals(signum).name}\n")
    assert good_output.read_bytes() == RECORDS_JSON
    assert [p.name for p in good_output.parent.iterdir()] == [good_output.name]


def test_a_history_file_that_cannot_be_written_is_refused_before_any_run(source, good_output):
    history = good_output / "runs.jsonl"  # under a file
    result = cli("--runs", 1, "--interval", 1, "--url", source.add("/todos", ok()), "--output", good_output,
                 "--history", history)
    assert (result.returncode, result.stderr) == (
        1, f"prefectflow.py: error: cannot write --history {history}: Not a directory\n")
    assert source.hits("/todos") == 0
    assert good_output.read_bytes() == RECORDS_JSON


def test_a_signal_does_not_wait_for_threads_blocked_on_sources(source, good_output):
    urls = [source.add(f"/hang{i}", hang(30)) for i in range(3)]
    proc = subprocess.Popen([sys.executable, SCRIPT, "--once", "--timeout", "20", "--output", good_output,
                             *[a for u in urls for a in ("--url", u)]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while sum(source.hits(f"/hang{i}") for i in range(3)) < 3:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert (proc.returncode, stderr) == (143, "prefectflow.py: stopped by SIGTERM\n")
    assert time.monotonic() - stopped < 5
    assert good_output.read_bytes() == RECORDS_JSON
