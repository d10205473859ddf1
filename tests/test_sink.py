"""etl.sink: the output's atomic replace and the history's whole lines, on the real file system."""
import json

import pytest
from conftest import RECORDS, RECORDS_JSON

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
