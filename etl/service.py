"""Running the flow: one run and its summary (the --history line), the schedule loop, what it tells
those who watch it, and the signals that stop it."""
import contextlib
import gc
import signal
import time
from typing import Iterator, List, Optional, Tuple

import pendulum
import prefect
from prefect import Flow
from prefect.engine.state import State
from prefect.executors import Executor, LocalExecutor

from etl.errors import Explained
from etl.sink import append_line
from etl.source import mask_url

log = prefect.utilities.logging.get_logger(__name__)

EXIT_OK, EXIT_FAILED = 0, 1  # bad usage exits 2 (argparse), a signal 128 + its number


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise Stopped while inside, whatever the shell started us with."""
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cycle collector: over large acyclic data it only costs time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_once(flow: Flow, urls: List[str], executor: Optional[Executor] = None,
             scheduled: Optional[pendulum.DateTime] = None) -> Tuple[dict, State]:
    """Run the flow once now; a summary of the run (see --history) and the flow's state."""
    started = pendulum.now("utc")
    param = urls[0] if len(urls) == 1 and not _is_mapped(flow) else urls
    with no_gc():  # a run's data is freed by reference counting; collect after it, not during
        state = flow.run(parameters={"parametro_url": param}, run_on_schedule=False,
                         executor=executor or LocalExecutor())
    finished = pendulum.now("utc")
    summary = {
        "scheduled": (scheduled or started).isoformat(),
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "state": "Success" if state.is_successful() else "Failed",
        "records": sum(s.result for s in _task_states(flow, state, "load")) if state.is_successful() else 0,
        "attempts": sum(s.context.get("attempts", 0) for s in _task_states(flow, state, "extract")),
        "urls": [mask_url(u) for u in urls],
    }
    if not state.is_successful():
        summary["error"] = _error(flow, state)
    log.info("Run started %s (scheduled %s): %s, %d records written, %d extract attempts, %.3f s",
             summary["started"], summary["scheduled"], summary["state"], summary["records"],
             summary["attempts"], (finished - started).total_seconds())
    return summary, state


def _is_mapped(flow: Flow) -> bool:
    return bool(flow.get_tasks(name="concat"))


def _task_states(flow: Flow, state: State, name: str) -> List[State]:
    """The final states of the task called name (of each child, if mapped); none if the run broke."""
    task_state = state.result.get(flow.get_tasks(name=name)[0]) if isinstance(state.result, dict) else None
    if task_state is None:
        return []
    return task_state.map_states if task_state.is_mapped() else [task_state]


def _error(flow: Flow, state: State) -> str:
    """One line: which task failed and why."""
    for task in flow.sorted_tasks():
        for child in _task_states(flow, state, task.name):
            if child.is_failed() and isinstance(child.result, Exception):
                exc = child.result
                attempts = child.context.get("attempts", 1)
                tries = f" after {attempts} attempts" if attempts > 1 else ""
                why = str(exc) if isinstance(exc, Explained) else f"{type(exc).__name__}: {exc}"
                return f"{task.name} failed{tries}: {why}"
    return f"the flow run failed: {state.message}"


class Watch:
    """What serve() tells of its runs: each next slot once it is known, and each run's summary and
    final state once the run is over. This one listens to nothing; etl.status, etl.metrics and
    etl.notify do."""

    def next_run(self, slot: pendulum.DateTime) -> None:
        pass

    def finished(self, summary: dict, state: State) -> None:
        pass

    def close(self) -> None:
        """serve() has returned (after --runs runs): finish what is pending, within bounds."""


class Watches(Watch):
    """Several watches told the same, in order."""

    def __init__(self, *watches: Watch):
        self.watches = watches

    def next_run(self, slot: pendulum.DateTime) -> None:
        for watch in self.watches:
            watch.next_run(slot)

    def finished(self, summary: dict, state: State) -> None:
        for watch in self.watches:
            watch.finished(summary, state)

    def close(self) -> None:
        for watch in self.watches:
            watch.close()


def serve(flow: Flow, urls: List[str], runs: int = 0, history: Optional[str] = None,
          executor: Optional[Executor] = None, watch: Optional[Watch] = None) -> int:
    """Run on the flow's schedule until stopped, or `runs` runs; the exit status of the last run."""
    watch = watch or Watch()
    schedule = flow.schedule
    slot = schedule.next(1, after=pendulum.now("utc").subtract(seconds=1))[0]
    done = 0
    while True:
        watch.next_run(slot)
        wait = (slot - pendulum.now("utc")).total_seconds()
        if wait > 0:
            log.info("Waiting for next scheduled run at %s", slot)
            time.sleep(wait)
        summary, state = run_once(flow, urls, executor, scheduled=slot)
        append_history(history, summary)
        watch.finished(summary, state)
        if "error" in summary:
            log.error("Run failed: %s", summary["error"])
        done += 1
        if done == runs:
            return EXIT_OK if "error" not in summary else EXIT_FAILED
        following = schedule.next(1, after=slot)[0]
        slot = schedule.next(1, after=pendulum.now("utc"))[0]
        if slot > following:
            missed = round((slot - following).total_seconds() / schedule.clocks[0].interval.total_seconds())
            log.warning("The run took longer than the interval: skipping %d missed slot(s)", missed)


def append_history(history: Optional[str], summary: dict) -> None:
    """Append the run's summary to the history file, if any; a failure there does not fail the run."""
    if history:
        try:
            append_line(history, summary)
        except OSError as exc:
            log.error("Cannot append to --history %s: %s", history, exc.strerror)
