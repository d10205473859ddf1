"""The service's Prometheus metrics (/metrics), on a registry of their own."""
import datetime

import pendulum
from prefect.engine.state import State
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from etl.service import Watch

# A run takes from a tenth of a second to minutes of retries (10 retries 10 s apart by default).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# Without this each counter and the histogram would add a *_created gauge of when it was made:
# noise beside the six metrics, which are all there is to read.
disable_created_metrics()


class Metrics(Watch):
    """Counters and gauges of the runs, kept up to date after each one. prometheus_client's metrics
    lock themselves, so the run loop and the server's threads share them as they are."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.runs = Counter("prefectflow_runs", "Runs finished, by final state.", ["state"], registry=registry)
        for state in ("success", "failed"):
            self.runs.labels(state=state)  # both series from the start, at 0
        self.attempts = Counter("prefectflow_extract_attempts", "Extract attempts, retries included.",
                                registry=registry)
        self.records = Gauge("prefectflow_records_written",
                             "Records the output holds after the last successful run, written or left as they were.",
                             registry=registry)
        self.unchanged = Gauge("prefectflow_output_unchanged",
                               "1 if the last successful run left the output as it was, 0 if it replaced it.",
                               registry=registry)
        self.last_success = Gauge("prefectflow_last_success_timestamp_seconds",
                                  "When the last successful run finished, in Unix time.", registry=registry)
        self.duration = Histogram("prefectflow_run_duration_seconds", "How long each run took.",
                                  buckets=DURATION_BUCKETS, registry=registry)
        self.next_slot = Gauge("prefectflow_next_run_timestamp_seconds",
                               "When the next run is scheduled, in Unix time.", registry=registry)

    def next_run(self, slot: pendulum.DateTime) -> None:
        self.next_slot.set(slot.timestamp())

    def finished(self, summary: dict, state: State) -> None:
        started, finished = (datetime.datetime.fromisoformat(summary[key]) for key in ("started", "finished"))
        self.duration.observe((finished - started).total_seconds())
        self.attempts.inc(summary["attempts"])
        if "error" in summary:
            self.runs.labels(state="failed").inc()
        else:
            self.runs.labels(state="success").inc()
            self.records.set(summary["records"])
            self.unchanged.set(0 if summary["changed"] else 1)
            self.last_success.set(finished.timestamp())

    def text(self) -> bytes:
        """The metrics in Prometheus's text format."""
        return generate_latest(self.registry)
