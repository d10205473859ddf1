"""etl.sink: the output's atomic replace and the history's whole lines, on the real file system."""
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tracemalloc

import pytest
from conftest import RECORDS, RECORDS_JSON, ROOT, SCRIPT, can_unshare, ok

from etl.errors import SinkError
from etl.sink import append_line, read_tail, write_json


def test_write_json_writes_indented_utf8_json(tmp_path):
    path = tmp_path / "datos.json"
    write_json(RECORDS, str(path))
    assert path.read_bytes() == RECORDS_JSON
    assert "señal" in path.read_text(encoding="utf-8")


def test_write_json_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "datos.json"
    path.write_text("old")
    write_json(RECORDS[:1], str(path))
    assert json.loads(path.read_text(encoding="utf-8")) == RECORDS[:1]
    assert [p.name for p in tmp_path.iterdir()] == ["datos.json"]


def test_write_json_creates_missing_folders(tmp_path):
    path = tmp_path / "a" / "b" / "datos.json"
    write_json(RECORDS, str(path))
    assert json.loads(path.read_text(encoding="utf-8")) == RECORDS
    assert [p.name for p in path.parent.iterdir()] == ["datos.json"]


def test_write_json_of_an_empty_list_writes_brackets(tmp_path):
    path = tmp_path / "datos.json"
    write_json([], str(path))
    assert path.read_bytes() == b"[]"


def test_write_json_under_a_file_names_the_file(good_output):
    target = good_output / "datos.json"
    with pytest.raises(SinkError) as raised:
        write_json(RECORDS, str(target))
    assert str(raised.value) == f"cannot write {target}: {good_output} is a file, not a folder"
    assert good_output.read_bytes() == RECORDS_JSON


def test_append_line_appends_whole_json_lines(tmp_path):
    path = tmp_path / "runs.jsonl"
    append_line(str(path), {"state": "Success", "títle": "ñ"})
    append_line(str(path), {"state": "Failed"})
    assert path.read_text(encoding="utf-8") == '{"state": "Success", "títle": "ñ"}\n{"state": "Failed"}\n'


def test_append_line_creates_missing_folders_and_says_why_it_cannot(tmp_path, good_output):
    path = tmp_path / "data" / "new" / "runs.jsonl"
    append_line(str(path), {"state": "Success"})
    assert path.read_text(encoding="utf-8") == '{"state": "Success"}\n'
    with pytest.raises(SinkError) as raised:
        append_line(str(good_output / "runs.jsonl"), {"state": "Success"})
    assert str(raised.value) == f"cannot write {good_output / 'runs.jsonl'}: {good_output} is a file, not a folder"
    assert good_output.read_bytes() == RECORDS_JSON


def test_write_json_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    target = tmp_path / "www" / "datos.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "datos.json"
    link.symlink_to(target)
    write_json(RECORDS, str(link))
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == RECORDS_JSON
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["datos.json", "datos.json", "www"]


