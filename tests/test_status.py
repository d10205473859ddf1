"""etl.status: what /healthz says at each moment, the runs kept, and the states kept for the diagram."""
import datetime
import json

from conftest import ok, status
from prefect.engine.state import Failed, Success

import prefectflow
from etl.service import run_once
from etl.status import Status

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def summary(second, error=None):
    """A run's summary, started `second` seconds after START and finished a second later."""
    run = {"scheduled": iso(second), "started": iso(second), "finished": iso(second + 1),
           "state": "Failed" if error else "Success", "records": 0 if error else 3, "changed": not error, "attempts": 1,
           "urls": ["http://127.0.0.1:1/todos"]}
    return {**run, "error": error} if error else run


def iso(second):
    return (START + datetime.timedelta(seconds=second)).isoformat()


def at(second):
    return START + datetime.timedelta(seconds=second)


def health(watched, second):
    code, body = watched.health(at(second))
    return code, body["status"], body["last_success"]


def test_health_is_200_while_a_run_succeeded_within_stale_after_then_503():
    watched = Status(stale_after=10)
    watched.started = START
    assert health(watched, 9) == (200, "starting", None)
    assert health(watched, 10) == (503, "stale", None)  # no run has finished: the first one hangs
    watched.finished(summary(1, "extract failed: boom"), Failed())
    assert health(watched, 9) == (200, "degraded", None)
    assert health(watched, 10) == (503, "failing", None)
    watched.finished(summary(11), Success())
    assert health(watched, 21) == (200, "ok", iso(12))
    watched.finished(summary(13, "extract failed: boom"), Failed())
    assert health(watched, 21) == (200, "degraded", iso(12))
    assert health(watched, 22) == (503, "failing", iso(12))
    watched.finished(summary(30), Success())
    assert health(watched, 41) == (503, "stale", iso(31))  # the run after it hangs


def test_healthz_carries_the_next_run_and_the_last_run_whole():
    watched = Status(stale_after=10)
    watched.started = START
    watched.next_run(at(5))
    run = summary(5, "extract failed: boom")
    watched.finished(run, Failed())
    assert watched.health(at(7)) == (200, {
        "status": "degraded", "last_success": None, "next_run": iso(5), "stale_after": 10,
        "started": iso(0), "last_run": run})


def test_the_last_50_runs_are_kept_newest_first_beginning_with_the_history(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(summary(n)) + "\n" for n in range(40)))
    watched = Status(stale_after=10, history=str(path))
    assert watched.recent() == ([summary(n) for n in reversed(range(40))], None, 0)
    assert watched.health(at(0))[1]["last_success"] is None  # health counts this process's runs only
    for n in range(40, 60):
        watched.finished(summary(n), Success())
    runs, _, finished = watched.recent()
    assert (runs, finished) == ([summary(n) for n in reversed(range(10, 60))], 20)


def test_the_diagram_keeps_the_states_but_not_the_records(source, tmp_path):
    for mapped, urls in [(False, [source.add("/todos", ok())]),
                         (True, [source.add("/a", ok()), source.add("/b", status(404))])]:
        flow = prefectflow.build_flow(retries=0, mapped=mapped, output=str(tmp_path / "datos.json"))
        run, state = run_once(flow, urls)
        watched = Status(stale_after=10)
        watched.finished(run, state)
        _, kept, _ = watched.recent()
        assert type(kept) is type(state) and kept.result.keys() == state.result.keys()
        for task, task_state in state.result.items():
            assert type(kept.result[task]) is type(task_state)
            assert kept.result[task].result is None
            if task_state.is_mapped():
                assert [type(s) for s in kept.result[task].map_states] == [type(s) for s in task_state.map_states]
        if not mapped:
            assert state.result[flow.get_tasks(name="transform")[0]].result  # the records, not kept
        else:
            assert [type(s).__name__ for s in kept.result[flow.get_tasks(name="extract")[0]].map_states] == \
                ["Success", "Failed"]
