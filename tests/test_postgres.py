"""PostgreSQL outputs against a real, throwaway PostgreSQL (tests/pgcluster.py): replace and merge,
rows left untouched, the state in the same transaction, a reader that never sees a partial table,
kill -9 mid-load, a database that is down or drops the connection, secrets masked, executors."""
import json
import os
import signal
import subprocess
import sys
import threading

import pytest
from conftest import RECORDS, SCRIPT, TODOS, cached, cli, history, ok, status, wait_for
from pgcluster import postgres_cluster, pg  # noqa: F401  (fixtures)

import prefectflow
from etl.database import Table
from etl.records import BATCH
from etl.service import run_once

COLUMNS = '"UsuarioID", "ID", "Titulo", "Completado"'


def todos(count, user=1, first=1):
    return [{"userId": user, "id": first + i, "title": f"todo {i}", "completed": i % 3 == 0} for i in range(count)]


def run(pg, url, table=None, mode="replace", retries=0, **settings):
    """One run of the flow from url into pg's database, in this process; its summary."""
    flow = prefectflow.build_flow(output=pg.url, table=Table(table or "todos", mode), retries=retries,
                                  retry_delay=0.01, **settings)
    summary, _ = run_once(flow, [url] if isinstance(url, str) else url)
    return summary


def xmins(pg, table="todos"):
    return dict(pg.sql(f'SELECT "ID", xmin::text FROM "{table}"'))


def state_row(pg):
    return pg.sql("SELECT state FROM prefectflow_state WHERE table_name = 'todos'")


# replace and merge ------------------------------------------------------------------


def test_replace_creates_the_table_and_loads_the_records_with_copy(pg, source):
    pg.sql(f"ALTER DATABASE {pg.name} SET log_statement = 'all'")
    summary = run(pg, source.add("/todos", ok()))
    assert (summary["state"], summary["records"], summary["changed"]) == ("Success", 3, True)
    assert pg.rows() == RECORDS
    assert pg.sql("SELECT attname, format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = 'todos'::regclass "
                  "AND attnum > 0 ORDER BY attnum") == [
        ("UsuarioID", "bigint"), ("ID", "bigint"), ("Titulo", "text"), ("Completado", "boolean")]
    assert pg.sql("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'todos'::regclass "
                  "AND contype = 'p'") == [("PRIMARY KEY (\"ID\")",)]  # PostgreSQL 18 lists NOT NULLs there too
    log = [line for line in pg.cluster.log().splitlines() if line.startswith(f"{pg.name}:") and "statement:" in line]
    assert sum('COPY "todos"' in line for line in log) == 1
    assert not any('INSERT INTO "todos"' in line for line in log)


def test_replace_leaves_exactly_the_new_records(pg, source):
    assert run(pg, source.add("/old", ok(todos(5, user=1))))["records"] == 5
    new = todos(3, user=2, first=4)  # 4 and 5 updated, 6 added, 1 to 3 gone
    summary = run(pg, source.add("/new", ok(new)))
    assert (summary["records"], summary["changed"]) == (3, True)
    assert pg.rows() == [{"UsuarioID": 2, "ID": t["id"], "Titulo": t["title"], "Completado": t["completed"]}
                         for t in new]


def test_an_unchanged_payload_leaves_every_row_untouched(pg, source):
    url = source.add("/todos", ok(todos(100)))
    run(pg, url)
    before = xmins(pg)
    summary = run(pg, url)
    assert (summary["state"], summary["changed"]) == ("Success", False)
    assert xmins(pg) == before


def test_a_changed_record_rewrites_only_its_row(pg, source):
    old = todos(100)
    run(pg, source.add("/old", ok(old)))
    before = xmins(pg)
    new = [dict(t) for t in old]
    new[41]["title"] = "changed"
    assert run(pg, source.add("/new", ok(new)))["changed"]
    after = xmins(pg)
    assert [i for i in after if after[i] != before[i]] == [42]
    assert pg.rows()[41]["Titulo"] == "changed"


