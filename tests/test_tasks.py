"""Each task's .run() and the pure functions behind them."""
import json
import tracemalloc

import pytest
from conftest import RECORDS, RECORDS_JSON, TODOS, ok, status

import prefectflow
from prefectflow import concat, extract, load, transform


def test_transform_renames_keys_in_order():
    records = transform.run(list(TODOS))
    assert records == RECORDS
    assert [list(r) for r in records] == [["UsuarioID", "ID", "Titulo", "Completado"]] * 3


def numbered(count):
    """count todos like TODOS, with ids 0 to count - 1."""
    return [dict(TODOS[i % 3], id=i) for i in range(count)]


def test_transform_takes_its_input_over_a_batch_at_a_time(monkeypatch):
    monkeypatch.setattr(prefectflow, "_BATCH", 2)
    todos = numbered(7)
    given = list(todos)
    assert transform.run(given) == prefectflow.transform_records(todos)
    assert given == []
    assert todos == numbered(7)  # the todos themselves are not changed


def test_transform_frees_each_todo_once_renamed(monkeypatch):
    monkeypatch.setattr(prefectflow, "_BATCH", 256)

    def todos():
        return json.loads(json.dumps(numbered(20_000)))

    def peak(rename):
        given = todos()
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        rename(given)
        return tracemalloc.get_traced_memory()[1] - before

    tracemalloc.start()  # before the todos are made, so that freeing them counts
    try:
        both, taken = peak(prefectflow.transform_records), peak(transform.run)
    finally:
        tracemalloc.stop()
    assert both > 20_000 * 150  # every todo and its record at once
    assert taken < both / 4


def test_concat_joins_in_order_and_takes_the_parts_over():
    parts = [TODOS[2:], [], TODOS[:1]]
    assert concat.run(parts) == TODOS[2:] + TODOS[:1]
    assert parts == [[], [], []]


def test_extract_returns_the_todos(source):
    assert extract.run(source.add("/todos", ok())) == TODOS
    assert source.hits("/todos") == 1


def test_extract_of_several_urls_joins_them_in_order(source):
    first = source.add("/a", ok(TODOS[:1]))
    second = source.add("/b", ok(TODOS[1:]))
    assert extract.run([second, first]) == TODOS[1:] + TODOS[:1]


def test_extract_raises_on_http_error(source):
    url = source.add("/todos", status(500))
    with pytest.raises(prefectflow.SourceError, match=f"^{url} answered HTTP 500 Internal Server Error$"):
        extract.run(url)


def test_load_writes_indented_utf8_json(tmp_path):
    path = tmp_path / "datos.json"
    assert load.run(RECORDS, str(path)) == 3
    assert path.read_bytes() == RECORDS_JSON
    assert "señal" in path.read_text(encoding="utf-8")


def test_load_creates_missing_folders(tmp_path):
    path = tmp_path / "a" / "b" / "datos.json"
    load.run(RECORDS, str(path))
    assert json.loads(path.read_text(encoding="utf-8")) == RECORDS
    assert [p.name for p in path.parent.iterdir()] == ["datos.json"]


def test_load_of_an_empty_list_writes_brackets(tmp_path):
    path = tmp_path / "datos.json"
    load.run([], str(path))
    assert path.read_bytes() == b"[]"


@pytest.mark.parametrize("payload, message", [
    ({"todos": []}, "expected a JSON list, got object"),
    ("todos", "expected a JSON list, got string"),
    ([], "source returned an empty list (--allow-empty accepts it)"),
    ([TODOS[0], 7], "record at index 1: expected an object, got integer"),
    ([TODOS[0], None], "record at index 1: expected an object, got null"),
    ([{**TODOS[0], "id": "1"}], "record at index 0: field 'id' must be integer, got string"),
    ([{**TODOS[0], "userId": True}], "record at index 0: field 'userId' must be integer, got boolean"),
    ([{**TODOS[0], "completed": 0}], "record at index 0: field 'completed' must be boolean, got integer"),
    ([{**TODOS[0], "title": None}], "record at index 0: field 'title' must be string, got null"),
    ([TODOS[0], TODOS[1], {"userId": 1, "id": 3, "completed": False}], "record at index 2: missing field 'title'"),
])
def test_validate_names_the_problem(payload, message):
    with pytest.raises(prefectflow.PayloadError) as raised:
        prefectflow.validate(payload)
    assert str(raised.value) == message


def test_validate_accepts_todos_with_extra_fields_and_empty_lists_when_asked():
    todos = [{**TODOS[0], "extra": 1}]
    assert prefectflow.validate(todos) is todos
    assert prefectflow.validate([], allow_empty=True) == []


@pytest.mark.parametrize("url, masked", [
    ("http://127.0.0.1:8000/todos", "http://127.0.0.1:8000/todos"),
    ("https://ann:s3cret@example.org/todos", "https://ann:***@example.org/todos"),
    ("https://example.org/todos?token=abc&page=2&api_key=k", "https://example.org/todos?token=***&page=2&api_key=***"),
])
def test_mask_url_hides_secrets(url, masked):
    assert prefectflow.mask_url(url) == masked
