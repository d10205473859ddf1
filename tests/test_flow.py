"""prefectflow.py: each task's .run(), the flow's shape, and whole runs of it on a loopback server,
on every executor and on a real Dask cluster."""
import contextlib
import datetime
import json
import re
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pendulum
import pytest
from conftest import RECORDS, RECORDS_JSON, ROOT, TODOS, can_unshare, cli, ok, status

import prefectflow
from etl.errors import SourceError
from etl.records import transform_records
from etl.service import run_once
from prefectflow import concat, extract, load, transform


# Each task's .run() ---------------------------------------------------------------

def test_transform_renames_keys_in_order():
    records = transform.run(list(TODOS))
    assert records == RECORDS
    assert [list(r) for r in records] == [["UsuarioID", "ID", "Titulo", "Completado"]] * 3


def numbered(count):
    """count todos like TODOS, with ids 0 to count - 1."""
    return [dict(TODOS[i % 3], id=i) for i in range(count)]


def test_transform_takes_its_input_over_a_batch_at_a_time(monkeypatch):
    monkeypatch.setattr(prefectflow, "BATCH", 2)
    todos = numbered(7)
    given = list(todos)
    assert transform.run(given) == transform_records(todos)
    assert given == []
    assert todos == numbered(7)  # the todos themselves are not changed


def test_transform_frees_each_todo_once_renamed(monkeypatch):
    monkeypatch.setattr(prefectflow, "BATCH", 256)

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
        both, taken = peak(transform_records), peak(transform.run)
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
    with pytest.raises(SourceError, match=f"^{url} answered HTTP 500 Internal Server Error$"):
        extract.run(url)


def test_load_writes_indented_utf8_json(tmp_path):
    path = tmp_path / "datos.json"
    assert load.run(RECORDS, str(path)) == 3
    assert path.read_bytes() == RECORDS_JSON
    assert "señal" in path.read_text(encoding="utf-8")


# The flow ----------------------------------------------------------------------


def edges(flow):
    return sorted((e.upstream_task.name, e.downstream_task.name, e.key) for e in flow.edges)


def test_module_flow_is_the_reports_flow():
    flow = prefectflow.flow
    assert flow.name == "etl_flow"
    assert [t.name for t in flow.sorted_tasks()] == ["parametro_url", "extract", "transform", "load"]
    assert edges(flow) == [
        ("extract", "transform", "records"),
        ("parametro_url", "extract", "url"),
        ("transform", "load", "records"),
    ]
    (param,) = flow.parameters()
    assert param.name == "parametro_url" and param.required
    extract = flow.get_tasks(name="extract")[0]
    assert extract.max_retries == 10
    assert extract.retry_delay == datetime.timedelta(seconds=10)


def test_schedule_runs_every_two_minutes():
    first, second, third = prefectflow.flow.schedule.next(3)
    assert (second - first, third - second) == (datetime.timedelta(minutes=2),) * 2
    assert first > pendulum.now("utc")


def test_schedule_with_a_start_date_starts_there():
    start = pendulum.datetime(2030, 1, 1, 12, 0, 30)
    flow = prefectflow.build_flow(interval=90, start_date=start)
    assert flow.schedule.next(3, after=start.subtract(seconds=1)) == [
        start, start.add(seconds=90), start.add(seconds=180)]


def test_flow_serializes():
    serialized = prefectflow.flow.serialize()
    assert serialized["name"] == "etl_flow"
    assert sorted(t["name"] for t in serialized["tasks"]) == ["extract", "load", "parametro_url", "transform"]
    assert serialized["schedule"]["clocks"][0]["interval"] == 120_000_000


def test_build_flow_applies_its_settings():
    flow = prefectflow.build_flow(retries=3, retry_delay=0.5, timeout=2, output="out.json")
    extract = flow.get_tasks(name="extract")[0]
    assert (extract.max_retries, extract.retry_delay) == (3, datetime.timedelta(seconds=0.5))
    assert flow.constants[extract]["timeout"] == 2
    assert flow.constants[flow.get_tasks(name="load")[0]]["path"] == "out.json"
    assert prefectflow.build_flow(retries=0).get_tasks(name="extract")[0].max_retries == 0


def test_flow_run_fetches_transforms_and_loads(source, tmp_path):
    out = tmp_path / "datos.json"
    flow = prefectflow.build_flow(output=str(out))
    state = flow.run(parameters={"parametro_url": source.add("/todos", ok())}, run_on_schedule=False)
    assert state.is_successful()
    assert state.result[flow.get_tasks(name="transform")[0]].result == RECORDS
    assert state.result[flow.get_tasks(name="extract")[0]].result == []  # taken over by transform
    assert out.read_bytes() == RECORDS_JSON


