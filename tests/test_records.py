"""etl.records: the shape check, the renaming, and the writer's encoding, byte for byte json.dump's."""
import json

import pytest
from conftest import RECORDS, TODOS
from hypothesis import given, settings
from hypothesis import strategies as st

from etl import records
from etl.errors import PayloadError
from etl.records import concat_records, encode_records, transform_records, validate


def test_transform_records_renames_keys_in_order():
    renamed = transform_records(TODOS)
    assert renamed == RECORDS
    assert [list(r) for r in renamed] == [["UsuarioID", "ID", "Titulo", "Completado"]] * 3


def test_concat_records_joins_in_order():
    assert concat_records([TODOS[2:], [], TODOS[:1]]) == TODOS[2:] + TODOS[:1]


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
    with pytest.raises(PayloadError) as raised:
        validate(payload)
    assert str(raised.value) == message


def test_validate_accepts_todos_with_extra_fields_and_empty_lists_when_asked():
    todos = [{**TODOS[0], "extra": 1}]
    assert validate(todos) is todos
    assert validate([], allow_empty=True) == []


# The writer's encoding ------------------------------------------------------------

ADVERSARIAL = [
    {"UsuarioID": 1, "ID": 2, "Titulo": "tilde ñ, acento é, ß, 中文", "Completado": True},
    {"UsuarioID": 1, "ID": 3, "Titulo": 'quotes " and \\ backslash / slash', "Completado": False},
    {"UsuarioID": 1, "ID": 4, "Titulo": "control \x00 \x01 \x1f \t \n \r \x7f \u2028 \u2029", "Completado": False},
    {"UsuarioID": 1, "ID": 5, "Titulo": "emoji 😀 🇪🇸 👩‍💻", "Completado": True},
    {"UsuarioID": -7, "ID": 10**30, "Titulo": "", "Completado": False},
    {"UsuarioID": True, "ID": 6, "Titulo": "bool where an int goes", "Completado": 1},
    {"ID": 7, "UsuarioID": 1, "Titulo": "keys in another order", "Completado": True},
    {"UsuarioID": 1, "ID": 8, "Titulo": "an extra key", "Completado": True, "extra": [1, {"a": None}]},
    {"UsuarioID": 1.5, "ID": float("nan"), "Titulo": None, "Completado": "yes"},
    {"UsuarioID": 1, "ID": 9, "Titulo": ', "ID": }, {"UsuarioID": ', "Completado": False},
    {},
    [1, "not a dict"],
]


def encoded(items):
    return "".join(encode_records(items))


def reference(items):
    return json.dumps(items, indent=4, ensure_ascii=False)


@pytest.mark.parametrize("items", [[], ADVERSARIAL[:1], ADVERSARIAL, ADVERSARIAL[::-1], RECORDS * 3000],
                         ids=["empty", "one", "adversarial", "reversed", "several-batches"])
def test_encoding_is_identical_to_json_dump(items):
    assert encoded(items) == reference(items)


def test_encoding_mixes_plain_and_other_batches(monkeypatch):
    monkeypatch.setattr(records, "BATCH", 2)
    items = RECORDS + ADVERSARIAL + RECORDS
    assert encoded(items) == reference(items)


text = st.text(alphabet=st.characters(exclude_categories=["Cs"]))
plain_record = st.fixed_dictionaries({"UsuarioID": st.integers(), "ID": st.integers(), "Titulo": text,
                                      "Completado": st.booleans()})
json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | text,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                          max_leaves=8)
record = plain_record | st.dictionaries(text, json_value, max_size=5) | json_value


@settings(max_examples=300, deadline=None)
@given(st.lists(record, max_size=12), st.integers(min_value=1, max_value=5))
def test_encoding_matches_json_dump_on_generated_records(items, batch):
    old, records.BATCH = records.BATCH, batch
    try:
        assert encoded(items) == reference(items)
    finally:
        records.BATCH = old
