"""Several sources at once, on every executor and on a real Dask cluster; the fast writer's output."""
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import RECORDS, RECORDS_JSON, TODOS, cli, ok, status
from hypothesis import given, settings
from hypothesis import strategies as st

import prefectflow


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


def describe(executor):
    kind = type(executor).__name__
    if kind == "LocalDaskExecutor":
        return kind, executor.scheduler, executor.dask_config["num_workers"]
    if kind == "DaskExecutor":
        kwargs = executor.cluster_kwargs or {}
        return kind, executor.address, kwargs.get("n_workers"), kwargs.get("threads_per_worker")
    return (kind,)


@pytest.mark.parametrize("args, expected", [
    ([], ("LocalExecutor",)),
    (["--url", "a"] * 2 + ["--url", "b"], ("LocalDaskExecutor", "threads", 3)),
    (["--url", "a"] * 40, ("LocalDaskExecutor", "threads", 32)),
    (["--workers", "3"], ("LocalDaskExecutor", "threads", 3)),
    (["--executor", "processes"], ("LocalDaskExecutor", "processes", 1)),
    (["--executor", "dask", "--workers", "2"] + ["--url", "a"] * 5, ("DaskExecutor", None, 2, 3)),
    (["--dask-address", "tcp://127.0.0.1:8786"], ("DaskExecutor", "tcp://127.0.0.1:8786", None, None)),
])
def test_executor_options(args, expected):
    assert describe(prefectflow.make_executor(prefectflow.parse_args(args))) == expected


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    """A Dask scheduler and a worker, as separate processes on 127.0.0.1."""
    bin_dir = Path(sys.executable).parent
    address = f"tcp://127.0.0.1:{_free_port()}"
    log = (tmp_path / "dask.log").open("w")
    procs = [subprocess.Popen([bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port",
                               address.rsplit(":", 1)[1], "--no-dashboard"], stdout=log, stderr=log)]
    procs.append(subprocess.Popen([bin_dir / "dask", "worker", address, "--nthreads", "4", "--no-dashboard",
                                   "--host", "127.0.0.1"], stdout=log, stderr=log, cwd=tmp_path))
    deadline = time.monotonic() + 60
    while "Registered to" not in (tmp_path / "dask.log").read_text():
        assert time.monotonic() < deadline, (tmp_path / "dask.log").read_text()
        time.sleep(0.1)
    yield address
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


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


# The fast writer ---------------------------------------------------------------

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


def written(records, tmp_path):
    path = tmp_path / "out.json"
    prefectflow.load.run(records, str(path))
    return path.read_bytes()


def reference(records):
    return json.dumps(records, indent=4, ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("records", [[], ADVERSARIAL[:1], ADVERSARIAL, ADVERSARIAL[::-1], RECORDS * 3000],
                         ids=["empty", "one", "adversarial", "reversed", "several-batches"])
def test_writer_is_byte_identical_to_json_dump(records, tmp_path):
    assert written(records, tmp_path) == reference(records)


def test_writer_mixes_plain_and_other_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(prefectflow, "_BATCH", 2)
    records = RECORDS + ADVERSARIAL + RECORDS
    assert written(records, tmp_path) == reference(records)


text = st.text(alphabet=st.characters(exclude_categories=["Cs"]))
plain_record = st.fixed_dictionaries({"UsuarioID": st.integers(), "ID": st.integers(), "Titulo": text,
                                      "Completado": st.booleans()})
json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | text,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                          max_leaves=8)
record = plain_record | st.dictionaries(text, json_value, max_size=5) | json_value


@settings(max_examples=300, deadline=None)
@given(st.lists(record, max_size=12), st.integers(min_value=1, max_value=5))
def test_writer_matches_json_dump_on_generated_records(records, batch):
    old, prefectflow._BATCH = prefectflow._BATCH, batch
    try:
        assert "".join(prefectflow.encode_records(records)) == json.dumps(records, indent=4, ensure_ascii=False)
    finally:
        prefectflow._BATCH = old
