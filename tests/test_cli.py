"""etl.cli and main(): options, usage rules and executors; the command line run as a user runs it."""
import ipaddress
import json
import logging
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pendulum
import psutil
import pytest
from conftest import RECORDS_JSON, ROOT, SCRIPT, cli, invalid_choice, last_line, ok, status, wait_for

import prefectflow
from etl.cli import _one_line, make_executor, parse_args
from etl.database import Table


def test_once_writes_the_transformed_records(source, tmp_path):
    url = source.add("/todos", ok())
    result = cli("--once", "--url", url, "--history", "runs.jsonl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "datos.json").read_bytes() == RECORDS_JSON
    (run,) = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert (run["state"], run["records"], run["attempts"], run["urls"]) == ("Success", 3, 1, [url])
    assert run["scheduled"] == run["started"]
    assert "Flow run SUCCESS: all reference tasks succeeded" in result.stdout
    assert result.stderr == ""


def test_once_exits_1_with_one_line_when_the_run_fails(source, good_output):
    url = source.add("/todos", status(404))
    result = cli("--once", "--retries", 1, "--retry-delay", 0.01, "--url", url, "--output", good_output)
    assert result.returncode == 1
    assert result.stderr == f"prefectflow.py: error: extract failed after 2 attempts: {url} answered HTTP 404 Not Found\n"
    assert "Traceback" not in result.stdout + result.stderr
    assert good_output.read_bytes() == RECORDS_JSON


@pytest.mark.parametrize("args, message", [
    (["--demo", "--url", "http://127.0.0.1:1/"], "--demo and --url cannot be used together"),
    (["--once", "--runs", "3"], "--once and --runs cannot be used together"),
    (["--demo", "--interval", "5"], "--demo and --interval cannot be used together"),
    (["--once", "--interval", "120"], "--once and --interval cannot be used together"),
    (["--once", "--visualize", "x.png", "--runs", "2"], "--once and --runs cannot be used together"),
    (["--visualize", "x.png", "--runs", "2"], "--visualize and --runs cannot be used together"),
    (["--debug", "-q"], "--debug and --quiet cannot be used together"),
    (["--dask-address", "tcp://127.0.0.1:1", "--workers", "2"], "--dask-address and --workers cannot be used together"),
    (["--retries", "-1"], "argument --retries: must be at least 0: -1"),
    (["--timeout", "0"], "argument --timeout: must be greater than 0: 0"),
    (["--interval", "0.5"], "argument --interval: must be at least 1: 0.5"),
    (["--visualize", "flow.jpg"], "--visualize: unknown format 'flow.jpg'; use .png, .svg, .pdf, .dot or .gv"),
    (["--executor", "local", "--workers", "2"], "--workers and --executor local cannot be used together"),
    (["--dask-address", "tcp://127.0.0.1:1", "--executor", "threads"],
     "--dask-address and --executor threads cannot be used together"),
    (["--once", "--listen", "127.0.0.1:0"], "--once and --listen cannot be used together"),
    (["--demo", "--notify", "http://127.0.0.1:1/"], "--demo and --notify cannot be used together"),
    (["--once", "--stale-after", "5"], "--once and --stale-after cannot be used together"),
    (["--stale-after", "5"], "--stale-after needs --listen"),
    (["--listen", "127.0.0.1:0", "--stale-after", "0"], "argument --stale-after: must be greater than 0: 0"),
    (["--listen", "127.0.0.1:0", "--stale-after", "inf"], "argument --stale-after: must be a finite number: inf"),
    (["--visualize", "x.png", "--listen", "127.0.0.1:0"], "--visualize and --listen cannot be used together"),
    (["--visualize", "x.png", "--notify", "http://127.0.0.1:1/"], "--visualize and --notify cannot be used together"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--cron", "* * * * *", "--interval", "60"], "--cron and --interval cannot be used together"),
    (["--once", "--cron", "* * * * *"], "--once and --cron cannot be used together"),
    (["--once", "--timezone", "UTC"], "--once and --timezone cannot be used together"),
    (["--demo", "--next", "3"], "--demo and --next cannot be used together"),
    (["--next", "3", "--visualize", "x.png"], "--next and --visualize cannot be used together"),
    (["--next", "0"], "argument --next: must be greater than 0: 0"),
    (["--cron", "0 0 31 2 *"], "argument --cron: '0 0 31 2 *' never matches a date"),
    (["--cron", "*/5 * * * * *"],
     "argument --cron: '*/5 * * * * *' has 6 fields; a cron expression has 5: minute hour day-of-month month day-of-week"),
    (["--cron", "61 * * * *"],
     "argument --cron: '61 * * * *' is not a valid cron expression (minute hour day-of-month month day-of-week)"),
    (["--timezone", "Mars/Olympus"],
     "argument --timezone: unknown time zone 'Mars/Olympus'; use an IANA name such as Europe/Madrid or UTC"),
    (["--timezone", "europe/madrid"], "argument --timezone: unknown time zone 'europe/madrid'; did you mean Europe/Madrid?"),
    (["--url", "ftp://ann:pw@example.org/todos?token=t0p"],
     "argument --url: ftp://***@example.org/todos?token=***: only http:// and https:// URLs can be fetched"),
    (["--url", "http://127.0.0.1:1/", "--url", "example.org/todos"],
     "argument --url: example.org/todos: no scheme; write https:// or http:// before the host"),
    *[([f"{option}={value}"], f"argument {option}: must be a finite number: {value}")
      for option in ["--interval", "--retry-delay", "--timeout", "--deadline"]
      for value in ["nan", "inf", "-inf", "NaN"]],
])
def test_bad_usage_exits_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exited:
        prefectflow.main(args)
    assert exited.value.code == 2
    assert capsys.readouterr() == ("", f"prefectflow.py: error: {message}\n")


@pytest.mark.parametrize("value", ["9100", "127.0.0.1", "127.0.0.1:", ":9100", "127.0.0.1:65536", "h:-1", "h:x",
                                   "::1:9100", "[::1]", "[]:9100", "[::1:9100", "::1]:9100", "[h]:9100"])
def test_listen_needs_host_and_port(value, capsys):
    with pytest.raises(SystemExit) as exited:
        prefectflow.main(["--listen", value])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        f"prefectflow.py: error: argument --listen: must be HOST:PORT, such as 127.0.0.1:9100 or [::1]:9100: {value}\n")


def test_help_shows_the_defaults_and_exits_0(tmp_path):
    result = cli("--help", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert "file to write, or a database to load into" in " ".join(result.stdout.split())
    assert "(default: datos.json)" in " ".join(result.stdout.split())
    assert "limit for a whole response (default: 600)" in " ".join(result.stdout.split())
    assert list(tmp_path.iterdir()) == []


def test_stale_after_defaults_to_three_intervals():
    assert parse_args(["--listen", "127.0.0.1:0", "--interval", "1.5"]).stale_after == 4.5
    assert parse_args(["--listen", "localhost:9100", "--stale-after", "0.5"]).stale_after == 0.5
    assert parse_args(["--listen", "localhost:9100"]).listen == ("localhost", 9100)
    assert parse_args(["--listen", "[::1]:0"]).listen == ("::1", 0)


def test_a_url_that_can_never_be_fetched_is_bad_usage_and_its_secrets_show_nowhere(tmp_path):
    result = cli("--once", "--url", "file://ann:pa55w0rd@localhost/etc/passwd?token=t0p#jwt=j0t", "--history", "h.jsonl",
                 cwd=tmp_path)
    assert result.returncode == 2
    assert last_line(result.stderr) == ("prefectflow.py: error: argument --url: file://***@localhost/etc/passwd"
                                        "?token=***#jwt=***: only http:// and https:// URLs can be fetched")
    assert not any(secret in result.stdout + result.stderr for secret in ["pa55w0rd", "t0p", "j0t"])
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--notify", "notaurl"], "argument --notify: notaurl: no scheme; write https:// or http:// before the host"),
    (["--notify", "ftp://ann:pa55w0rd@example.org/hook?token=t0p"],
     "argument --notify: ftp://***@example.org/hook?token=***: only http:// and https:// URLs can be fetched"),
    (["--notify", "http://ann:pa55w0rd@exa mple.org/hook?token=t0p"],
     "argument --notify: http://***@exa mple.org/hook?token=***: not a valid URL (Failed to parse: Host "
     "'exa mple.org' contains invalid character ' ')"),
    (["--url", "http://127.0.0.1:1/\udcff"],
     "argument --url: http://127.0.0.1:1/\\xff: holds a byte that is not UTF-8; percent-encode it (%FF for \\xff)"),
    (["--url", "http://127.0.0.1:1/todos?token=t0p\udcff"],
     "argument --url: http://127.0.0.1:1/todos?token=***: holds a byte that is not UTF-8; percent-encode it "
     "(%FF for \\xff)"),
    (["--url", "http://127.0.0.1:1/a\r\nb\x1b[31m"],
     "argument --url: http://127.0.0.1:1/a\\r\\nb\\x1b[31m: holds a line break, a control character or a space "
     "that is not a plain space; percent-encode it"),
    *[([option, "1e300", *more], f"argument {option}: must be at most 31622400: 1e300")
      for option, more in [("--interval", ["--runs", "1"]), ("--retry-delay", []), ("--timeout", []),
                           ("--deadline", []), ("--stale-after", ["--listen", "127.0.0.1:0"])]],
])
def test_a_bad_value_from_the_command_line_is_bad_usage_before_anything_runs(source, tmp_path, args, message):
    """Nothing is fetched, posted or written; the secrets in the URLs show nowhere."""
    url = source.add("/todos", ok())
    result = cli("--url", url, "--runs", 1, "--interval", 1, "--history", "h.jsonl", "--notify", url, *args,
                 cwd=tmp_path)
    assert result.returncode == 2
    assert last_line(result.stderr) == f"prefectflow.py: error: {message}"
    assert not any(secret in result.stdout + result.stderr for secret in ["pa55w0rd", "t0p"])
    assert result.stdout == "" and list(tmp_path.iterdir()) == [] and source.hits("/todos") == 0


