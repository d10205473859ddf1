"""Database outputs: which --output is a database, the table the records go into (its name, its
shape, replace or merge), and the load that every database sink shares. The output's scheme picks
the module that speaks to the database: etl.sqlite for sqlite://, etl.postgres for postgresql://.

One load is one transaction: the rows and the table's state (each page's validators, for
conditional requests) are committed together, or not at all."""
from __future__ import annotations

import dataclasses
import json
import re
import secrets
from dataclasses import dataclass
from typing import List, Optional

import prefect

from etl import postgres, sqlite
from etl.errors import DatabaseDown, PayloadError, SinkError
from etl.source import mask_text, mask_url
from etl.sql import COLUMNS, quote
from etl.state import Fetched, Last, Page, in_order, pages_of

log = prefect.utilities.logging.get_logger(__name__)

# Imported here, not looked up by name when used: on a Dask cluster this module travels to workers
# that need not have the project (psycopg itself is imported once a PostgreSQL output is used).
SCHEMES = {"sqlite": sqlite, "postgresql": postgres, "postgres": postgres}
TABLE = "todos"
REPLACE, MERGE = "replace", "merge"
MODES = (REPLACE, MERGE)
KEY = "ID"
STATE_TABLE = "prefectflow_state"  # one row per loaded table: its pages' validators, as JSON
VERSION = 1
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@dataclass(frozen=True)
class Table:
    """The table a database output loads into, and how: replace (the table holds exactly the
    records) or merge (insert or update by "ID", never delete)."""

    name: str = TABLE
    mode: str = REPLACE


def scheme(output: str) -> Optional[str]:
    """The URL scheme of output ("sqlite", "postgresql", ...); None for a file path."""
    found = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", output)
    return found.group(1).lower() if found else None


def is_database(output: str) -> bool:
    return scheme(output) is not None


def check_output(output: str) -> str:
    """output, if it can be loaded into (a sqlite:// path made absolute); ValueError naming it
    masked otherwise."""
    kind = scheme(output)
    if kind not in SCHEMES:
        raise ValueError(f"{mask_url(output)}: only sqlite:// and postgresql:// outputs are databases; "
                         "give a file path or one of those")
    return _module(output).check_url(output)


def check_table_name(name: str) -> str:
    """name, if it is a table name we accept; ValueError otherwise."""
    if not _IDENTIFIER.fullmatch(name) or name == STATE_TABLE or name.lower().startswith("sqlite_"):
        raise ValueError(f"{name!r} is not a table name we load into: use letters, digits and _, "
                         f"not starting with a digit, at most 63 characters, not {STATE_TABLE}")
    return name


def _module(output: str):
    return SCHEMES[scheme(output)]


def describe(output: str, table: Table) -> str:
    """How the log names where the rows go: the table and the output, masked."""
    return f"table {quote(table.name)} of {mask_url(output)}"


# The interface the load and extract tasks call. -------------------------------------------------


def load(records: list, output: str, table: Table, keep_state: bool = True) -> Optional[int]:
    """Load records (a Fetched list: pages that answered 304 keep their rows) into table, in one
    transaction; how many records the table got from this run, or None if it already held them
    and was left alone. keep_state commits each page's validators with the rows."""
    module = _module(output)
    pages = pages_of(records) if keep_state and isinstance(records, Fetched) else None
    try:
        with module.connect(output) as db:
            return _load(db, module, records, output, table, pages)
    except module.errors() as exc:
        failure = DatabaseDown if module.worth_retrying(exc) else SinkError
        raise failure(f"cannot load into {mask_url(output)}: {why(output, exc)}") from None
    except UnicodeEncodeError:
        raise PayloadError("a title holds a character that UTF-8 cannot encode (a lone surrogate); "
                           "nothing was loaded") from None
    except OverflowError:
        raise PayloadError("a number does not fit a 64-bit integer column; nothing was loaded") from None


def read_last(output: str, table: Table) -> Optional[Last]:
    """What the last run loaded into table, from the state committed with its rows; None without
    one, or if the table no longer holds as many rows (then a 304 cannot be trusted)."""
    module = _module(output)
    try:
        with module.connect(output, write=False) as db:
            if module.columns(db, STATE_TABLE) is None or module.columns(db, table.name) is None:
                return None
            saved = _read_state(db, module, table, lock=False)
            if saved is None:
                return None
            count = db.execute(f"SELECT count(*) FROM {quote(table.name)}").fetchone()[0]
    except FileNotFoundError:
        return None
    except module.errors() as exc:
        prefect.context.get("logger", log).warning("Cannot read the state of %s (%s): fetching every "
                                                   "source in full", describe(output, table), why(output, exc))
        return None
    if count != saved["rows"]:
        prefect.context.get("logger", log).info(
            "%s does not hold what the last run loaded: fetching every source in full", describe(output, table))
        return None
    last = Last(saved["token"], saved["records"], {})
    start = 0
    for fields in saved["pages"]:
        page = Page(**fields, start=start, basis=saved["token"])
        last.pages.setdefault(page.source, {}).setdefault(page.url, page)
        start += page.count
    return last


