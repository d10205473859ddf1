"""etl.config: options from --config (TOML) and PREFECTFLOW_<OPTION> variables, read by the one
argparse table; precedence command line > environment > file > defaults."""
import json

import pytest
from conftest import RECORDS, RECORDS_JSON, ROOT, TODOS, cli, invalid_choice, last_line, ok, status

from etl import config, logs
from etl.cli import _parser, parse_args


@pytest.fixture(autouse=True)
def text_errors():
    """parse_args with --log-format json turns the one-line errors into JSON for the process: not past a test."""
    yield
    logs.use_for_errors(False)


@pytest.fixture
def toml(tmp_path):
    """Writes a config file with this text; its path."""
    def write(text, name="prefectflow.toml"):
        path = tmp_path / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return str(path)
    return write


def refused(capsys, argv, environ=None):
    """The one line parse_args exits 2 with."""
    with pytest.raises(SystemExit) as exited:
        parse_args(argv, environ or {})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    return last_line(err)


# A value of every option that takes one; new options are still read by the same mechanism.
SAMPLES = {
    "url": ["http://127.0.0.1:1/a", "http://127.0.0.1:1/b"], "output": "out/d.json", "interval": 5,
    "runs": 3, "history": "runs.jsonl", "listen": "127.0.0.1:0", "stale-after": 7.5,
    "notify": ["http://127.0.0.1:1/hook"], "retries": 2, "retry-delay": 0.5, "timeout": 3, "deadline": 9,
    "max-bytes": 1000, "paginate": True, "max-pages": 4, "header-env": ["X-Key=PATH"],
    "no-conditional": True, "executor": "threads", "workers": 2, "allow-empty": True, "log-format": "json",
}


def test_every_option_reads_alike_from_the_file_the_environment_and_the_command_line(toml):
    words = []
    for key, value in SAMPLES.items():
        if value is True:
            words.append(f"--{key}")
        else:
            words += [f"--{key}={item}" for item in (value if isinstance(value, list) else [value])]
    from_line = parse_args(words, {})
    from_file = parse_args(["--config", toml("\n".join(f"{k} = {json.dumps(v)}" for k, v in SAMPLES.items()))], {})
    from_env = parse_args([], {config.env_name(k): (json.dumps(v) if isinstance(v, list) else str(v).lower()
                                                    if isinstance(v, bool) else str(v)) for k, v in SAMPLES.items()})
    for args in (from_file, from_env):
        args.config = None
        assert {k: v for k, v in vars(args).items() if k != "headers"} == \
               {k: v for k, v in vars(from_line).items() if k != "headers"}


def test_every_option_of_the_table_has_a_key_and_a_variable():
    table = config.options(_parser())
    assert {"url", "retry-delay", "header-env", "no-conditional", "quiet", "log-format", "config"} <= set(table)
    assert "help" not in table
    assert config.env_name("retry-delay") == "PREFECTFLOW_RETRY_DELAY"
    assert config.env_name("no-conditional") == "PREFECTFLOW_NO_CONDITIONAL"


def test_the_command_line_wins_over_the_environment_which_wins_over_the_file(toml):
    path = toml('url = ["http://127.0.0.1:1/f1", "http://127.0.0.1:1/f2"]\nretries = 1\nretry-delay = 5\n'
                'timeout = 4\n')
    env = {"PREFECTFLOW_URL": "http://127.0.0.1:1/env", "PREFECTFLOW_RETRIES": "2", "PREFECTFLOW_TIMEOUT": "6"}
    args = parse_args(["--config", path], {})
    assert (args.urls, args.retries, args.retry_delay, args.timeout) == (
        ["http://127.0.0.1:1/f1", "http://127.0.0.1:1/f2"], 1, 5.0, 4.0)
    args = parse_args(["--config", path], env)
    assert (args.urls, args.retries, args.retry_delay, args.timeout) == (["http://127.0.0.1:1/env"], 2, 5.0, 6.0)
    args = parse_args(["--config", path, "--url", "http://127.0.0.1:1/cli", "--retries", "3"], env)
    assert (args.urls, args.retries, args.retry_delay, args.timeout) == (["http://127.0.0.1:1/cli"], 3, 5.0, 6.0)
    assert parse_args([], {}).retries == 10  # the default


def test_a_flag_set_in_the_file_is_turned_off_by_the_environment(toml):
    path = toml("once = true\nno-conditional = true\n")
    assert (parse_args(["--config", path], {}).once, parse_args(["--config", path], {}).conditional) == (True, False)
    args = parse_args(["--config", path, "--runs", "2"], {"PREFECTFLOW_ONCE": "false", "PREFECTFLOW_NO_CONDITIONAL": "0"})
    assert (args.once, args.runs, args.conditional) == (False, 2, True)
    assert parse_args([], {"PREFECTFLOW_ONCE": " Yes "}).once is True


