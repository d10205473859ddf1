"""Running the flow: one run and its summary (the --history line), the schedule loop, what it tells
those who watch it, and the signals that stop it."""
import contextlib
import gc
import multiprocessing
import os
import select
import signal
import time
from typing import Callable, Iterator, List, Optional, Tuple

import pendulum
import prefect
from prefect import Flow
from prefect.engine.state import State
from prefect.executors import Executor, LocalExecutor

from etl.database import is_database
from etl.errors import Explained, SinkError, error
from etl.schedule import COUNTED, slots_between
from etl.sink import append_line
from etl.source import mask_url
from etl.state import pages_of

log = prefect.utilities.logging.get_logger(__name__)

EXIT_OK, EXIT_FAILED = 0, 1  # bad usage exits 2 (argparse), a signal 128 + its number


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# While stopped_by_signals is in force: a pipe's read end that each signal writes a byte to, in
# whichever thread the kernel gave it to, so that Clock.sleep ends for it.
_signalled: Optional[int] = None


@contextlib.contextmanager
def stopped_by_signals(abandon: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM raise Stopped while inside, whatever the shell started us with.

    Before it is raised, and before an executor's cleanup could let a write finish, the processes
    a run started are killed and abandon() is called (to remove what they were writing).
    """
    global _signalled

    def stop(signum, frame):
        _end_children()
        abandon()
        raise Stopped(signum)

    read, write = os.pipe()
    os.set_blocking(write, False)
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    _signalled = read
    try:
        yield
    finally:
        _signalled = None
        signal.set_wakeup_fd(previous_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(read)
        os.close(write)


def _end_children() -> None:
    """Kill the processes a run started (the processes executor's pool, a local Dask cluster's
    workers), so that none goes on to replace the output once we are gone."""
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
    for child in children:
        child.join()


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
    output = _output(flow)
    before = _identity(output)
    param = urls[0] if len(urls) == 1 and not _is_mapped(flow) else urls
    with no_gc():  # a run's data is freed by reference counting; collect after it, not during
        state = flow.run(parameters={"parametro_url": param}, run_on_schedule=False,
                         executor=executor or LocalExecutor())
    finished = pendulum.now("utc")
    loads, extracts = _task_states(flow, state, "load"), _task_states(flow, state, "extract")
    changed = state.is_successful() and any(s.result is not None for s in loads)
    # Left alone, the output holds what the run would have written: each page's records.
    held = sum(page.count for s in extracts if s.is_successful() for page in pages_of(s.result))
    summary = {
        "scheduled": (scheduled or started).in_tz("utc").isoformat(),
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "state": "Success" if state.is_successful() else "Failed",
        "records": (sum(s.result or 0 for s in loads) if changed else held) if state.is_successful() else 0,
        "changed": changed,
        "attempts": sum(s.context.get("attempts", 0) for s in extracts),
        "pages": sum(len(pages_of(s.result)) for s in extracts if s.is_successful()),
        "urls": [mask_url(u) for u in urls],
        "output": mask_url(output),
    }
    # load left the output alone when it was unchanged; else the output here must be a new file.
    # (A database is the same for every worker.)
    after = _identity(output)
    if state.is_successful() and not is_database(output) and (
            after is None or (summary["changed"] and after == before)):
        summary["state"], summary["records"], summary["changed"] = "Failed", 0, False
        summary["error"] = _unseen_output(flow, state)
    elif not state.is_successful():
        summary["error"] = _error(flow, state)
    log.info("Run started %s (scheduled %s): %s, %s, %s, %s, %.3f s",
             summary["started"], summary["scheduled"], summary["state"], outcome(summary),
             plural(summary["attempts"], "extract attempt"), plural(summary["pages"], "page"),
             (finished - started).total_seconds())
    return summary, state


def outcome(summary: dict) -> str:
    """What a run did to the output: "3 records written", or "unchanged (3 records)"."""
    if summary["state"] == "Success" and not summary["changed"]:
        return f"unchanged ({plural(summary['records'], 'record')})"
    return f"{plural(summary['records'], 'record')} written"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _output(flow: Flow) -> str:
    return flow.constants[flow.get_tasks(name="load")[0]]["path"]


def _identity(path: str) -> Optional[tuple]:
    """What tells one file at path from the next: each write replaces it with a new file."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_mtime_ns


def _unseen_output(flow: Flow, state: State) -> str:
    """Why a run whose load succeeded left no new output here: it ran on another machine."""
    (load,) = _task_states(flow, state, "load")
    return (f"load wrote {_output(flow)} on {load.context.get('host', 'a worker')}, but this machine "
            "cannot see it: on a cluster the workers write the output, so give --output a path on "
            "storage they share with you")


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


class Clock:
    """Wall time for the schedule's slots, the monotonic clock for sleeping. Each reading compares
    the two, so a change of the system clock is noticed and logged as what it is."""

    JUMP = 1.0  # seconds the two clocks may drift apart between readings before it counts as a jump
    NAP = 60.0  # longest single sleep: a jump while waiting is noticed within this long

    def __init__(self) -> None:
        self.offset: Optional[float] = None  # wall minus monotonic, at the last reading
        self.jumps = 0

    def now(self) -> pendulum.DateTime:
        wall, mono = self.wall(), self.monotonic()
        offset = wall.timestamp() - mono
        if self.offset is not None and abs(offset - self.offset) > self.JUMP:
            jump = offset - self.offset
            self.jumps += 1
            log.warning("The system clock jumped %s by %.0f s", "forward" if jump > 0 else "back", abs(jump))
        self.offset = offset
        return wall

    def wait_until(self, when: pendulum.DateTime) -> None:
        """Sleep until the wall clock reads when, in monotonic naps that notice a jump."""
        while (left := (when - self.now()).total_seconds()) > 0:
            self.sleep(min(left, self.NAP))

    # What tests replace:
    def wall(self) -> pendulum.DateTime:
        return pendulum.now("utc")

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep, ended early by a signal. Python runs a signal's handler in the main thread, but
        the kernel may give the signal to another thread (the status server's, say), which would
        leave this sleep to run its course."""
        if _signalled is None:
            time.sleep(seconds)
        elif select.select([_signalled], [], [], seconds)[0]:
            os.read(_signalled, 1024)  # the handler runs now, in this thread


def serve(flow: Flow, urls: List[str], runs: int = 0, history: Optional[str] = None,
          executor: Optional[Executor] = None, watch: Optional[Watch] = None,
          clock: Optional[Clock] = None) -> int:
    """Run on the flow's schedule until stopped, or `runs` runs; the exit status of the last run.

    Each slot of the schedule runs at most once, never before its time. A run longer than the
    interval skips the slots it overran; a clock that jumps forward skips the slots it jumped
    over, and one that jumps back makes the next run wait for the next slot not yet run.
    """
    watch = watch or Watch()
    clock = clock or Clock()
    schedule = flow.schedule
    slot = schedule.next(1, after=clock.now().subtract(seconds=1))[0]
    done = 0
    while True:
        watch.next_run(slot)
        jumps = clock.jumps  # a jump while waiting or running explains the slots skipped next
        if slot > clock.now():
            log.info("Waiting for next scheduled run at %s", slot)
            clock.wait_until(slot)
        summary, state = run_once(flow, urls, executor, scheduled=slot)
        append_history(history, summary)
        watch.finished(summary, state)
        if "error" in summary:
            log.error("Run failed: %s", summary["error"])
            error(f"the run scheduled at {summary['scheduled']} failed: {summary['error']}")
        done += 1
        if done == runs:
            return EXIT_OK if "error" not in summary else EXIT_FAILED
        following = schedule.next(1, after=slot)[0]
        slot = max(following, schedule.next(1, after=clock.now())[0])
        if slot > following:
            missed = slots_between(schedule, following, slot)
            count = str(missed) if missed < COUNTED else f"at least {missed}"
            if clock.jumps == jumps:
                log.warning("The run took longer than the interval: skipping %s missed slot(s)", count)
            else:
                log.warning("Skipping %s slot(s) the clock jumped over", count)


def append_history(history: Optional[str], summary: dict) -> None:
    """Append the run's summary to the history file, if any; a failure there does not fail the run."""
    if history:
        try:
            append_line(history, summary)
        except SinkError as exc:
            log.error("Cannot append the run to --history: %s", exc)
        except OSError as exc:
            log.error("Cannot append to --history %s: %s", history, exc.strerror)
