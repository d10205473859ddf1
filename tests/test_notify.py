"""etl.notify: --notify posts when runs start failing and when they recover, and never holds them up."""
import datetime
import logging
import socket
import threading

import pytest
from conftest import cli, hang, history, ok, redirect, slow_headers, status, wait_for
from prefect.engine.state import Failed, Success
from test_status import summary

from etl.notify import Notifier

FIELDS = ["changes", "error", "last_success", "state", "text", "time", "urls"]


def test_only_the_first_failure_and_the_first_success_after_it_are_posted(source):
    hook = source.add("/hook", ok({}))
    notifier = Notifier([hook])
    runs = [summary(0), summary(10, "extract failed: a"), summary(20, "extract failed: b"), summary(30),
            summary(40), summary(50, "extract failed: c")]
    for run in runs:
        notifier.finished(run, Failed() if "error" in run else Success())
    notifier.close()
    host = notifier.host
    assert source.bodies("/hook") == [
        {"text": f"prefectflow on {host}: runs are failing: extract failed: a (last success: {runs[0]['finished']})",
         "state": "failing", "error": "extract failed: a", "last_success": runs[0]["finished"],
         "urls": runs[1]["urls"], "time": runs[1]["started"], "changes": 1},
        {"text": f"prefectflow on {host}: runs recovered: 3 records written",
         "state": "recovered", "error": None, "last_success": runs[3]["finished"],
         "urls": runs[3]["urls"], "time": runs[3]["started"], "changes": 1},
        {"text": f"prefectflow on {host}: runs are failing: extract failed: c (last success: {runs[4]['finished']})",
         "state": "failing", "error": "extract failed: c", "last_success": runs[4]["finished"],
         "urls": runs[5]["urls"], "time": runs[5]["started"], "changes": 1},
    ]


def test_the_service_posts_failing_then_recovered_to_each_webhook(source, tmp_path):
    url = source.add("/todos", status(503), status(500), ok())
    hooks = [source.add("/hook", ok({})), source.add("/other?token=s3cret", status(204))]
    runs_file = tmp_path / "runs.jsonl"
    result = cli("--runs", 3, "--interval", 1, "--retries", 0, "--url", url, "--output", tmp_path / "d.json",
                 "--history", runs_file, "--notify", hooks[0], "--notify", hooks[1])
    assert result.returncode == 0, result.stderr
    runs = history(runs_file)
    assert [r["state"] for r in runs] == ["Failed", "Failed", "Success"]
    for path in ("/hook", "/other?token=s3cret"):  # delivered before the exit
        failing, recovered = source.bodies(path)
        assert sorted(failing) == sorted(recovered) == FIELDS
        assert (failing["state"], failing["error"], failing["last_success"], failing["time"], failing["urls"]) == (
            "failing", runs[0]["error"], None, runs[0]["started"], [url])
        assert failing["text"].endswith(f"runs are failing: {runs[0]['error']} "
                                        "(last success: none since the service started)")
        assert (recovered["state"], recovered["error"], recovered["last_success"], recovered["time"]) == (
            "recovered", None, runs[2]["finished"], runs[2]["started"])


def test_a_webhook_that_fails_is_logged_once_per_notice_masked_and_changes_nothing(source, tmp_path):
    url = source.add("/todos", status(503), ok())
    hook = source.add("/hook?token=s3cret", status(500))
    result = cli("--runs", 2, "--interval", 1, "--retries", 0, "--url", url, "--output", tmp_path / "d.json",
                 "--notify", hook)
    assert result.returncode == 0, result.stderr  # the last run succeeded, whatever the webhook said
    assert source.hits("/hook?token=s3cret") == 6  # 3 attempts for each notice
    masked = hook.replace("s3cret", "***")
    failures = [line.split(" | ", 1)[1] for line in result.stdout.splitlines() if "prefect.etl.notify" in line]
    assert failures == [
        f"Could not deliver the 'failing' notice to --notify {masked} after 3 attempts: "
        "HTTP 500 Internal Server Error",
        f"Could not deliver the 'recovered' notice to --notify {masked} after 3 attempts: "
        "HTTP 500 Internal Server Error"]
    assert "s3cret" not in result.stdout + result.stderr


def test_a_hanging_webhook_does_not_hold_up_the_runs(service, source, tmp_path):
    runs_seen = []  # how many runs were in the history as each delivery attempt arrived

    def hang_and_count(handler):
        runs_seen.append(len(history(tmp_path / "runs.jsonl")))  # the service's --history
        handler.server.stopping.wait(120)

    hook = source.add("/hook", hang_and_count)
    service("--interval", 1, "--retries", 0, "--url", source.add("/todos", status(503)), "--notify", hook)
    # The second attempt comes once the first has timed out (5 s); the runs went on meanwhile.
    wait_for(lambda: len(runs_seen) >= 2, "second delivery attempt")
    assert runs_seen[0] >= 1 and runs_seen[1] > runs_seen[0]