def test_the_config_file_can_be_named_by_the_environment(toml):
    path = toml("retries = 4\n")
    assert parse_args([], {"PREFECTFLOW_CONFIG": path}).retries == 4
    other = toml("retries = 5\n", "other.toml")
    assert parse_args(["--config", other], {"PREFECTFLOW_CONFIG": path}).retries == 5


def test_a_repeatable_option_in_the_environment_takes_one_value_or_a_toml_list():
    assert parse_args([], {"PREFECTFLOW_URL": "http://127.0.0.1:1/a"}).urls == ["http://127.0.0.1:1/a"]
    assert parse_args([], {"PREFECTFLOW_URL": '["http://127.0.0.1:1/a", "http://127.0.0.1:1/b"]'}).urls == [
        "http://127.0.0.1:1/a", "http://127.0.0.1:1/b"]


@pytest.mark.parametrize("text, message", [
    ("retry_delay = 5\n", "unknown key 'retry_delay'; did you mean retry-delay?"),
    ("[section]\nretries = 1\n", "unknown key 'section'; retry-delay is how --retry-delay is written"),
    ('retries = "x"\n', "retries: invalid int value: 'x'"),
    ("retries = -1\n", "retries: must be at least 0: -1"),
    ("timeout = nan\n", "timeout: must be a finite number: nan"),
    ("retries = 1.5\n", "retries: invalid int value: '1.5'"),
    ("retries = [1]\n", "retries: must be a string or a number, not a list"),
    ("output = true\n", "output: must be a string or a number, not true or false"),
    ("output = 2026-01-01\n", "output: must be a string or a number, not date"),
    ('url = "http://127.0.0.1:1/"\n', 'url: must be a list of strings, such as ["..."]'),
    ("url = [1]\n", 'url: must be a list of strings, such as ["..."]'),
    ('url = ["ftp://ann:pw@example.org/?token=t0p"]\n',
     "url: ftp://***@example.org/?token=***: only http:// and https:// URLs can be fetched"),
    ("once = 1\n", "once: must be true or false"),
    ('executor = "cluster"\n', "executor: " + invalid_choice("cluster", ["local", "threads", "processes", "dask"])),
    ('header = ["Authorization: Bearer s3cr3t"]\n',
     'header: headers are not read from a config file, which is no place for secrets: use header-env = '
     '["NAME=ENVVAR"] and keep the value in that environment variable'),
    ('config = "other.toml"\n', "config: a config file cannot name another"),
    ('output = "a\\nb"\nretries = "1\\r\\n2"\n', "retries: invalid int value: '1\\r\\n2'"),
    ("retries = \n", "not valid TOML: Invalid value (at line 1, column 11)"),
    ("retries = 1\nretries = 2\n", "not valid TOML: Cannot overwrite a value (at line 2, column 12)"),
    (b"output = \"\xff\"\n", "not UTF-8 text (byte 10)"),
])
def test_a_file_it_cannot_use_exits_2_naming_the_file_and_the_key(toml, capsys, text, message):
    path = toml(text)
    assert refused(capsys, ["--config", path]) == f"prefectflow.py: error: --config {path}: {message}"


def test_a_file_that_cannot_be_read_exits_2_naming_it(toml, tmp_path, capsys):
    assert refused(capsys, ["--config", str(tmp_path / "none.toml")]) == (
        f"prefectflow.py: error: cannot read --config {tmp_path / 'none.toml'}: No such file or directory")
    assert refused(capsys, ["--config", str(tmp_path)]) == (
        f"prefectflow.py: error: cannot read --config {tmp_path}: Is a directory")
    path = toml("# " + "x" * config.MAX_FILE)
    assert refused(capsys, ["--config", path]) == (
        f"prefectflow.py: error: --config {path}: larger than 1 MiB; is it the right file?")