def test_flow_retries_a_flaky_source_until_it_answers(source, tmp_path):
    out = tmp_path / "datos.json"
    url = source.add("/todos", status(503), status(502), status(500), ok())
    flow = prefectflow.build_flow(retries=5, retry_delay=0.01, output=str(out))
    summary, state = run_once(flow, [url])
    assert state.is_successful()
    assert source.hits("/todos") == 4
    assert (summary["state"], summary["records"], summary["attempts"]) == ("Success", 3, 4)
    assert json.loads(out.read_text(encoding="utf-8")) == RECORDS


def test_flow_gives_up_after_its_retries(source, good_output):
    url = source.add("/todos", status(404))
    flow = prefectflow.build_flow(retries=2, retry_delay=0.01, output=str(good_output))
    summary, state = run_once(flow, [url])
    assert state.is_failed()
    assert source.hits("/todos") == 3
    assert summary["error"] == f"extract failed after 3 attempts: {url} answered HTTP 404 Not Found"
    assert good_output.read_bytes() == RECORDS_JSON


def test_a_url_that_can_never_be_fetched_fails_at_once(good_output):
    flow = prefectflow.build_flow(retries=5, retry_delay=0.01, output=str(good_output))
    summary, state = run_once(flow, ["ftp://ann:pw@example.org/todos?token=t0p"])
    assert state.is_failed()
    assert (summary["attempts"], summary["urls"]) == (1, ["ftp://***@example.org/todos?token=***"])
    assert summary["error"] == ("extract failed: ftp://***@example.org/todos?token=***: "
                                "only http:// and https:// URLs can be fetched")
    assert good_output.read_bytes() == RECORDS_JSON