@pytest.fixture
def notify_log():
    """The messages etl.notify logs while the test runs."""
    logger = logging.getLogger("prefect.etl.notify")
    handler = logging.Handler()
    handler.messages = []
    handler.emit = lambda record: handler.messages.append(record.getMessage())
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def test_slow_or_redirecting_webhooks_delay_no_other_and_follow_nothing(source, notify_log):
    stolen = source.url("/stolen")
    hooks = [source.add("/redirect", redirect(stolen, 302, inflates_to=1 << 20)),  # its body never ends
             source.add("/moved?token=s3cret", redirect(stolen, 307)),
             source.add("/headers", slow_headers(0.3)),  # a header line every 0.3 s, without end
             source.add("/hang", hang(60)),
             source.add("/good", ok({}))]
    notifier = Notifier(hooks)
    notifier.finished(summary(0, "extract failed: a"), Failed())
    wait_for(lambda: len(source.bodies("/good")) == 1, "the notice at the healthy webhook")
    masked = [hook.replace("s3cret", "***") for hook in hooks]
    expected = [
        f"Could not deliver the 'failing' notice to --notify {masked[0]} at the first attempt: "
        "HTTP 302 Found: redirects are not followed; give --notify the final URL",
        f"Could not deliver the 'failing' notice to --notify {masked[1]} at the first attempt: "
        "HTTP 307 Temporary Redirect: redirects are not followed; give --notify the final URL",
        f"Could not deliver the 'failing' notice to --notify {masked[2]} after 3 attempts: no whole answer within 5 s",
        f"Could not deliver the 'failing' notice to --notify {masked[3]} after 3 attempts: no whole answer within 5 s"]
    wait_for(lambda: sorted(notify_log) == sorted(expected), "every delivery to end", deadline=120)
    notifier.close()
    assert [source.hits(path) for path in ("/redirect", "/moved?token=s3cret", "/headers", "/hang", "/stolen")] == [
        1, 1, 3, 3, 0]


def test_a_source_cannot_put_slack_markup_in_a_notice(source, tmp_path):
    def phishing(handler):
        handler.send_response(503, "<!channel> & <http://evil.example/login|re-authenticate here> @here")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    url = source.add("/todos", phishing)
    hook = source.add("/hook", ok({}))
    result = cli("--runs", 1, "--interval", 1, "--retries", 0, "--url", url, "--output", tmp_path / "d.json",
                 "--notify", hook)
    assert result.returncode == 1
    (notice,) = source.bodies("/hook")
    error = (f"extract failed: {url} answered HTTP 503 "
             "<!channel> & <http://evil.example/login|re-authenticate here> @here")
    assert notice["error"] == error  # the facts as they are, for receivers of your own
    assert notice["text"] == (
        f"prefectflow on {socket.gethostname()}: runs are failing: extract failed: {url} answered HTTP 503 "
        "&lt;!channel&gt; &amp; &lt;http://evil.example/login|re-authenticate here&gt; @\u200bhere "
        "(last success: none since the service started)")


def test_flapping_runs_send_at_most_one_notice_of_each_kind_per_quiet_period(source):
    hook = source.add("/hook", ok({}))
    notifier = Notifier([hook], quiet=50)
    for second in range(0, 200, 10):  # failing every other run, every 10 s: 19 changes
        notifier.finished(summary(second, "extract failed: a") if second % 20 == 0 else summary(second), Failed())
    notifier.finished(summary(195, "extract failed: b"), Failed())  # held: a failing notice went out at 181
    notifier.close()  # the last word: what the runs do now
    told = [(n["state"], n["changes"], n["time"][17:19]) for n in source.bodies("/hook")]
    assert told == [("failing", 1, "00"), ("recovered", 1, "10"),
                    ("failing", 5, "00"), ("recovered", 1, "10"),  # at 1:00 and 1:10
                    ("failing", 5, "00"), ("recovered", 1, "10"),  # at 2:00 and 2:10
                    ("failing", 5, "00"), ("recovered", 1, "10"),  # at 3:00 and 3:10
                    ("failing", 1, "15")]
    texts = [n["text"] for n in source.bodies("/hook")]
    assert texts[2].endswith("(flapping: 5 changes between failing and succeeding since the last notice)")
    assert "flapping" not in texts[3]


def test_the_queue_of_each_webhook_is_bounded_dropping_the_oldest(source, notify_log):
    released = threading.Event()

    def held(handler):
        released.wait(60)
        ok({})(handler)

    hook = source.add("/hook", held)
    notifier = Notifier([hook])
    runs = [summary(second, "extract failed: a") if second % 2 == 0 else summary(second) for second in range(15)]
    notifier.finished(runs[0], Failed())
    wait_for(lambda: source.hits("/hook") == 1, "the first delivery")  # taken from the queue, in progress
    for run in runs[1:]:
        notifier.finished(run, Failed())
    released.set()
    notifier.close()
    assert [n["time"] for n in source.bodies("/hook")] == [runs[0]["started"]] + [r["started"] for r in runs[5:]]
    assert notify_log == [f"Dropped the {'recovered' if n % 2 else 'failing'!r} notice of {runs[n]['started']} "
                          f"to --notify {hook}: 10 newer ones are waiting" for n in range(1, 5)]


def test_a_source_failing_every_other_run_sends_a_few_notices_not_one_per_run(source, tmp_path):
    url = source.add("/todos", *[status(503), ok()] * 5)
    hook = source.add("/hook", ok({}))
    runs_file = tmp_path / "runs.jsonl"
    result = cli("--runs", 10, "--interval", 1, "--retries", 0, "--url", url, "--output", tmp_path / "d.json",
                 "--history", runs_file, "--notify", hook)
    assert result.returncode == 0, result.stderr
    runs = history(runs_file)
    assert [run["state"] for run in runs] == ["Failed", "Success"] * 5
    finished = {run["started"]: datetime.datetime.fromisoformat(run["finished"]) for run in runs}
    notices = source.bodies("/hook")
    told = [notice["state"] for notice in notices]
    assert told[:2] == ["failing", "recovered"] and told[-1] == "recovered"  # the last word: the last run's
    assert all(a != b for a, b in zip(told, told[1:]))
    # Each kind at most once per 5 s (5 intervals), timed by the runs themselves (a busy machine
    # makes them slow); but for the last notice, which may be the one sent at the exit.
    for kind in ("failing", "recovered"):
        times = [finished[notice["time"]] for notice in notices[:-1] if notice["state"] == kind]
        assert all((later - earlier).total_seconds() >= 5 for earlier, later in zip(times, times[1:])), times
