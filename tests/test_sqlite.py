"""SQLite outputs on a real database file: replace and merge, rows and file left untouched, the
state in the same transaction, kill -9 mid-load, a table of another shape."""
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest
from conftest import RECORDS, SCRIPT, TODOS, cached, cli, ok, status, wait_for

import prefectflow
from etl.database import Table
from etl.service import run_once


def todos(count, user=1, first=1):
    return [{"userId": user, "id": first + i, "title": f"todo {i}", "completed": i % 3 == 0} for i in range(count)]


def run(db, url, mode="replace", table="todos", **settings):
    flow = prefectflow.build_flow(output=f"sqlite:///{db}", table=Table(table, mode), retries=0, **settings)
    summary, _ = run_once(flow, [url] if isinstance(url, str) else url)
    return summary


def rows(db, table="todos"):
    with sqlite3.connect(db) as con:
        found = con.execute(f'SELECT "UsuarioID", "ID", "Titulo", "Completado" FROM "{table}" ORDER BY "ID"')
        return [{"UsuarioID": u, "ID": i, "Titulo": t, "Completado": bool(c)} for u, i, t, c in found]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_a_relative_path_is_loaded_and_queried_with_sqlite3(source, tmp_path):
    url = source.add("/todos", cached(ETag='"v1"'), cached(ETag='"v1"'), ok(ETag='"v1"'))
    result = cli("--once", "--url", url, "--output", "sqlite:///out/todos.db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    db = tmp_path / "out" / "todos.db"
    assert rows(db) == RECORDS
    assert f'Loaded 3 records into table "todos" of sqlite:///{db} (replace): 3 rows written or deleted' in result.stdout
    before = digest(db)
    for answer in ("304", "200"):  # the same records again: unchanged either way
        again = cli("--once", "--url", url, "--output", "sqlite:///out/todos.db", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert f'Left table "todos" of sqlite:///{db} as it was: unchanged' in again.stdout
        assert "Success, unchanged" in again.stdout
    assert source.asked("/todos")[1]["If-None-Match"] == '"v1"'
    assert digest(db) == before
    with sqlite3.connect(db) as con:
        assert [(name, kind) for _, name, kind, *_ in con.execute('PRAGMA table_info("todos")')] == [
            ("UsuarioID", "INTEGER"), ("ID", "INTEGER"), ("Titulo", "TEXT"), ("Completado", "BOOLEAN")]


def test_replace_holds_exactly_the_new_records_and_merge_never_deletes(source, tmp_path):
    db = tmp_path / "t.db"
    run(db, source.add("/old", ok(todos(5))))
    new = todos(3, user=2, first=4)
    assert run(db, source.add("/new", ok(new)))["records"] == 3
    assert [r["ID"] for r in rows(db)] == [4, 5, 6]
    assert run(db, source.add("/more", ok([dict(new[0], title="x"), *todos(1, first=9)])), mode="merge")["changed"]
    assert [(r["ID"], r["Titulo"]) for r in rows(db)] == [(4, "x"), (5, "todo 1"), (6, "todo 2"), (9, "todo 0")]


def test_an_unchanged_payload_leaves_the_file_untouched(source, tmp_path):
    db = tmp_path / "t.db"
    url = source.add("/todos", ok(todos(1000)))
    run(db, url)
    before = digest(db)
    for mode in ("replace", "merge"):
        summary = run(db, url, mode=mode)
        assert (summary["state"], summary["changed"]) == ("Success", False)
    assert digest(db) == before


def test_a_repeated_id_writes_nothing(source, tmp_path):
    db = tmp_path / "t.db"
    run(db, source.add("/old", ok()))
    before = digest(db)
    for mode in ("replace", "merge"):
        summary = run(db, source.add("/dup", ok(TODOS + TODOS[:1])), mode=mode)
        assert summary["error"] == ('load failed: the records hold "ID" 1 more than once; a table is keyed by "ID", '
                                    "so nothing was loaded")
    assert digest(db) == before
    fresh = tmp_path / "new.db"  # into a new table
    assert run(fresh, source.add("/dup", ok(TODOS + TODOS[:1])))["error"].startswith(
        'load failed: the records hold "ID" 1 more than once')
    assert sqlite3.connect(fresh).execute("SELECT name FROM sqlite_master").fetchall() == []


def test_empty_payloads_failed_sources_and_a_table_of_another_shape_leave_the_file_alone(source, tmp_path):
    db = tmp_path / "t.db"
    run(db, source.add("/old", ok()))
    with sqlite3.connect(db) as con:
        con.execute('CREATE TABLE other ("ID" INTEGER PRIMARY KEY, "Titulo" BLOB)')
    before = digest(db)
    assert run(db, source.add("/empty", ok([])))["error"].endswith("source returned an empty list (--allow-empty accepts it)")
    assert run(db, source.add("/down", status(503)))["error"].startswith("extract failed")
    result = cli("--once", "--url", source.add("/todos", ok()), "--output", f"sqlite:///{db}", "--table", "other")
    assert result.returncode == 1
    assert result.stderr == (
        f'prefectflow.py: error: load failed: table "other" of sqlite:///{db} has another shape than ours: no column '
        '"UsuarioID"; no column "Completado"; column "Titulo" is BLOB, not TEXT. It was left as it is: give another '
        "--table, or drop or rename that table\n")
    assert digest(db) == before


def test_titles_round_trip(source, tmp_path):
    titles = ["a\tb", "line\nbreak", "back\\slash", "señal \"rota\" 🎉", "", "nul \u0000 inside"]
    payload = [{"userId": 1, "id": i, "title": t, "completed": bool(i % 2)} for i, t in enumerate(titles)]
    run(tmp_path / "t.db", source.add("/todos", ok(payload)))
    assert [r["Titulo"] for r in rows(tmp_path / "t.db")] == titles


def test_a_304_leaves_the_file_alone_and_pages_keep_their_rows(source, tmp_path):
    db = tmp_path / "t.db"
    second = source.url("/p2")
    first = source.add("/p1", cached(TODOS[:2], ETag='"a"', Link=f'<{second}>; rel="next"'))
    source.add("/p2", cached(TODOS[2:], ETag='"b1"'))
    run(db, first, paginate=True)
    before = digest(db)
    assert run(db, first, paginate=True)["changed"] is False
    assert digest(db) == before
    source.add("/p2", ok([dict(TODOS[2], title="new")], ETag='"b2"'))
    assert run(db, first, paginate=True)["records"] == 3
    assert rows(db) == RECORDS[:2] + [dict(RECORDS[2], Titulo="new")]
    with sqlite3.connect(db) as con:
        (state,), = con.execute("SELECT state FROM prefectflow_state WHERE table_name = 'todos'")
    assert [p["etag"] for p in json.loads(state)["pages"]] == ['"a"', '"b2"']


@pytest.mark.parametrize("phase", ["first change", "growing the file"])
def test_kill_9_mid_load_leaves_the_old_rows(source, tmp_path, phase):
    db = tmp_path / "t.db"
    run(db, source.add("/old", ok(todos(50_000))))
    size = db.stat().st_size
    with sqlite3.connect(db) as con:
        before = con.execute('SELECT count(*), sum("UsuarioID"), max("ID") FROM todos').fetchall()
    url = source.add("/new", ok(json.dumps(todos(400_000, user=2, first=20_001)).encode()))
    journal = tmp_path / "t.db-journal"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--once", "--retries", "0", "--url", url,
                             "--output", f"sqlite:///{db}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The rollback journal exists once the load has changed the database file, until it commits;
        # the file grows once the rows that did not fit the old pages are being inserted.
        def caught_in_phase():
            return journal.exists() and (phase == "first change" or db.stat().st_size > size)
        caught = wait_for(lambda: caught_in_phase() or proc.poll() is not None, f"the load {phase}")
        assert proc.poll() is None and caught, "the load ended before it was caught"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    with sqlite3.connect(db) as con:  # the next reader rolls the hot journal back
        assert con.execute('SELECT count(*), sum("UsuarioID"), max("ID") FROM todos').fetchall() == before


def test_a_database_locked_by_another_writer_is_retried_then_fails_in_one_line(source, tmp_path, monkeypatch):
    import etl.sqlite

    monkeypatch.setattr(etl.sqlite, "BUSY_TIMEOUT", 0.05)
    db = tmp_path / "t.db"
    run(db, source.add("/old", ok()))
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        flow = prefectflow.build_flow(output=f"sqlite:///{db}", retries=2, retry_delay=0.01)
        summary, _ = run_once(flow, [source.add("/new", ok(TODOS[:1]))])
    finally:
        writer.rollback()
        writer.close()
    assert summary["error"] == f"load failed after 3 attempts: cannot load into sqlite:///{db}: database is locked"
    assert rows(db) == RECORDS
