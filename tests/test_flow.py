"""The flow's shape, and whole runs of it on a loopback server."""
import datetime
import json

import pendulum
from conftest import RECORDS, RECORDS_JSON, TODOS, ok, status

import prefectflow


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
    summary, state = prefectflow.run_once(flow, [url])
    assert state.is_successful()
    assert source.hits("/todos") == 4
    assert (summary["state"], summary["records"], summary["attempts"]) == ("Success", 3, 4)
    assert json.loads(out.read_text(encoding="utf-8")) == RECORDS


def test_flow_gives_up_after_its_retries(source, good_output):
    url = source.add("/todos", status(404))
    flow = prefectflow.build_flow(retries=2, retry_delay=0.01, output=str(good_output))
    summary, state = prefectflow.run_once(flow, [url])
    assert state.is_failed()
    assert source.hits("/todos") == 3
    assert summary["error"] == f"extract failed after 3 attempts: {url} answered HTTP 404 Not Found"
    assert good_output.read_bytes() == RECORDS_JSON


def test_module_flow_accepts_a_list_of_urls(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    urls = [source.add("/b", ok(TODOS[1:])), source.add("/a", ok(TODOS[:1]))]
    state = prefectflow.flow.run(parameters={"parametro_url": urls}, run_on_schedule=False)
    assert state.is_successful()
    written = json.loads((tmp_path / "datos.json").read_text(encoding="utf-8"))
    assert written == RECORDS[1:] + RECORDS[:1]
