"""What the service knows of its runs, shared by the run loop and the status server behind one lock:
the last runs, the last success, the next run, and from them its health (/healthz)."""
import collections
import datetime
import threading
from typing import List, Optional, Tuple

import pendulum
from prefect.engine.state import Mapped, State

from etl.service import Watch
from etl.sink import read_tail

KEEP = 50  # runs shown on the status page

# /healthz's status: 200 while a run succeeded (or the service started) within --stale-after ...
STARTING, OK, DEGRADED = "starting", "ok", "degraded"  # no run yet; the last run succeeded; failed
# ... 503 once none did: the last run failed, or none has finished since (a run hangs, or is slow).
FAILING, STALE = "failing", "stale"


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class Status(Watch):
    """The service's runs as the status server shows them. Only this object is shared between the
    run loop and the server's threads, and all it holds is behind self.lock."""

    def __init__(self, stale_after: float, history: Optional[str] = None):
        self.stale_after = stale_after
        self.started = now_utc()
        self.lock = threading.Lock()
        # Runs of earlier processes show on the page; health counts only this process's runs.
        self.runs = collections.deque(read_tail(history, KEEP) if history else (), maxlen=KEEP)
        self.last_run: Optional[dict] = None
        self.last_success: Optional[datetime.datetime] = None
        self.next_slot: Optional[datetime.datetime] = None
        self.states: Optional[State] = None  # the last run's task states, without their results
        self.finished_runs = 0

    def next_run(self, slot: pendulum.DateTime) -> None:
        with self.lock:
            self.next_slot = pendulum.instance(slot).in_tz("utc")  # shown in UTC, as every other time

    def finished(self, summary: dict, state: State) -> None:
        states = _bare(state)
        with self.lock:
            self.runs.append(summary)
            self.last_run = summary
            if "error" not in summary:
                self.last_success = datetime.datetime.fromisoformat(summary["finished"])
            self.states = states
            self.finished_runs += 1

    def health(self, now: Optional[datetime.datetime] = None) -> Tuple[int, dict]:
        """The HTTP status and the JSON body of /healthz."""
        with self.lock:
            last_run, last_success, next_slot = self.last_run, self.last_success, self.next_slot
        age = ((now or now_utc()) - (last_success or self.started)).total_seconds()
        failed = last_run is not None and "error" in last_run
        if age < self.stale_after:
            code, status = 200, STARTING if last_run is None else DEGRADED if failed else OK
        else:
            code, status = 503, FAILING if failed else STALE
        return code, {
            "status": status,
            "last_success": _iso(last_success),
            "next_run": _iso(next_slot),
            "stale_after": self.stale_after,
            "started": _iso(self.started),
            "last_run": last_run,
        }

    def recent(self) -> Tuple[List[dict], Optional[State], int]:
        """The last runs, newest first; the last run's task states; how many runs this process ran."""
        with self.lock:
            return list(reversed(self.runs)), self.states, self.finished_runs


def _iso(when: Optional[datetime.datetime]) -> Optional[str]:
    return when.isoformat() if when else None


def _bare(flow_state: State) -> State:
    """The kinds of the run's and its tasks' states, enough to colour the diagram: keeping their
    results would keep the last run's records in memory until the next run."""
    if not isinstance(flow_state.result, dict):
        return type(flow_state)()
    return type(flow_state)(result={task: _bare_task(state) for task, state in flow_state.result.items()})


def _bare_task(state: State) -> State:
    if state.is_mapped():
        return Mapped(map_states=[_bare_task(child) for child in state.map_states])
    return type(state)()