def test_module_flow_accepts_a_list_of_urls(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    urls = [source.add("/b", ok(TODOS[1:])), source.add("/a", ok(TODOS[:1]))]
    state = prefectflow.flow.run(parameters={"parametro_url": urls}, run_on_schedule=False)
    assert state.is_successful()
    written = json.loads((tmp_path / "datos.json").read_text(encoding="utf-8"))
    assert written == RECORDS[1:] + RECORDS[:1]


# Several sources -------------------------------------------------------------------


def test_several_sources_make_the_mapped_graph():
    flow = prefectflow.build_flow(mapped=True)
    assert sorted((e.upstream_task.name, e.downstream_task.name, e.mapped) for e in flow.edges) == [
        ("concat", "transform", False),
        ("extract", "concat", False),
        ("parametro_url", "extract", True),
        ("transform", "load", False),
    ]


@pytest.mark.parametrize("executor", [[], ["--executor", "local"], ["--executor", "threads", "--workers", "2"],
                                      ["--executor", "processes", "--workers", "2"]])
def test_several_sources_are_joined_in_the_order_given(source, tmp_path, executor):
    first = source.add("/first", ok(TODOS[2:]))
    flaky = source.add("/flaky", status(503), status(502), ok(TODOS[:1]))
    last = source.add("/last", ok(TODOS[1:2]))
    out = tmp_path / "datos.json"
    result = cli("--once", "--retries", 3, "--retry-delay", 0.01, "--url", first, "--url", flaky,
                 "--url", last, "--output", out, *executor)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(out.read_text(encoding="utf-8")) == RECORDS[2:] + RECORDS[:1] + RECORDS[1:2]
    assert [source.hits(p) for p in ("/first", "/flaky", "/last")] == [1, 3, 1]
    assert "Success, 3 records written, 5 extract attempts" in result.stdout


def test_one_failing_source_fails_the_run_and_writes_nothing(source, good_output):
    good = source.add("/good", ok())
    bad = source.add("/bad", status(404))
    result = cli("--once", "--retries", 2, "--retry-delay", 0.01, "--url", good, "--url", bad,
                 "--output", good_output)
    assert result.returncode == 1
    assert result.stderr == f"prefectflow.py: error: extract failed after 3 attempts: {bad} answered HTTP 404 Not Found\n"
    assert (source.hits("/good"), source.hits("/bad")) == (1, 3)
    assert good_output.read_bytes() == RECORDS_JSON


@contextlib.contextmanager
def dask_cluster_in(tmp_path, worker_prefix=()):
    """A Dask scheduler and a worker, as separate processes on 127.0.0.1; the worker runs in a
    folder of its own outside the project, as a real cluster's would. The scheduler takes a free
    port itself and writes its address to a file, where the worker and the test read it."""
    bin_dir = Path(sys.executable).parent
    scheduler_file = tmp_path / "scheduler.json"
    (tmp_path / "workers").mkdir()
    log = (tmp_path / "dask.log").open("w")
    procs = [subprocess.Popen([bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", scheduler_file], stdout=log, stderr=log)]
    procs.append(subprocess.Popen([*worker_prefix, bin_dir / "dask", "worker", "--scheduler-file", scheduler_file,
                                   "--nthreads", "4", "--no-dashboard", "--host", "127.0.0.1"],
                                  stdout=log, stderr=log, cwd=tmp_path / "workers"))
    try:
        deadline = time.monotonic() + 180
        while "Registered to" not in (tmp_path / "dask.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "dask.log").read_text()
            time.sleep(0.1)
        yield json.loads(scheduler_file.read_text())["address"]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.fixture
def dask_cluster(tmp_path):
    with dask_cluster_in(tmp_path) as address:
        yield address


def test_a_real_dask_cluster_gives_the_same_output(source, tmp_path, dask_cluster):
    urls = [source.add("/a", ok(TODOS[1:])), source.add("/b", status(503), ok(TODOS[:1]))]
    args = ["--once", "--retry-delay", "0.01"] + [a for u in urls for a in ("--url", u)]
    on_dask = cli(*args, "--dask-address", dask_cluster, "--output", tmp_path / "dask.json")
    assert on_dask.returncode == 0, on_dask.stdout + on_dask.stderr
    assert (source.hits("/a"), source.hits("/b")) == (1, 2)
    local = cli(*args, "--executor", "local", "--output", tmp_path / "local.json")
    assert local.returncode == 0, local.stderr
    assert (tmp_path / "dask.json").read_bytes() == (tmp_path / "local.json").read_bytes()
    assert json.loads((tmp_path / "dask.json").read_text(encoding="utf-8")) == RECORDS[1:] + RECORDS[:1]


def test_on_a_cluster_a_relative_output_is_the_clients(source, tmp_path, dask_cluster):
    client = tmp_path / "client"
    client.mkdir()
    result = cli("--once", "--url", source.add("/todos", ok()), "--dask-address", dask_cluster,
                 "--output", "d.json", cwd=client)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (client / "d.json").read_bytes() == RECORDS_JSON
    assert not (tmp_path / "workers" / "d.json").exists()


@pytest.mark.skipif(not can_unshare("--mount"), reason="needs unshare --mount (root, not in a chroot)")
def test_on_a_cluster_an_output_this_machine_cannot_see_fails_naming_the_worker(source, tmp_path):
    """The worker gets a mount namespace of its own with an empty folder over the output's: it writes
    where the client cannot see, as a worker on another machine would."""
    hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs tmpfs "$0" && exec "$@"', str(tmp_path / "out")]
    good_output = tmp_path / "out" / "datos.json"
    good_output.parent.mkdir()
    good_output.write_bytes(RECORDS_JSON)
    with dask_cluster_in(tmp_path, hide) as address:
        result = cli("--once", "--url", source.add("/todos", ok(TODOS[:1])), "--dask-address", address,
                     "--output", good_output)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.fullmatch(
        f"prefectflow.py: error: load wrote {good_output} on {re.escape(socket.gethostname())} "
        r"\(pid \d+\), but this machine cannot see it: on a cluster the workers write the output, so "
        "give --output a path on storage they share with you\n", result.stderr), result.stderr
    assert good_output.read_bytes() == RECORDS_JSON


def test_a_local_dask_cluster_gives_the_same_output(source, tmp_path):
    urls = [source.add("/a", ok(TODOS[1:])), source.add("/b", status(503), ok(TODOS[:1]))]
    result = cli("--once", "--retry-delay", "0.01", "--executor", "dask", "--workers", "1",
                 *[a for u in urls for a in ("--url", u)], "--output", tmp_path / "d.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "d.json").read_text(encoding="utf-8")) == RECORDS[1:] + RECORDS[:1]
    assert (source.hits("/a"), source.hits("/b")) == (1, 2)


def test_an_empty_list_of_urls_fails_and_keeps_the_output(tmp_path, good_output, monkeypatch):
    monkeypatch.chdir(good_output.parent)
    for flow in (prefectflow.flow, prefectflow.build_flow(mapped=True)):
        summary, state = run_once(flow, [])
        assert state.is_failed()
        assert summary["error"].endswith("failed: parametro_url is an empty list: give at least one URL")
        assert good_output.read_bytes() == RECORDS_JSON


def test_prefect_run_with_an_empty_list_of_urls_keeps_the_output(good_output):
    prefect = str(Path(sys.executable).with_name("prefect"))
    result = subprocess.run([prefect, "run", "-p", str(ROOT / "prefectflow.py"), "--param", "parametro_url=[]"],
                            cwd=good_output.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "parametro_url is an empty list: give at least one URL" in result.stdout
    assert good_output.read_bytes() == RECORDS_JSON
