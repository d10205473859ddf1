"""SQLite outputs, with the standard library's sqlite3: sqlite:///relative/path.db or
sqlite:////absolute/path.db, a file that needs no server. Written under SQLite's write lock
(BEGIN IMMEDIATE), so a reader sees the old rows or the new ones."""
import contextlib
import os
import sqlite3
from typing import Dict, Iterator, Optional

from etl.sql import COLUMNS, batches, quote, row_values

PREFIX = "sqlite:///"
BUSY_TIMEOUT = 30.0  # seconds to wait for another writer's lock before the attempt fails (and is retried)
PARAM, FOR_UPDATE, DISTINCT = "?", "", "IS NOT"
# The column types we create first; the others we accept in a table that exists.
TYPES = {"UsuarioID": ("INTEGER", "BIGINT", "INT"), "ID": ("INTEGER", "BIGINT", "INT"),
         "Titulo": ("TEXT", "VARCHAR"), "Completado": ("BOOLEAN", "INTEGER", "INT")}


def check_url(output: str) -> str:
    """output with its path made absolute (a Dask worker resolves nothing against our folder);
    ValueError if it names no file."""
    if not output.lower().startswith(PREFIX):
        raise ValueError(f"{output}: write sqlite:///relative/path.db or sqlite:////absolute/path.db")
    path = output[len(PREFIX):]
    if not path or path.endswith("/") or path == ":memory:":
        raise ValueError(f"{output}: no database file; write sqlite:///relative/path.db or sqlite:////absolute/path.db")
    return PREFIX + os.path.abspath(path)


def path_of(output: str) -> str:
    return output[len(PREFIX):]


def errors() -> tuple:
    """The exceptions that say the database failed, not we."""
    return (sqlite3.Error,)


def worth_retrying(exc: Exception) -> bool:
    """Another process holds the database's lock for longer than BUSY_TIMEOUT."""
    return getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


@contextlib.contextmanager
def connect(output: str, write: bool = True) -> Iterator[sqlite3.Connection]:
    """A connection whose transactions we begin and end ourselves; closing it rolls back what was
    not committed. Without write, a missing file is not created (FileNotFoundError)."""
    path = path_of(output)
    if write:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    elif not os.path.exists(path):
        raise FileNotFoundError(path)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def begin(db: sqlite3.Connection, table: str) -> None:
    """Take the database's write lock now: a second writer waits here, readers go on."""
    db.execute("BEGIN IMMEDIATE")


def columns(db: sqlite3.Connection, table: str) -> Optional[Dict[str, str]]:
    """table's columns and their declared types; None if there is no such table."""
    found = {name: kind.upper() for _, name, kind, *_ in db.execute(f"PRAGMA table_info({quote(table)})")}
    return found or None


def unique_key(db: sqlite3.Connection, table: str) -> bool:
    """Whether "ID" alone is the table's primary key or has a unique index."""
    keys = [name for _, name, _, _, _, pk in db.execute(f"PRAGMA table_info({quote(table)})") if pk]
    if keys == ["ID"]:
        return True
    for _, index, unique, *_ in db.execute(f"PRAGMA index_list({quote(table)})").fetchall():
        if unique and [row[2] for row in db.execute(f"PRAGMA index_info({quote(index)})")] == ["ID"]:
            return True
    return False


def create(db: sqlite3.Connection, table: str, records: list) -> None:
    """table, holding records."""
    db.execute(f'CREATE TABLE {quote(table)} ("UsuarioID" INTEGER NOT NULL, "ID" INTEGER PRIMARY KEY, '
               '"Titulo" TEXT NOT NULL, "Completado" BOOLEAN NOT NULL)')
    copy(db, table, records)


def copy(db: sqlite3.Connection, table: str, records: list) -> None:
    """Insert records into table."""
    insert = f"INSERT INTO {quote(table)} ({', '.join(map(quote, COLUMNS))}) VALUES (?, ?, ?, ?)"
    for batch in batches(records):
        db.executemany(insert, map(row_values, batch))


def stage(db: sqlite3.Connection, records: list) -> None:
    """records in the temporary table prefectflow_new, to be compared with the table in SQL."""
    db.execute('CREATE TEMP TABLE prefectflow_new ("UsuarioID" INTEGER, "ID" INTEGER PRIMARY KEY, '
               '"Titulo" TEXT, "Completado" BOOLEAN)')
    copy(db, "prefectflow_new", records)