@pytest.mark.parametrize("args, message", [
    (["--once", "--runs", "2"], "--once and --runs cannot be used together"),
    (["--bogus", "--once"], "unrecognized arguments: --bogus"),
    (["--output"], "argument --output: expected one argument"),
    (["--retries", "two"], "argument --retries: invalid int value: 'two'"),
])
def test_bad_usage_in_a_subprocess_is_one_line_and_runs_nothing(args, message, tmp_path):
    """No usage block above the line, no hint below it: exit 2 and one line."""
    result = cli(*args, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"prefectflow.py: error: {message}\n")
    assert list(tmp_path.iterdir()) == []


def test_importing_has_no_side_effects(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import prefectflow"], cwd=tmp_path,
                            env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert list(tmp_path.iterdir()) == []


def test_prefect_cli_runs_the_module_flow(source, tmp_path):
    prefect = str(Path(sys.executable).with_name("prefect"))
    url = source.add("/todos", ok())
    result = subprocess.run([prefect, "run", "-p", str(ROOT / "prefectflow.py"), "--param",
                             f"parametro_url={url}"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "datos.json").read_bytes() == RECORDS_JSON


def test_prefect_cli_fails_at_once_on_a_url_that_can_never_be_fetched(tmp_path):
    prefect = str(Path(sys.executable).with_name("prefect"))
    result = subprocess.run([prefect, "run", "-p", str(ROOT / "prefectflow.py"), "--param",
                             "parametro_url=ftp://ann:pa55w0rd@example.org/todos?token=t0p"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1
    # Prefect's own command line echoes the parameters it was given, as it was given them.
    output = (result.stdout + result.stderr).replace(
        "Parameters: {'parametro_url': 'ftp://ann:pa55w0rd@example.org/todos?token=t0p'}", "")
    assert "ftp://***@example.org/todos?token=***: only http:// and https:// URLs can be fetched" in output
    assert "pa55w0rd" not in output and "t0p" not in output
    assert "Retrying" not in output and "Flow run FAILED" in output
    assert list(tmp_path.iterdir()) == []


def describe(executor):
    kind = type(executor).__name__
    if kind == "LocalDaskExecutor":
        return kind, executor.scheduler, executor.dask_config["num_workers"]
    if kind == "DaskExecutor":
        kwargs = executor.cluster_kwargs or {}
        if executor.address is None:
            assert kwargs["host"] == "127.0.0.1"  # a local cluster listens on loopback only
        return kind, executor.address, kwargs.get("n_workers"), kwargs.get("threads_per_worker")
    return (kind,)


@pytest.mark.parametrize("args, expected", [
    ([], ("LocalExecutor",)),
    (["--url", "http://a/"] * 2 + ["--url", "http://b/"], ("LocalDaskExecutor", "threads", 3)),
    (["--url", "http://a/"] * 40, ("LocalDaskExecutor", "threads", 32)),
    (["--workers", "3"], ("LocalDaskExecutor", "threads", 3)),
    (["--executor", "processes"], ("LocalDaskExecutor", "processes", 1)),
    (["--executor", "dask", "--workers", "2"] + ["--url", "http://a/"] * 5, ("DaskExecutor", None, 2, 3)),
    (["--dask-address", "tcp://127.0.0.1:8786"], ("DaskExecutor", "tcp://127.0.0.1:8786", None, None)),
])
def test_executor_options(args, expected):
    assert describe(make_executor(parse_args(args))) == expected


@pytest.mark.parametrize("mode", [["--once"], ["--runs", "1", "--interval", "1"]])
def test_an_unreachable_dask_cluster_fails_with_one_line_that_says_it_once(source, tmp_path, mode):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
    result = cli(*mode, "--url", source.add("/todos", ok()), "--dask-address", address, "--output",
                 tmp_path / "d.json", env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"})
    assert result.returncode == 1
    cause = f"Unexpected error: OSError('Timed out trying to connect to {address} after 1 s')"
    assert result.stderr.endswith(f"the flow run failed: {cause}\n")
    assert len(result.stderr.splitlines()) == 1
    assert f"ERROR - prefect.FlowRunner | {cause}\n" in result.stdout
    assert "OSError: Timed out" not in result.stdout  # said once per line, not twice
    assert source.hits("/todos") == 0


def listening(pid):
    """{(pid, address, port)} of every socket the process and its descendants listen on (TCP) or are
    bound to (UDP)."""
    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for process in tree:
        try:
            for conn in process.net_connections(kind="inet"):
                if conn.status in (psutil.CONN_LISTEN, psutil.CONN_NONE) and conn.laddr:
                    found.add((process.pid, conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            pass  # a process that ended meanwhile listens on nothing
    return found


def test_a_local_dask_cluster_listens_on_loopback_only(source, tmp_path):
    """The scheduler, its dashboard, the nannies, the workers and their HTTP servers: every socket of
    the process tree, listed while a task is fetching."""
    listed = threading.Event()

    def held(handler):  # answers once the sockets have been listed: the cluster is up until then
        listed.wait(120)
        ok()(handler)
    urls = [source.add(f"/todos{n}", held) for n in range(2)]
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--once", "--executor", "dask", "--workers", "2",
                             "--url", urls[0], "--url", urls[1], "--output", str(tmp_path / "d.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # The cluster starts its workers, servers listening, before the flow runs a task.
        wait_for(lambda: source.hits("/todos0") + source.hits("/todos1") or proc.poll() is not None,
                 "request from a task", deadline=180)
        sockets = listening(proc.pid)
    finally:
        listed.set()
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert len({pid for pid, _, _ in sockets}) == 3, sockets  # this process and two workers
    assert [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback] == []


def test_the_one_line_log_filter_keeps_an_error_without_a_message():
    try:
        raise MemoryError()
    except MemoryError:
        record = logging.LogRecord("prefect", logging.ERROR, __file__, 1, "Exception encountered", (), sys.exc_info())
    assert _one_line(record) and record.getMessage() == "Exception encountered MemoryError: "


@pytest.mark.parametrize("args, message", [
    (["--table", "todos"], "--table needs a database --output (sqlite:///... or postgresql://...)"),
    (["--load-mode", "merge"], "--load-mode needs a database --output (sqlite:///... or postgresql://...)"),
    (["--output", "sqlite:///t.db", "--load-mode", "upsert"],
     "argument --load-mode: " + invalid_choice("upsert", ["replace", "merge"])),
    *[(["--output", "sqlite:///t.db", "--table", name],
       f"argument --table: {name!r} is not a table name we load into: use letters, digits and _, not starting with "
       "a digit, at most 63 characters, not prefectflow_state")
      for name in ["1x", "a-b", 'x"; DROP TABLE y; --', "", "x" * 64, "prefectflow_state", "sqlite_master", "é"]],
    (["--output", "mysql://ann:pw@h/db"],
     "argument --output: mysql://***@h/db: only sqlite:// and postgresql:// outputs are databases; give a file path "
     "or one of those"),
    (["--output", "sqlite://host/t.db"],
     "argument --output: sqlite://host/t.db: write sqlite:///relative/path.db or sqlite:////absolute/path.db"),
    (["--output", "sqlite:///"],
     "argument --output: sqlite:///: no database file; write sqlite:///relative/path.db or sqlite:////absolute/path.db"),
    (["--output", "postgresql://ann:pw@h/db?password=pw2&bogus=1"],
     'argument --output: postgresql://***@h/db?password=***&bogus=1: not a PostgreSQL connection URI (invalid URI '
     'query parameter: "bogus")'),
    (["--output", "postgres://ann:pw@h:x/db"],
     "argument --output: postgres://***@h:x/db: not a PostgreSQL connection URI (port 'x')"),
])
def test_bad_database_usage_exits_2_before_anything_runs(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        prefectflow.main(["--once", "--url", "http://127.0.0.1:1/", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert last_line(err) == f"prefectflow.py: error: {message}"
    assert "pw" not in err.replace("password", "")
    assert list(tmp_path.iterdir()) == []


def test_a_relative_sqlite_path_is_made_absolute_and_the_table_defaults_to_todos(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = parse_args(["--output", "sqlite:///out/t.db"])
    assert (args.output, args.table) == (f"sqlite:///{tmp_path}/out/t.db", Table("todos", "replace"))
    assert parse_args(["--output", "sqlite:////abs/t.db", "--table", "T_1", "--load-mode", "merge"]).table == Table(
        "T_1", "merge")
    assert parse_args(["--output", "postgresql:///db"]).output == "postgresql:///db"
    assert parse_args([]).table is None
def test_next_prints_the_cron_times_in_the_zone_and_runs_nothing(source, tmp_path):
    url = source.add("/todos", ok())
    before = pendulum.now("Asia/Kolkata")
    result = cli("--next", 3, "--cron", "0 12 * * *", "--timezone", "Asia/Kolkata", "--url", url,
                 "--history", "h.jsonl", "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    days = [pendulum.parse(line) for line in lines]
    assert before < days[0] <= before.add(days=1)
    assert [line[10:] for line in lines] == ["T12:00:00+05:30"] * 3
    assert [(b - a).total_seconds() for a, b in zip(days, days[1:])] == [86400, 86400]
    assert source.hits("/todos") == 0 and list(tmp_path.iterdir()) == []


def test_next_prints_the_interval_times_from_now(tmp_path):
    before = pendulum.now("utc").start_of("second")
    result = cli("--next", 3, "--interval", 90, cwd=tmp_path)
    after = pendulum.now("utc")
    assert (result.returncode, result.stderr) == (0, "")
    times = [pendulum.parse(line) for line in result.stdout.splitlines()]
    assert all(line.endswith("+00:00") for line in result.stdout.splitlines())
    assert before <= times[0] <= after  # the first run starts at once
    assert [(b - a).total_seconds() for a, b in zip(times, times[1:])] == [90, 90]
    assert list(tmp_path.iterdir()) == []


def test_stale_after_with_cron_allows_three_of_its_longest_gaps():
    assert parse_args(["--listen", "127.0.0.1:0", "--cron", "*/5 * * * *"]).stale_after == 900
    assert parse_args(["--listen", "127.0.0.1:0", "--cron", "0 8 * * 1-5", "--timezone", "Europe/Madrid"]).stale_after == 3 * 3 * 86400
