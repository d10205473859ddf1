"""--log-format json: every line a real process writes on stdout and stderr is one JSON object."""
import datetime
import json
import signal
import subprocess
import sys

from conftest import SCRIPT, TODOS, cli, ok, status, wait_for

SECRET = "s3cr3t-t0ken"


def objects(text):
    """Each line of text as a JSON object with the fields every line has."""
    found = []
    for line in text.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= set(entry), line
        assert datetime.datetime.fromisoformat(entry["time"]).utcoffset() == datetime.timedelta(0), line
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        found.append(entry)
    return found


def test_a_successful_run_logs_json_objects_with_the_run_fields(source, tmp_path):
    url = source.add(f"/todos?token={SECRET}", ok())
    masked = url.replace(SECRET, "***")
    result = cli("--once", "--log-format", "json", "--url", url, "--output", tmp_path / "d.json")
    assert (result.returncode, result.stderr) == (0, "")
    lines = objects(result.stdout)
    (get,) = [entry for entry in lines if entry["message"].startswith("GET ")]
    assert get["message"].startswith(f"GET {masked}: HTTP 200, ")
    assert (get["level"], get["logger"], get["task"], get["attempt"], get["url"]) == (
        "INFO", "prefect.extract", "extract", 1, masked)
    assert len({entry["flow_run"] for entry in lines if "flow_run" in entry}) == 1
    assert lines[-1]["logger"] == "prefect.etl.service" and lines[-1]["message"].startswith("Run started ")
    assert SECRET not in result.stdout


def test_a_failed_run_with_retries_logs_each_attempt_and_ends_in_a_json_error(source, tmp_path):
    url = source.add(f"/todos?token={SECRET}", status(503))
    masked = url.replace(SECRET, "***")
    result = cli("--once", "--log-format", "json", "--retries", 2, "--retry-delay", 0.01, "--url", url,
                 "--output", tmp_path / "d.json")
    assert result.returncode == 1
    failed = [entry for entry in objects(result.stdout) if entry["message"].startswith("Attempt ")]
    assert [(entry["level"], entry["attempt"], entry["url"]) for entry in failed] == [
        ("WARNING", n, masked) for n in (1, 2, 3)]
    (last,) = objects(result.stderr)
    assert {k: v for k, v in last.items() if k != "time"} == {
        "level": "ERROR", "logger": "prefectflow.py",
        "message": f"extract failed after 3 attempts: {masked} answered HTTP 503 Service Unavailable"}
    assert "traceback" not in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_with_debug_a_traceback_is_inside_its_object(source, tmp_path):
    url = source.add(f"/todos?token={SECRET}", status(503))
    result = cli("--once", "--log-format", "json", "--debug", "--retries", 0, "--url", url,
                 "--output", tmp_path / "d.json")
    assert result.returncode == 1
    lines = objects(result.stdout)
    assert [entry for entry in lines if entry["level"] == "DEBUG"]
    (raised,) = [entry for entry in lines if "traceback" in entry]
    assert raised["message"] == "Task 'extract': Exception encountered during task execution!"
    assert raised["traceback"].startswith("Traceback (most recent call last):\n")
    assert raised["traceback"].endswith(f"etl.errors.SourceError: {url.replace(SECRET, '***')} answered HTTP 503 "
                                        "Service Unavailable")
    assert len(objects(result.stderr)) == 1
    assert SECRET not in result.stdout + result.stderr


def test_a_usage_error_is_one_json_object_whatever_sets_the_format(tmp_path):
    config = tmp_path / "p.toml"
    config.write_text('log-format = "json"\n')
    for args, env in [(["--log-format", "json", "--retries", "-1"], {}),
                      (["--retries", "-1"], {"PREFECTFLOW_LOG_FORMAT": "json"}),
                      (["--config", config, "--retries", "-1"], {})]:
        result = cli(*args, env=env)
        assert (result.returncode, result.stdout) == (2, "")
        (line,) = objects(result.stderr)
        assert {k: v for k, v in line.items() if k != "time"} == {
            "level": "ERROR", "logger": "prefectflow.py", "message": "argument --retries: must be at least 0: -1"}
    result = cli("--log-format", "json", "--retries", "-1", "--log-format", "text")
    assert result.stderr == "prefectflow.py: error: argument --retries: must be at least 0: -1\n"


def test_a_service_stopped_by_sigterm_logs_json_to_the_end(source, tmp_path):
    log = tmp_path / "service.log"
    with open(log, "w") as out, open(tmp_path / "service.err", "w") as err:
        proc = subprocess.Popen([sys.executable, SCRIPT, "--log-format", "json", "--interval", "3600",
                                 "--url", source.add("/todos", ok(TODOS)), "--output", tmp_path / "d.json"],
                                stdout=out, stderr=err)
    try:
        wait_for(lambda: "Waiting for next scheduled run" in log.read_text(), "wait line")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 143
    finally:
        proc.kill()
    assert [entry["message"] for entry in objects(log.read_text())][-1].startswith("Waiting for next scheduled run at ")
    (stopped,) = objects((tmp_path / "service.err").read_text())
    assert (stopped["level"], stopped["logger"], stopped["message"]) == ("WARNING", "prefectflow.py", "stopped by SIGTERM")


def test_each_scheduled_run_has_its_own_flow_run_id(source, tmp_path):
    result = cli("--log-format", "json", "--interval", 1, "--runs", 2, "--url", source.add("/todos", ok()),
                 "--output", tmp_path / "d.json")
    assert (result.returncode, result.stderr) == (0, "")
    lines = objects(result.stdout)
    gets = [entry for entry in lines if entry["message"].startswith("GET ")]
    assert len(gets) == 2 and gets[0]["flow_run"] != gets[1]["flow_run"]


def test_the_workers_of_a_local_dask_cluster_log_json_too(source, tmp_path):
    url = source.add("/todos", status(503), ok())
    result = cli("--once", "--log-format", "json", "--executor", "dask", "--workers", 1, "--retry-delay", 0.01,
                 "--url", url, "--output", tmp_path / "d.json")
    assert (result.returncode, result.stderr) == (0, "")
    (get,) = [entry for entry in objects(result.stdout) if entry["message"].startswith("GET ")]
    assert (get["task"], get["attempt"], get["url"]) == ("extract", 2, url)


def test_python_warnings_other_loggers_and_an_uncaught_exception_are_json_objects_on_stderr():
    code = ("from etl import cli\n"
            "cli.setup_logging(False, False, 'json')\n"
            "import logging, warnings\n"
            "warnings.warn('a warning')\n"
            "logging.getLogger('some.library').warning('a library speaks')\n"
            "logging.getLogger('some.library').info('not shown, as in text')\n"
            "raise RuntimeError('a bug')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=SCRIPT.parent, capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stdout) == (1, "")
    lines = objects(result.stderr)
    assert [(e["level"], e["logger"], e["message"]) for e in lines] == [
        ("WARNING", "py.warnings", "<string>:4: UserWarning: a warning\n"),
        ("WARNING", "some.library", "a library speaks"),
        ("CRITICAL", "prefectflow.py", "unexpected error: RuntimeError: a bug")]
    assert lines[-1]["traceback"].endswith("RuntimeError: a bug")
