"""etl.lock: one process per output, held by real processes, freed when they die (kill -9 too)."""
import hashlib
import os
import signal
import subprocess
import sys

import pytest
from conftest import RECORDS_JSON, ROOT, cli, ok

from etl import lock

HOLD = ("import sys; from etl import lock\n"
        "with lock.held(sys.argv[1], 'the output'):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n")


@pytest.fixture
def holder():
    """Starts a process that holds the lock file given until the test ends; yields its Popen."""
    started = []

    def start(path):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline() == "held\n"
        return proc
    yield start
    for proc in started:
        proc.kill()
        proc.wait(30)


def test_a_second_process_is_refused_naming_the_holder(holder, tmp_path):
    path = tmp_path / ".datos.json.lock"
    proc = holder(path)
    with pytest.raises(lock.Busy) as busy:
        with lock.held(str(path), "the output"):
            pass
    assert str(busy.value) == (f"the output is in use by another process (pid {proc.pid}, lock file {path}): "
                               "stop it, or give this one another --output")
    assert path.read_text() == f"{proc.pid}\n"


def test_the_lock_is_freed_when_its_holder_is_killed(holder, tmp_path):
    path = tmp_path / ".datos.json.lock"
    proc = holder(path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    with lock.held(str(path), "the output"):
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()  # removed by the holder that is done with it


def test_a_process_that_holds_the_lock_goes_in_again(tmp_path):
    path = str(tmp_path / ".datos.json.lock")
    with lock.held(path, "the output"):
        with lock.held(path, "the output"):
            pass
        # still held after the inner hold ended: another process is refused
        code = ("import sys; from etl import lock\n"
                "try:\n    with lock.held(sys.argv[1], 'x'): print('got it')\n"
                "except lock.Busy: print('busy')\n")
        result = subprocess.run([sys.executable, "-c", code, path], cwd=ROOT, capture_output=True, text=True,
                                timeout=60)
        assert result.stdout == "busy\n", result.stderr
    with lock.held(path, "the output"):  # and freed at the end of the outer one
        pass


def test_a_lock_file_that_cannot_be_created_says_why(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(lock.LockError) as failed:
        with lock.held(str(tmp_path / "file" / ".datos.json.lock"), "the output"):
            pass
    assert str(failed.value) == f"cannot lock the output: {tmp_path / 'file'} is a file, not a folder"


def test_the_lock_file_sits_beside_the_target_of_a_link(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "link.json").symlink_to(tmp_path / "data" / "datos.json")
    assert lock.lock_path(str(tmp_path / "link.json")) == str(tmp_path / "data" / ".datos.json.lock")
    assert lock.lock_path(str(tmp_path / ("d" * 250))) == str(tmp_path / ("." + "d" * 200 + ".lock"))


def test_a_second_flowrun_exits_75_before_fetching_and_leaves_the_output_alone(service, source, tmp_path):
    first = service("--url", source.add("/todos", ok()), "--interval", 3600)
    first.runs(1)
    output = tmp_path / "datos.json"
    before = (output.stat().st_ino, hashlib.sha256(output.read_bytes()).hexdigest())
    second = cli("--once", "--url", source.add("/other", ok()), "--output", output)
    assert (second.returncode, second.stdout) == (75, "")
    assert second.stderr == (f"prefectflow.py: error: {output} is in use by another process (pid {first.proc.pid}, "
                             f"lock file {tmp_path / '.datos.json.lock'}): stop it, or give this one another --output\n")
    assert source.hits("/other") == 0
    assert (output.stat().st_ino, hashlib.sha256(output.read_bytes()).hexdigest()) == before

    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(30)
    third = cli("--once", "--url", source.add("/third", ok()), "--output", output)
    assert (third.returncode, third.stderr) == (0, "")
    assert output.read_bytes() == RECORDS_JSON


def test_an_output_in_a_folder_that_is_a_file_fails_in_one_line_before_fetching(source, tmp_path):
    (tmp_path / "file").write_text("")
    result = cli("--once", "--url", source.add("/todos", ok()), "--output", tmp_path / "file" / "datos.json")
    assert result.returncode == 1
    assert result.stderr == (f"prefectflow.py: error: cannot lock {tmp_path / 'file' / 'datos.json'}: "
                             f"{tmp_path / 'file'} is a file, not a folder\n")
    assert source.hits("/todos") == 0


def test_processes_that_take_and_free_the_lock_in_a_loop_never_hold_it_together(tmp_path):
    """The holder removes the lock file as it frees it: one that opened the old file meanwhile must
    not think it holds the lock while a third locks the new one."""
    code = ("import os, sys; from etl import lock\n"
            "path, inside, got = sys.argv[1], sys.argv[2], 0\n"
            "while got < 300:\n"
            "    try:\n"
            "        with lock.held(path, 'x'):\n"
            "            os.mkdir(inside)\n"  # fails if another process is inside too
            "            os.rmdir(inside)\n"
            "            got += 1\n"
            "    except lock.Busy:\n"
            "        pass\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, tmp_path / ".x.lock", tmp_path / "inside"], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(proc.wait(120), proc.stderr.read()) for proc in procs]
    assert results == [(0, "")] * 3