def test_merge_inserts_and_updates_by_id_and_never_deletes(pg, source):
    run(pg, source.add("/old", ok(todos(5))), mode="merge")
    before = xmins(pg)
    new = [dict(todos(5)[3], title="updated"), *todos(2, user=7, first=6)]
    summary = run(pg, source.add("/new", ok(new)), mode="merge")
    assert (summary["state"], summary["changed"]) == ("Success", True)
    rows = pg.rows()
    assert [r["ID"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[3]["Titulo"] == "updated" and rows[5]["UsuarioID"] == 7
    after = xmins(pg)
    assert {i for i in after if after.get(i) != before.get(i)} == {4, 6, 7}


def test_merge_with_a_repeated_id_is_a_payload_error_and_writes_nothing(pg, source):
    run(pg, source.add("/old", ok(todos(3))), mode="merge")
    before = xmins(pg)
    for mode, payload in [("merge", todos(2, first=10) + todos(1, user=5, first=11)),
                          ("merge", todos(3) + todos(1, first=2)),  # repeats a row the table holds as it is
                          ("replace", todos(3) + todos(1, first=2))]:
        summary = run(pg, source.add(f"/dup{len(payload)}", ok(payload)), mode=mode)
        assert summary["error"] == (f'load failed: the records hold "ID" {payload[-1]["id"]} more than once; a '
                                    'table is keyed by "ID", so nothing was loaded')
    assert xmins(pg) == before and len(pg.rows()) == 3
    pg.sql("DELETE FROM todos")  # into an empty table: straight in, and the table's key finds it
    assert run(pg, source.add("/dup", ok(todos(3) + todos(1, first=2))))["error"].startswith(
        'load failed: the records hold "ID" 2 more than once')
    assert pg.rows() == []
    pg.sql("DROP TABLE todos")  # into a new table: its key, added once the rows are in, finds it
    assert run(pg, source.add("/dup", ok(todos(3) + todos(1, first=2))))["error"].startswith(
        'load failed: the records hold "ID" 2 more than once')
    assert pg.sql("SELECT to_regclass('todos')") == [(None,)]


def test_titles_with_tabs_newlines_and_backslashes_round_trip(pg, source):
    special = ["a\tb", "line\nbreak", "carriage\rreturn", "back\\slash", "\\N", "\\.", "señal \"rota\" 🎉", "",
               " trailing "]
    # Each in a COPY batch of its own, among plain titles: it alone says the batch must be escaped.
    titles = [title for one in special for title in [one] + ["plain"] * (BATCH - 1)]
    payload = [{"userId": 1, "id": i, "title": t, "completed": bool(i % 2)} for i, t in enumerate(titles)]
    run(pg, source.add("/todos", ok(payload)))
    assert [r["Titulo"] for r in pg.rows()] == titles
    assert run(pg, source.add("/todos", ok(payload)))["changed"] is False  # into a table with rows: staged, compared


def test_a_nul_in_a_title_fails_in_one_line_and_writes_nothing(pg, source):
    run(pg, source.add("/old", ok()))
    summary = run(pg, source.add("/nul", ok([dict(TODOS[0], title="a\u0000b")])))
    assert summary["error"].startswith(f"load failed: cannot load into postgresql://***@127.0.0.1:{pg.cluster.port}/"
                                       f"{pg.name}: ")
    assert "\n" not in summary["error"]
    assert pg.rows() == RECORDS


# What never changes the table -----------------------------------------------------------


def test_an_empty_payload_or_a_failed_source_never_changes_the_table(pg, source):
    run(pg, source.add("/old", ok()))
    before = xmins(pg), state_row(pg)
    assert run(pg, source.add("/empty", ok([])))["error"].endswith("source returned an empty list (--allow-empty accepts it)")
    assert run(pg, source.add("/down", status(500)))["error"].startswith("extract failed")
    assert run(pg, source.add("/bad", ok([{"id": 1}])))["error"].startswith("extract failed")
    assert (xmins(pg), state_row(pg)) == before
    assert pg.rows() == RECORDS


def test_allow_empty_empties_the_table_in_replace_mode(pg, source):
    run(pg, source.add("/old", ok()))
    assert run(pg, source.add("/empty", ok([])), allow_empty=True)["state"] == "Success"
    assert pg.rows() == []


def test_a_table_of_another_shape_is_named_and_left_alone(pg, source):
    pg.sql('CREATE TABLE todos ("UsuarioID" int, "ID" text PRIMARY KEY, "Titulo" text, extra int)')
    pg.sql("INSERT INTO todos VALUES (1, 'x', 'kept', 0)")
    url = source.add("/todos", ok())
    result = cli("--once", "--retries", 0, "--url", url, "--output", pg.url_without_password, env=pg.env())
    assert result.returncode == 1
    assert result.stderr == (
        f'prefectflow.py: error: load failed: table "todos" of postgresql://***@127.0.0.1:{pg.cluster.port}/'
        f'{pg.name} has another shape than ours: no column "Completado"; an extra column "extra"; column "ID" is '
        "text, not bigint. It was left as it is: give another --table, or drop or rename that table\n")
    assert pg.sql("SELECT * FROM todos") == [(1, "x", "kept", 0)]
    pg.sql('CREATE TABLE keyless ("UsuarioID" int, "ID" int, "Titulo" text, "Completado" boolean)')
    assert run(pg, url, table="keyless")["error"].endswith(
        'has another shape than ours: column "ID" is not a primary key or unique. It was left as it is: give '
        "another --table, or drop or rename that table")


def test_an_existing_table_of_our_shape_with_integer_columns_is_loaded(pg, source):
    pg.sql('CREATE TABLE mine ("ID" integer UNIQUE, "UsuarioID" integer, "Titulo" varchar(200), "Completado" boolean)')
    assert run(pg, source.add("/todos", ok()), table="mine")["records"] == 3
    assert pg.rows("mine") == RECORDS


# Conditional requests and pages, with their state in the same database ---------------------


def test_a_304_leaves_the_table_alone_and_the_state_lives_in_the_database(pg, source):
    url = source.add("/todos", cached(ETag='"v1"'))
    run(pg, url)
    before = xmins(pg), state_row(pg)
    (saved,) = before[1]
    assert json.loads(saved[0])["pages"][0]["etag"] == '"v1"'
    summary = run(pg, url)
    assert (summary["state"], summary["changed"]) == ("Success", False)
    assert source.asked("/todos")[1]["If-None-Match"] == '"v1"'
    assert (xmins(pg), state_row(pg)) == before


def test_rows_deleted_by_hand_make_the_next_run_fetch_in_full(pg, source):
    url = source.add("/todos", cached(ETag='"v1"'))
    run(pg, url)
    pg.sql('DELETE FROM todos WHERE "ID" = 2')
    assert run(pg, url)["changed"] is True
    assert "If-None-Match" not in source.asked("/todos")[1]
    assert pg.rows() == RECORDS


def test_pages_that_answer_304_keep_their_rows_when_others_change(pg, source):
    second = source.url("/p2")
    first = source.add("/p1", cached(TODOS[:2], ETag='"a"', Link=f'<{second}>; rel="next"'))
    source.add("/p2", ok(TODOS[2:], ETag='"b1"'), ok([dict(TODOS[2], title="new")], ETag='"b2"'))
    assert run(pg, first, paginate=True)["records"] == 3
    summary = run(pg, first, paginate=True)
    assert (summary["state"], summary["records"], summary["pages"]) == ("Success", 3, 2)
    assert [h.get("If-None-Match") for h in source.asked("/p1")] == [None, '"a"']
    assert pg.rows() == RECORDS[:2] + [dict(RECORDS[2], Titulo="new")]


@pytest.mark.parametrize("change", ['DELETE FROM todos WHERE "ID" = 1', "DROP TABLE todos"])
def test_a_table_changed_during_the_run_is_not_trusted_for_pages_that_answered_304(pg, source, change):
    """While the second page is fetched, someone deletes a row the first page's 304 would keep, or
    the table: the run fails in one line and writes nothing; the next fetches every page in full."""
    second = source.url("/p2")
    first = source.add("/p1", cached(TODOS[:2], ETag='"a"', Link=f'<{second}>; rel="next"'))

    def changing(handler):
        pg.sql(change)
        ok([dict(TODOS[2], title="new")], ETag='"b2"')(handler)
    source.add("/p2", ok(TODOS[2:], ETag='"b1"'), changing, ok([dict(TODOS[2], title="new")], ETag='"b2"'))
    run(pg, first, paginate=True)
    summary = run(pg, first, paginate=True)
    assert summary["error"].startswith('load failed: table "todos"'), summary
    assert summary["error"].endswith(" changed during the run; the next run fetches every source in full")
    assert run(pg, first, paginate=True)["records"] == 3
    assert [h.get("If-None-Match") for h in source.asked("/p1")] == [None, '"a"', None]
    assert pg.rows() == RECORDS[:2] + [dict(RECORDS[2], Titulo="new")]


# Readers, kill -9 and dropped connections ------------------------------------------------


def loader_busy(pg):
    """The query of our loading session while it holds a write transaction; None if there is none."""
    found = pg.sql("SELECT query FROM pg_stat_activity WHERE application_name = 'prefectflow' AND datname = %s "
                   "AND backend_xid IS NOT NULL", (pg.name,))
    return found[0][0] if found else None


def test_a_reader_sees_the_old_rows_or_the_new_never_a_mix(pg, source):
    run(pg, source.add("/old", ok(todos(200_000, user=1))))
    url = source.add("/new", ok(json.dumps(todos(150_000, user=2, first=100_001)).encode()))
    seen, stop = [], threading.Event()

    def read():
        import psycopg

        with psycopg.connect(pg.url, autocommit=True) as db:
            while not stop.is_set():
                busy = loader_busy(pg)
                rows = db.execute('SELECT count(*), min("UsuarioID"), max("UsuarioID") FROM todos').fetchone()
                seen.append((rows, busy))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        result = cli("--once", "--retries", 0, "--url", url, "--output", pg.url_without_password, env=pg.env())
    finally:
        stop.set()
        reader.join()
    assert result.returncode == 0, result.stderr
    assert {rows for rows, _ in seen} <= {(200_000, 1, 1), (150_000, 2, 2)}, set(rows for rows, _ in seen)
    assert any(rows == (200_000, 1, 1) and busy for rows, busy in seen), "no read while the load was under way"
    assert seen[-1][0] == (150_000, 2, 2)


@pytest.mark.parametrize("phase", ["COPY", "INSERT"])
def test_kill_9_mid_load_leaves_the_old_rows(pg, source, phase):
    run(pg, source.add("/old", ok(todos(100_000, user=1))))
    before = xmins(pg), state_row(pg)
    url = source.add("/new", ok(json.dumps(todos(300_000, user=2, first=50_001)).encode()))
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--once", "--retries", "0", "--url", url, "--output",
                             pg.url_without_password], env={**os.environ, **pg.env()},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        query = wait_for(lambda: (q := loader_busy(pg)) and q.startswith(phase) and q or proc.poll() is not None,
                         f"a {phase} of the load")
        assert query is not True, f"the load ended before its {phase} was caught"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: loader_busy(pg) is None, "the killed session's end")
    assert (xmins(pg), state_row(pg)) == before
    assert pg.sql('SELECT count(*), max("UsuarioID") FROM todos') == [(100_000, 1)]


