"""Todos and records: checking a payload's shape, renaming keys, and encoding records as JSON text."""
from __future__ import annotations  # keeps the TypedDicts out of what Dask pickles

import itertools
import json
from operator import itemgetter
from typing import Iterable, Iterator, List, Optional, TypedDict

from etl.errors import PayloadError

# Source field -> output key, in output order; and each source field's JSON type.
# The shape check, transform_records and the writer spell these keys out, for speed.
RENAME = {"userId": "UsuarioID", "id": "ID", "title": "Titulo", "completed": "Completado"}
FIELD_TYPES = {"userId": int, "id": int, "title": str, "completed": bool}

# Records formatted, or renamed by the transform task, at a time: about 250 KB of text. At 8192,
# each batch's text got fresh memory from the kernel (mmap) and the writer took 0.3 s longer.
BATCH = 2048


class Todo(TypedDict):
    userId: int
    id: int
    title: str
    completed: bool


Record = TypedDict("Record", {"UsuarioID": int, "ID": int, "Titulo": str, "Completado": bool})


def validate(payload: object, allow_empty: bool = False) -> List[Todo]:
    """The payload itself, once it is known to be a non-empty list of todos."""
    if type(payload) is not list:
        raise PayloadError(f"expected a JSON list, got {_json_type(payload)}")
    if not payload and not allow_empty:
        raise PayloadError("source returned an empty list (--allow-empty accepts it)")
    if not _all_todos(payload):
        for index, todo in enumerate(payload):
            problem = _todo_problem(todo)
            if problem:
                raise PayloadError(f"record at index {index}: {problem}")
    return payload


def _all_todos(items: list) -> bool:
    """Whether every item is a dict whose fields have exactly the FIELD_TYPES: the fast path."""
    try:
        return all(
            type(todo) is dict and type(todo["userId"]) is int and type(todo["id"]) is int
            and type(todo["title"]) is str and type(todo["completed"]) is bool
            for todo in items
        )
    except KeyError:
        return False


def _todo_problem(todo: object) -> str:
    """What is wrong with one todo, or "" if nothing is."""
    if type(todo) is not dict:
        return f"expected an object, got {_json_type(todo)}"
    for field, kind in FIELD_TYPES.items():
        if field not in todo:
            return f"missing field {field!r}"
        if type(todo[field]) is not kind:
            return f"field {field!r} must be {_json_type(kind())}, got {_json_type(todo[field])}"
    return ""


def _json_type(value: object) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"),
                       (str, "string"), (list, "list"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return "null"


_source_fields = itemgetter(*FIELD_TYPES)


def transform_records(todos: Iterable[Todo]) -> List[Record]:
    """Each todo with its keys renamed, in output order."""
    return [
        {"UsuarioID": user, "ID": id_, "Titulo": title, "Completado": done}
        for user, id_, title, done in map(_source_fields, todos)
    ]


def concat_records(parts: Iterable[list]) -> list:
    """The lists joined in the order given."""
    return list(itertools.chain.from_iterable(parts))


_encode_str = json.encoder.encode_basestring  # what json.dump uses with ensure_ascii=False
_RECORD_KEYS = tuple(RENAME.values())


def encode_records(records: list) -> Iterator[str]:
    """The text of json.dump(records, indent=4, ensure_ascii=False), in chunks."""
    if not records:
        yield "[]"
        return
    separator = "[\n"
    for start in range(0, len(records), BATCH):
        batch = records[start:start + BATCH]
        yield separator + (_encode_plain(batch) or _encode_any(batch))
        separator = ",\n"
    yield "\n]"


def _encode_plain(records: list) -> Optional[str]:
    """Plain records (exact dicts of int, int, str and bool, in output order) formatted directly,
    several times faster than json; None if any record is not plain."""
    parts = []
    for record in records:
        if type(record) is not dict or tuple(record) != _RECORD_KEYS:
            return None
        user, id_, title, done = record.values()
        if type(user) is not int or type(id_) is not int or type(title) is not str or type(done) is not bool:
            return None
        parts.append(f'    {{\n        "UsuarioID": {user},\n        "ID": {id_},\n        "Titulo": '
                     f'{_encode_str(title)},\n        "Completado": {"true" if done else "false"}\n    }}')
    return ",\n".join(parts)


def _encode_any(records: list) -> str:
    """Any records, by json's own encoder, each indented one level deeper."""
    return ",\n".join(
        "    " + json.dumps(record, indent=4, ensure_ascii=False).replace("\n", "\n    ") for record in records
    )