@pytest.mark.parametrize("name, value, message", [
    ("PREFECTFLOW_RETRIES", "-1", "environment variable PREFECTFLOW_RETRIES: must be at least 0: -1"),
    ("PREFECTFLOW_RETRY_DELAY", "inf", "environment variable PREFECTFLOW_RETRY_DELAY: must be a finite number: inf"),
    ("PREFECTFLOW_ONCE", "maybe",
     "environment variable PREFECTFLOW_ONCE: must be true or false (or 1 or 0, yes or no, on or off)"),
    ("PREFECTFLOW_URL", '["http://127.0.0.1:1/", 2]',
     'environment variable PREFECTFLOW_URL: must be a list of strings, such as ["..."]'),
    ("PREFECTFLOW_URL", '["http://127.0.0.1:1/"',
     "environment variable PREFECTFLOW_URL: not a TOML list of strings: Unclosed array (at end of document)"),
    ("PREFECTFLOW_RETRYDELAY", "5", "environment variable PREFECTFLOW_RETRYDELAY names no option; did you mean "
                                    "PREFECTFLOW_RETRY_DELAY?"),
    ("PREFECTFLOW_TIMEOUT", "1\nx", "environment variable PREFECTFLOW_TIMEOUT: invalid float value: '1\\nx'"),
    ("PREFECTFLOW_CONFIG", "/nonexistent/p.toml", "cannot read --config /nonexistent/p.toml: No such file or directory"),
])
def test_a_variable_it_cannot_use_exits_2_naming_it(capsys, name, value, message):
    assert refused(capsys, [], {name: value}) == f"prefectflow.py: error: {message}"


def test_a_variable_that_header_env_reads_may_have_the_prefix(monkeypatch):
    monkeypatch.setenv("PREFECTFLOW_TOKEN", "s3cr3t")
    args = parse_args(["--header-env", "Authorization=PREFECTFLOW_TOKEN"], {"PREFECTFLOW_TOKEN": "s3cr3t"})
    assert repr(args.headers) == "Headers(Authorization)"


@pytest.mark.parametrize("text, env, message", [
    ("once = true\n", {"PREFECTFLOW_RUNS": "3"}, "--once and --runs cannot be used together"),
    ('demo = true\nurl = ["http://127.0.0.1:1/"]\n', {}, "--demo and --url cannot be used together"),
    ("max-pages = 3\n", {}, "--max-pages needs --paginate"),
    ("", {"PREFECTFLOW_DEBUG": "1", "PREFECTFLOW_QUIET": "1"}, "--debug and --quiet cannot be used together"),
    ('header-env = ["Authorization=HOPS_UNSET_VARIABLE"]\n', {},
     "environment variable HOPS_UNSET_VARIABLE is not set (--header-env Authorization=HOPS_UNSET_VARIABLE)"),
])
def test_the_usage_rules_are_the_same_whatever_the_source(toml, capsys, text, env, message):
    assert refused(capsys, ["--config", toml(text)], env) == f"prefectflow.py: error: {message}"


def test_a_run_from_a_config_file_and_the_environment(source, tmp_path, toml):
    """A real run: the file names the sources and a header from the environment, the environment
    overrides the retries, and the request carries the header."""
    urls = [source.add("/a", status(503), ok(TODOS[:2])), source.add("/b", ok(TODOS[2:]))]
    path = toml(f'url = {json.dumps(urls)}\noutput = "{tmp_path / "out.json"}"\nonce = true\nretries = 0\n'
                'retry-delay = 0.01\nheader-env = ["X-Api-Key=HOPS_API_KEY"]\n')
    result = cli("--config", path, env={"PREFECTFLOW_RETRIES": "1", "HOPS_API_KEY": "s3cr3t"})
    assert (result.returncode, result.stderr) == (0, "")
    assert (tmp_path / "out.json").read_bytes() == RECORDS_JSON
    assert (source.hits("/a"), source.hits("/b")) == (2, 1)
    assert [asked["X-Api-Key"] for asked in source.asked("/a") + source.asked("/b")] == ["s3cr3t"] * 3
    assert "s3cr3t" not in result.stdout

    again = cli("--config", path, "--url", urls[1], "--output", tmp_path / "b.json", env={"HOPS_API_KEY": "k"})
    assert (again.returncode, again.stderr) == (0, "")
    assert json.loads((tmp_path / "b.json").read_text(encoding="utf-8")) == RECORDS[2:]
    assert (source.hits("/a"), source.hits("/b")) == (2, 2)  # the command line's --url replaced the file's list


def test_the_systemd_unit_reads_the_shipped_config_file():
    unit = (ROOT / "deploy" / "prefectflow.service").read_text()
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    *_, option, path = exec_start.split()
    assert (option, path) == ("--config", "/etc/prefectflow.toml")
    args = parse_args(["--config", str(ROOT / "deploy" / "prefectflow.toml")], {})
    assert (args.output, args.history, args.listen, args.log_format) == (
        "data/datos.json", "data/runs.jsonl", ("127.0.0.1", 9100), "text")