def test_a_connection_dropped_mid_load_is_retried(pg, source):
    run(pg, source.add("/old", ok(todos(50_000, user=1))))
    url = source.add("/new", ok(json.dumps(todos(200_000, user=2)).encode()))
    killed = []

    def drop_the_load():
        def copying():
            found = pg.sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'prefectflow' AND "
                           "datname = %s AND query LIKE 'COPY%%' AND backend_xid IS NOT NULL", (pg.name,))
            return found and found[0][0]
        pid = wait_for(copying, "the load's COPY")
        killed.append(pg.sql("SELECT pg_terminate_backend(%s)", (pid,))[0][0])

    dropper = threading.Thread(target=drop_the_load)
    dropper.start()
    result = cli("--once", "--retries", 2, "--retry-delay", 0.01, "--url", url, "--output", pg.url_without_password,
                 env=pg.env())
    dropper.join()
    assert killed == [True]
    assert result.returncode == 0, result.stderr
    assert "Task 'load': Finished task run for task with final state: 'Retrying'" in result.stdout
    assert pg.sql('SELECT count(*), min("UsuarioID") FROM todos') == [(200_000, 2)]


def test_a_database_that_is_down_is_retried_then_fails_in_one_line(pg, source, tmp_path):
    down = pg.url_without_password.replace(f":{pg.cluster.port}/", ":1/")
    log = tmp_path / "runs.jsonl"
    result = cli("--once", "--retries", 2, "--retry-delay", 0.01, "--url", source.add("/todos", ok()),
                 "--output", down, "--history", log, env=pg.env())
    masked = f"postgresql://***@127.0.0.1:1/{pg.name}"
    assert result.returncode == 1
    assert result.stderr.startswith(f"prefectflow.py: error: load failed after 3 attempts: cannot load into {masked}: "
                                    "connection failed: ")
    assert result.stderr.count("\n") == 1
    assert result.stdout.count("Task 'load': Finished task run for task with final state: 'Retrying'") == 2
    (line,) = history(log)
    assert (line["state"], line["output"]) == ("Failed", masked)


