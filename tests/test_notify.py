"""etl.notify: --notify posts when runs start failing and when they recover, and never holds them up."""
from conftest import cli, history, ok, status, wait_for
from prefect.engine.state import Failed, Success
from test_status import summary

from etl.notify import Notifier

FIELDS = ["error", "last_success", "state", "text", "time", "urls"]


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
         "urls": runs[1]["urls"], "time": runs[1]["started"]},
        {"text": f"prefectflow on {host}: runs recovered: 3 records written",
         "state": "recovered", "error": None, "last_success": runs[3]["finished"],
         "urls": runs[3]["urls"], "time": runs[3]["started"]},
        {"text": f"prefectflow on {host}: runs are failing: extract failed: c (last success: {runs[4]['finished']})",
         "state": "failing", "error": "extract failed: c", "last_success": runs[4]["finished"],
         "urls": runs[5]["urls"], "time": runs[5]["started"]},
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
