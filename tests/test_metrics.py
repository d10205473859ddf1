"""etl.metrics: the Prometheus text after some runs, read back with prometheus_client's parser."""
import datetime
import shutil
import subprocess

import pendulum
import pytest
from prefect.engine.state import Failed, Success
from prometheus_client.parser import text_string_to_metric_families
from test_status import START, at, summary

from etl.metrics import Metrics


def read(metrics):
    """{(family, type): {(sample, labels): value}}."""
    families = text_string_to_metric_families(metrics.text().decode())
    return {(f.name, f.type): {(s.name, tuple(sorted(s.labels.items()))): s.value
                               for s in f.samples} for f in families}


def test_metrics_before_any_run():
    assert read(Metrics()) == {
        ("prefectflow_runs", "counter"): {("prefectflow_runs_total", (("state", "success"),)): 0,
                                         ("prefectflow_runs_total", (("state", "failed"),)): 0},
        ("prefectflow_extract_attempts", "counter"): {("prefectflow_extract_attempts_total", ()): 0},
        ("prefectflow_records_written", "gauge"): {("prefectflow_records_written", ()): 0},
        ("prefectflow_last_success_timestamp_seconds", "gauge"): {
            ("prefectflow_last_success_timestamp_seconds", ()): 0},
        ("prefectflow_run_duration_seconds", "histogram"): {
            **{("prefectflow_run_duration_seconds_bucket", (("le", le),)): 0
               for le in ("0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "60.0", "120.0", "300.0",
                          "600.0", "+Inf")},
            ("prefectflow_run_duration_seconds_count", ()): 0, ("prefectflow_run_duration_seconds_sum", ()): 0},
        ("prefectflow_next_run_timestamp_seconds", "gauge"): {("prefectflow_next_run_timestamp_seconds", ()): 0},
        ("prefectflow_output_unchanged", "gauge"): {("prefectflow_output_unchanged", ()): 0},
    }


def test_metrics_count_the_runs_and_keep_the_last_success():
    metrics = Metrics()
    metrics.finished(summary(0), Success())
    metrics.finished({**summary(10, "extract failed: boom"), "attempts": 11}, Failed())
    metrics.next_run(pendulum.instance(at(20)))
    values = {k: v for family in read(metrics).values() for k, v in family.items()}
    assert values[("prefectflow_runs_total", (("state", "success"),))] == 1
    assert values[("prefectflow_runs_total", (("state", "failed"),))] == 1
    assert values[("prefectflow_extract_attempts_total", ())] == 12
    assert values[("prefectflow_records_written", ())] == 3  # the failed run changed nothing
    assert values[("prefectflow_last_success_timestamp_seconds", ())] == (START + datetime.timedelta(seconds=1)).timestamp()
    assert values[("prefectflow_next_run_timestamp_seconds", ())] == at(20).timestamp()
    assert values[("prefectflow_run_duration_seconds_count", ())] == 2
    assert values[("prefectflow_run_duration_seconds_sum", ())] == 2.0  # a second each
    assert values[("prefectflow_run_duration_seconds_bucket", (("le", "0.5"),))] == 0
    assert values[("prefectflow_run_duration_seconds_bucket", (("le", "1.0"),))] == 2
    assert values[("prefectflow_output_unchanged", ())] == 0


def test_after_an_unchanged_run_the_metrics_say_what_the_output_holds_and_that_it_was_left_alone():
    metrics = Metrics()
    metrics.finished(summary(0), Success())
    metrics.finished({**summary(10), "records": 3, "changed": False}, Success())
    values = {k: v for family in read(metrics).values() for k, v in family.items()}
    assert values[("prefectflow_records_written", ())] == 3
    assert values[("prefectflow_output_unchanged", ())] == 1
    metrics.finished(summary(20), Success())
    values = {k: v for family in read(metrics).values() for k, v in family.items()}
    assert values[("prefectflow_output_unchanged", ())] == 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian's prometheus package)")
def test_promtool_finds_nothing_to_say_about_the_metrics():
    """Prometheus's own linter: names, units, HELP and TYPE lines, histogram buckets."""
    metrics = Metrics()
    metrics.next_run(START)
    metrics.finished(summary(0), Success())
    metrics.finished({**summary(10, "extract failed: boom"), "attempts": 11}, Failed())
    checked = subprocess.run(["promtool", "check", "metrics"], input=metrics.text(), capture_output=True,
                             timeout=60)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b"")