def why(output: str, exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__  # one line
    return mask_text(text, output)


# The load itself. ------------------------------------------------------------------------------


def _load(db, module, records: list, output: str, table: Table, pages: Optional[List[Page]]) -> Optional[int]:
    logger = prefect.context.get("logger", log)
    where = describe(output, table)
    module.begin(db, table.name)  # the write lock: a second writer waits; readers never do
    db.execute(f"CREATE TABLE IF NOT EXISTS {quote(STATE_TABLE)} (table_name TEXT PRIMARY KEY, state TEXT NOT NULL)")
    old = _read_state(db, module, table, lock=True) if pages is not None else None
    kept = [page for page in pages or () if page.start is not None]
    if kept and (old is None or any(page.basis != old["token"] for page in kept)):
        raise _changed(where)
    if kept and len(kept) == len(pages) and in_order(pages) == old["records"]:
        db.rollback()  # every page answered 304: the rows are as the last run left them
        logger.info("Left %s as it was: unchanged", where)
        return None
    # With several pages the state keeps each page's IDs; otherwise the table's key finds repeats.
    ids = _ids(records, pages, old) if pages and len(pages) > 1 else None
    if ids is not None:
        _check_unique(ids)
    exists = _check_shape(db, module, table.name, where)
    rows = records
    if table.mode == REPLACE and kept:
        if not exists:
            raise _changed(where)
        rows = list(records) + _read_rows(db, table.name, ids, records, pages)
    try:
        if exists:
            changed = _write(db, module, table, rows)
        else:
            module.create(db, table.name, rows)
            logger.info("Created %s", where)
            changed = len(rows)
    except module.errors() as exc:
        if not module.worth_retrying(exc):
            _check_unique([row["ID"] for row in rows])  # a repeated ID is the payload's fault
        raise
    if pages is None:
        state = None
    elif table.mode == REPLACE:
        state = _state(pages, ids, len(rows))
    else:
        state = _state(pages, ids, db.execute(f"SELECT count(*) FROM {quote(table.name)}").fetchone()[0])
    if state is not None and (old is None or {**old, "token": None} != {**state, "token": None}):
        _save_state(db, module, table, state)
    elif not changed:
        db.rollback()
        logger.info("Left %s as it was: unchanged", where)
        return None
    db.commit()
    if not changed:
        logger.info("Left the rows of %s as they were: unchanged; saved the sources' validators", where)
        return None
    logger.info("Loaded %d records into %s (%s): %d rows written or deleted",
                len(rows), where, table.mode, changed)
    return len(rows)


def _write(db, module, table: Table, records: list) -> int:
    """Make the table hold records (replace) or add them to it (merge); how many rows changed.
    Rows that are already as they should be are not written."""
    name = quote(table.name)
    if not _has_rows(db, table.name):
        module.copy(db, table.name, records)
        return len(records)
    module.stage(db, records)  # into the temporary table "prefectflow_new"
    repeated = db.execute('SELECT "ID" FROM prefectflow_new GROUP BY "ID" HAVING count(*) > 1 LIMIT 1').fetchone()
    if repeated:
        raise _repeated(repeated[0])
    changed = 0
    if table.mode == REPLACE:
        changed += db.execute(
            f'DELETE FROM {name} WHERE NOT EXISTS (SELECT 1 FROM prefectflow_new n WHERE n."ID" = {name}."ID")').rowcount
    columns = ", ".join(quote(c) for c in COLUMNS)
    others = [quote(c) for c in COLUMNS if c != KEY]
    changed += db.execute(
        f"INSERT INTO {name} ({columns}) SELECT {columns} FROM prefectflow_new WHERE true "
        f'ON CONFLICT ("ID") DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in others)} '
        f"WHERE ({', '.join(f'{name}.{c}' for c in others)}) {module.DISTINCT} "
        f"({', '.join(f'excluded.{c}' for c in others)})").rowcount
    db.execute("DROP TABLE prefectflow_new")
    return changed


def _has_rows(db, table: str) -> bool:
    return db.execute(f"SELECT EXISTS (SELECT 1 FROM {quote(table)})").fetchone()[0] in (True, 1)


def _check_shape(db, module, table: str, where: str) -> bool:
    """Whether table exists; SinkError naming what differs if it has another shape than ours."""
    found = module.columns(db, table)
    if found is None:
        return False
    wanted = module.TYPES
    problems = [f"no column {quote(c)}" for c in COLUMNS if c not in found]
    problems += [f"an extra column {quote(c)}" for c in found if c not in wanted]
    problems += [f"column {quote(c)} is {found[c]}, not {wanted[c][0]}"
                 for c in COLUMNS if c in found and found[c] not in wanted[c]]
    if not problems and not module.unique_key(db, table):
        problems.append('column "ID" is not a primary key or unique')
    if problems:
        raise SinkError(f"{where} has another shape than ours: {'; '.join(problems)}. It was left as it "
                        "is: give another --table, or drop or rename that table")
    return True


def _ids(records: list, pages: Optional[List[Page]], old: Optional[dict]) -> List[int]:
    """The IDs of what the table will hold after this run (in replace mode), page by page: those of
    pages that answered 304 from the last run's state, the others from the records."""
    new = iter(record["ID"] for record in records)
    if not pages or not any(page.start is not None for page in pages):
        return list(new)
    ids = []
    saved = (old or {}).get("ids") or []
    for page in pages:
        if page.start is None:
            ids.extend(next(new) for _ in range(page.count))
        else:
            ids.extend(saved[page.start:page.start + page.count])
    return ids


def _changed(where: str) -> SinkError:
    return SinkError(f"{where} changed during the run; the next run fetches every source in full")


def _check_unique(ids: List[int]) -> None:
    """PayloadError if an ID repeats."""
    seen = set()
    for repeated in ids:
        if repeated in seen:
            raise _repeated(repeated)
        seen.add(repeated)


def _repeated(repeated: int) -> PayloadError:
    return PayloadError(f'the records hold "ID" {repeated} more than once; a table is keyed by "ID", '
                        "so nothing was loaded")


def _read_rows(db, table: str, ids: List[int], records: list, pages: List[Page]) -> list:
    """The rows of the pages that answered 304, from the table."""
    fresh = {record["ID"] for record in records}
    keep = set(ids) - fresh
    columns = ", ".join(quote(c) for c in COLUMNS)
    rows = [dict(zip(COLUMNS, row)) for row in db.execute(f"SELECT {columns} FROM {quote(table)}")]
    found = [row for row in rows if row["ID"] in keep]
    if len(found) != len(keep):
        raise SinkError(f"table {quote(table)} changed during the run; the next run fetches every source in full")
    for row in found:
        row["Completado"] = bool(row["Completado"])
    return found


# The state row: committed with the rows, so it always describes them. -------------------------


def _state(pages: List[Page], ids: Optional[List[int]], rows: int) -> dict:
    fields = [{k: v for k, v in dataclasses.asdict(page).items() if k not in ("start", "basis")} for page in pages]
    # With several pages, each page's IDs: a page that answers 304 next time keeps its rows.
    return {"version": VERSION, "token": secrets.token_hex(8), "records": sum(page.count for page in pages),
            "rows": rows, "pages": fields, "ids": ids}


def _read_state(db, module, table: Table, lock: bool) -> Optional[dict]:
    found = db.execute(f"SELECT state FROM {quote(STATE_TABLE)} WHERE table_name = {module.PARAM}"
                       + (module.FOR_UPDATE if lock else ""), (table.name,)).fetchone()
    try:
        saved = json.loads(found[0])
        if saved["version"] != VERSION or not isinstance(saved["pages"], list):
            return None
        for fields in saved["pages"]:
            Page(**fields)
        fine = all(isinstance(saved[k], int) for k in ("records", "rows")) and isinstance(saved["token"], str)
        return saved if fine else None
    except (TypeError, ValueError, KeyError):
        return None  # no state, or one we cannot read: every source is fetched in full


def _save_state(db, module, table: Table, state: dict) -> None:
    db.execute(f"DELETE FROM {quote(STATE_TABLE)} WHERE table_name = {module.PARAM}", (table.name,))
    db.execute(f"INSERT INTO {quote(STATE_TABLE)} (table_name, state) VALUES ({module.PARAM}, {module.PARAM})",
               (table.name, json.dumps(state)))