def test_write_json_keeps_the_mode_of_an_existing_file_and_gives_a_new_one_the_umask(tmp_path):
    kept, new = tmp_path / "kept.json", tmp_path / "new.json"
    kept.write_text("old")
    kept.chmod(0o600)
    old_umask = os.umask(0o027)
    try:
        write_json(RECORDS, str(kept))
        write_json(RECORDS, str(new))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(new.stat().st_mode) == 0o640


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root and setpriv")
def test_a_folder_that_cannot_be_synced_is_a_warning_once_the_file_is_replaced(source, tmp_path):
    """Without capabilities, even root cannot open a folder it may only write to (mode 0300)."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "datos.json").write_bytes(b"old")
    folder.chmod(0o300)
    try:
        result = subprocess.run(
            ["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, SCRIPT, "--once",
             "--url", source.add("/todos", ok()), "--output", folder / "datos.json"],
            capture_output=True, text=True, timeout=120)
    finally:
        folder.chmod(0o700)
    assert (result.returncode, result.stderr) == (0, "")
    assert (f"Wrote {folder / 'datos.json'}, but could not sync its folder {folder} (Permission denied): "
            "the new file may not survive a power loss") in result.stdout
    assert (folder / "datos.json").read_bytes() == RECORDS_JSON


def test_append_line_that_falls_short_leaves_the_file_as_it_was(tmp_path):
    """RLIMIT_FSIZE lets the write go as far as the limit, then fails the rest as a full disk would."""
    path = tmp_path / "runs.jsonl"
    path.write_bytes(b'{"state": "Success"}\n' * 100)
    before = path.read_bytes()
    code = ("import resource, signal, sys; from etl.sink import append_line\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) + 10}, {len(before) + 10}))\n"
            "try:\n    append_line(sys.argv[1], {'state': 'Failed', 'error': 'x' * 200})\n"
            "except OSError as exc:\n    print(exc.strerror)\n")
    result = subprocess.run([sys.executable, "-c", code, path], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "File too large\n", "")
    assert path.read_bytes() == before


def test_read_tail_gives_the_last_whole_json_objects(tmp_path):
    path = tmp_path / "runs.jsonl"
    assert read_tail(str(path), 3) == []
    for n in range(10):
        append_line(str(path), {"n": n})
    with open(path, "a") as out:
        out.write('[1]\nnot json\n{"n": 10')  # not an object, not JSON, cut short
    assert read_tail(str(path), 3) == [{"n": 7}, {"n": 8}, {"n": 9}]
    assert read_tail(str(path), 50) == [{"n": n} for n in range(10)]
    assert read_tail(str(path), 50, window=52) == [{"n": 7}, {"n": 8}, {"n": 9}]  # the line cut in 2 is skipped


def test_read_tail_skips_lines_nested_too_deeply_or_with_huge_numbers(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text('{"n": 1}\n' + "[" * 100_000 + "]" * 100_000 + '\n{"n": ' + "9" * 5000 + '}\n{"n": 2}\n')
    assert read_tail(str(path), 50) == [{"n": 1}, {"n": 2}]


def test_write_json_to_a_long_file_name_keeps_its_temporary_name_within_limits(tmp_path):
    path = tmp_path / ("d" * 250 + ".json")
    write_json(RECORDS, str(path))
    assert path.read_bytes() == RECORDS_JSON
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.skipif(not can_unshare("--mount"), reason="needs unshare --mount (root, not in a chroot)")
def test_write_json_on_a_read_only_file_system_says_so_in_one_line(tmp_path):
    (tmp_path / "datos.json").write_bytes(RECORDS_JSON)
    code = ("import sys; from etl.errors import SinkError; from etl.sink import write_json\n"
            "try:\n    write_json([], sys.argv[1])\nexcept SinkError as exc:\n    print(exc)\n")
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"', tmp_path,
         sys.executable, "-c", code, tmp_path / "datos.json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (result.stdout, result.stderr) == (f"cannot write {tmp_path / 'datos.json'}: Read-only file system\n", "")
    assert (tmp_path / "datos.json").read_bytes() == RECORDS_JSON


def test_write_json_leaves_a_file_that_holds_the_same_bytes_alone(tmp_path):
    path = tmp_path / "datos.json"
    assert write_json(RECORDS, str(path)) == (True, hashlib.sha256(RECORDS_JSON).hexdigest())
    before = path.stat()
    assert write_json(list(RECORDS), str(path)) == (False, hashlib.sha256(RECORDS_JSON).hexdigest())
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    for other in (RECORDS[:2], RECORDS + RECORDS[:1]):  # a prefix of the file, and the file and more
        assert write_json(other, str(path))[0] is True
        assert json.loads(path.read_text(encoding="utf-8")) == other


def test_write_json_compares_a_chunk_at_a_time(tmp_path):
    """Comparing a 13 MB output holds about one chunk of it in memory, not a second copy."""
    path = tmp_path / "datos.json"
    records = [dict(RECORDS[i % 3], ID=i) for i in range(100_000)]
    write_json(records, str(path))
    assert path.stat().st_size > 10_000_000
    tracemalloc.start()
    try:
        assert write_json(records, str(path))[0] is False
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000


def test_an_output_that_is_a_fifo_is_replaced_and_a_history_that_is_one_is_refused(source, tmp_path):
    """Reading or appending to a fifo would block for ever: the run must not wait for a writer or a
    reader that never comes."""
    out, log = tmp_path / "datos.json", tmp_path / "runs.jsonl"
    os.mkfifo(out)
    os.mkfifo(log)
    url = source.add("/todos", ok())
    refused = subprocess.run([sys.executable, SCRIPT, "--once", "--url", url, "--output", out, "--history", log],
                             capture_output=True, text=True, timeout=60)
    assert (refused.returncode, refused.stderr) == (1, f"prefectflow.py: error: cannot write --history {log}: "
                                                       "not a regular file\n")
    assert source.hits("/todos") == 0
    result = subprocess.run([sys.executable, SCRIPT, "--once", "--url", url, "--output", out],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == RECORDS_JSON
    with pytest.raises(SinkError, match="not a regular file"):
        append_line(str(log), {"state": "Success"})
    assert stat.S_ISFIFO(os.stat(log).st_mode)