# Secrets -------------------------------------------------------------------------------


def secret_forms(password):
    from urllib.parse import quote

    return {password, quote(password, safe="")}


def test_the_password_shows_nowhere(pg, source, tmp_path):
    """The password in the output URL (passed through the environment, not the command line, which
    ps shows) is masked in the log, stderr, --history, the status page, /metrics, /healthz and notices."""
    import urllib.request

    hook = source.add("/hook", ok({}))
    wrong_db = pg.url.rsplit("/", 1)[0] + "/nosuchdb"
    argv = ["--interval", 1, "--retries", 0, "--url", source.add("/todos", ok()), "--output", wrong_db, "--history",
            tmp_path / "runs.jsonl", "--listen", "127.0.0.1:0", "--notify", hook]
    log = tmp_path / "service.log"
    launch = "import json, os, runpy, sys; sys.argv = json.loads(os.environ.pop('ARGV')); runpy.run_path(sys.argv[0], run_name='__main__')"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", launch], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "ARGV": json.dumps([str(SCRIPT), *map(str, argv)])})
    try:
        served = wait_for(lambda: "Serving on http://" in log.read_text() and log.read_text(), "'Serving on'")
        address = served.split("Serving on ", 1)[1].split()[0]
        wait_for(lambda: source.bodies("/hook"), "a notice")
        seen = {path: urllib.request.urlopen(address + path, timeout=30).read().decode() for path in ("/metrics", "/")}
        try:
            urllib.request.urlopen(address + "/healthz", timeout=30)
        except urllib.error.HTTPError as exc:  # 503 while failing
            seen["/healthz"] = exc.read().decode()
    finally:
        proc.terminate()
        proc.wait(30)
    masked = f"postgresql://***@127.0.0.1:{pg.cluster.port}/nosuchdb"
    runs = history(tmp_path / "runs.jsonl")
    assert runs[0]["output"] == masked
    assert runs[0]["error"].startswith(f"load failed: cannot load into {masked}: connection failed: ")
    assert f"<tr><th>Output</th><td>{masked}</td></tr>" in seen["/"]
    everything = log.read_text() + json.dumps(runs) + json.dumps(source.bodies("/hook")) + "".join(seen.values())
    assert 'database "nosuchdb" does not exist' in everything
    for secret in secret_forms(pg.password):
        assert secret not in everything


