"""PostgreSQL outputs, with psycopg 3: postgresql://user:password@host:port/dbname (or postgres://),
a libpq connection URI, so sslmode and libpq's other parameters, PGPASSWORD, ~/.pgpass and
PGSERVICE work. Rows go in with COPY, in one transaction: a reader in another session sees the old
rows or the new ones."""
from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Dict, Iterator, Optional

from etl.source import mask_text, mask_url
from etl.sql import COLUMNS, batches, quote, row_values

if TYPE_CHECKING:  # psycopg is imported when a PostgreSQL output is used, not with this module
    import psycopg

CONNECT_TIMEOUT = 10  # seconds, unless the URI's connect_timeout or PGCONNECT_TIMEOUT says otherwise
PARAM, FOR_UPDATE, DISTINCT = "%s", " FOR UPDATE", "IS DISTINCT FROM"
# The column types we create first; the others we accept in a table that exists.
TYPES = {"UsuarioID": ("bigint", "integer"), "ID": ("bigint", "integer"),
         "Titulo": ("text", "character varying"), "Completado": ("boolean",)}
# The table's name within its database and schema, hashed to a key for advisory locks.
_KEY = "hashtextextended(current_database() || '.' || current_schema() || '.' || %s, 0)"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def errors() -> tuple:
    """The exceptions that say the database failed, not we."""
    import psycopg

    return (psycopg.Error,)


def check_url(output: str) -> str:
    """output, if libpq can read it as a connection URI; ValueError naming it masked otherwise."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(output)
    except psycopg.Error as exc:
        raise ValueError(f"{mask_url(output)}: not a PostgreSQL connection URI "
                         f"({mask_text(' '.join(str(exc).split()), output)})") from None
    for port in str(params.get("port", "")).split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{mask_url(output)}: not a PostgreSQL connection URI (port {port!r})")
    return output


def worth_retrying(exc: Exception) -> bool:
    """The server could not be reached, or dropped the connection (psycopg's OperationalError)."""
    import psycopg

    return isinstance(exc, psycopg.OperationalError)


def _settings(output: str) -> dict:
    from psycopg.conninfo import conninfo_to_dict

    if "connect_timeout" in conninfo_to_dict(output) or os.environ.get("PGCONNECT_TIMEOUT"):
        return {"application_name": "prefectflow"}
    return {"application_name": "prefectflow", "connect_timeout": CONNECT_TIMEOUT}


@contextlib.contextmanager
def connect(output: str, write: bool = True) -> Iterator[psycopg.Connection]:
    """A connection, not in autocommit: its first statement begins a transaction, and closing it
    rolls back what was not committed."""
    import psycopg

    db = psycopg.connect(output, **_settings(output))
    try:
        yield db
    finally:
        db.close()


def lock(output: str, table: str) -> Optional[psycopg.Connection]:
    """A connection holding a session-level advisory lock on table in output's database, for as
    long as it stays open: one process loading into it at a time. None if another session holds it."""
    import psycopg

    db = psycopg.connect(output, autocommit=True, **_settings(output))
    try:
        held = db.execute(f"SELECT pg_try_advisory_lock({_KEY})", (table,)).fetchone()[0]
    except BaseException:
        db.close()
        raise
    if not held:
        db.close()
        return None
    return db


def begin(db: psycopg.Connection, table: str) -> None:
    """Serialize our loads into table until the transaction ends (a lock of its own, apart from
    lock()'s); readers never wait."""
    db.execute("SELECT pg_advisory_xact_lock(hashtext('prefectflow load'), hashtext(%s))",
               (_qualified(db, table),))


def _qualified(db: psycopg.Connection, table: str) -> str:
    return db.execute("SELECT current_database() || '.' || current_schema() || '.' || %s", (table,)).fetchone()[0]


def columns(db: psycopg.Connection, table: str) -> Optional[Dict[str, str]]:
    """table's columns and their types; None if there is no such table."""
    if db.execute("SELECT to_regclass(%s)", (quote(table),)).fetchone()[0] is None:
        return None
    return dict(db.execute(
        "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (quote(table),)).fetchall())


def unique_key(db: psycopg.Connection, table: str) -> bool:
    """Whether "ID" alone is the table's primary key or has a unique index (without a condition)."""
    return db.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass(%s) AND i.indisunique "
        "AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = 'ID')",
        (quote(table),)).fetchone()[0]


def create(db: psycopg.Connection, table: str, records: list) -> None:
    """table, holding records. Its key comes once they are in: one sort builds its index, in about
    half the time that adding a million rows to it one at a time took."""
    db.execute(f'CREATE TABLE {quote(table)} ("UsuarioID" bigint NOT NULL, "ID" bigint NOT NULL, '
               '"Titulo" text NOT NULL, "Completado" boolean NOT NULL)')
    copy(db, table, records)
    db.execute(f'ALTER TABLE {quote(table)} ADD PRIMARY KEY ("ID")')


def copy(db: psycopg.Connection, table: str, records: list) -> None:
    """COPY records into table, in COPY's text format, a batch at a time."""
    with db.cursor() as cursor:
        with cursor.copy(f"COPY {quote(table)} ({', '.join(map(quote, COLUMNS))}) FROM STDIN") as copying:
            for batch in batches(records):
                copying.write(copy_text(batch))


def copy_text(records: list) -> str:
    """records as lines of COPY's text format. Titles are escaped only in a batch where one needs it,
    which the separators' count tells: escaping every title took two fifths of the load's time."""
    rows = list(map(row_values, records))  # (UsuarioID, ID, Titulo, Completado)
    text = _lines(rows)
    if text.count("\t") == 3 * len(rows) and text.count("\n") == len(rows) and "\\" not in text and "\r" not in text:
        return text
    return _lines([(user, id_, title.translate(_ESCAPES), done) for user, id_, title, done in rows])


def _lines(rows: list) -> str:
    return "".join([f'{user}\t{id_}\t{title}\t{"t" if done else "f"}\n' for user, id_, title, done in rows])


def stage(db: psycopg.Connection, records: list) -> None:
    """records in the temporary table prefectflow_new, to be compared with the table in SQL."""
    db.execute('CREATE TEMP TABLE prefectflow_new ("UsuarioID" bigint, "ID" bigint, "Titulo" text, '
               '"Completado" boolean) ON COMMIT DROP')
    copy(db, "prefectflow_new", records)
    db.execute("ANALYZE prefectflow_new")