# Executors, the lock ----------------------------------------------------------------------


@pytest.mark.parametrize("executor", [["--executor", "threads", "--workers", "2"], ["--executor", "dask", "--workers", "1"]])
def test_every_executor_loads_the_same_rows(pg, source, executor):
    urls = [source.add("/a", ok(TODOS[1:])), source.add("/b", status(503), ok(TODOS[:1]))]
    result = cli("--once", "--retry-delay", 0.01, *[a for u in urls for a in ("--url", u)], "--output",
                 pg.url_without_password, "--load-mode", "merge", *executor, env=pg.env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert pg.rows() == RECORDS


def test_postgres_scheme_and_a_unix_socket_work_too(pg, source):
    url = pg.cluster.url(pg.name, password=False, host="socket").replace("postgresql://", "postgres://")
    result = cli("--once", "--url", source.add("/todos", ok()), "--output", url, "--table", "t2", env=pg.env())
    assert result.returncode == 0, result.stderr
    assert pg.rows("t2") == RECORDS


def test_lock_is_held_by_one_session_at_a_time(pg):
    from etl import postgres

    first = postgres.lock(pg.url, "todos")
    try:
        assert first is not None
        assert postgres.lock(pg.url, "todos") is None
        other = postgres.lock(pg.url, "other")
        assert other is not None
        other.close()
    finally:
        first.close()
    again = postgres.lock(pg.url, "todos")
    assert again is not None
    again.close()


def test_a_dask_worker_without_the_project_loads_into_the_database(pg, source, tmp_path, monkeypatch):
    """The worker connects to the database itself: it needs the password in its own environment."""
    from test_flow import dask_cluster_in

    monkeypatch.setenv("PGPASSWORD", pg.password)  # the worker's; the client's comes with cli()
    with dask_cluster_in(tmp_path) as address:
        result = cli("--once", "--retries", 0, "--url", source.add("/todos", ok()), "--dask-address", address,
                     "--output", pg.url_without_password, env=pg.env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert pg.rows() == RECORDS
