"""The command line, run as a user runs it: in a subprocess."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RECORDS, RECORDS_JSON, ROOT, cli, last_line, ok, status

import prefectflow

has_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="needs graphviz's dot program")


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


def test_demo_retries_once_and_writes_the_sample(tmp_path):
    out = tmp_path / "out" / "demo.json"
    result = cli("--demo", "--output", out)
    assert result.returncode == 0, result.stderr
    assert "Task 'extract': Finished task run for task with final state: 'Retrying'" in result.stdout
    assert "Flow run SUCCESS" in result.stdout
    sample = json.loads((ROOT / "sample" / "todos.json").read_text(encoding="utf-8"))
    assert len(sample) == 200
    assert out.read_bytes() == (ROOT / "datos.json").read_bytes()
    assert json.loads(out.read_text(encoding="utf-8")) == prefectflow.transform_records(sample)


@has_dot
def test_visualize_writes_a_png_and_nothing_else(tmp_path):
    for neighbour in ("flow", "flow.gv"):
        (tmp_path / neighbour).write_text("mine")
    result = cli("--visualize", tmp_path / "flow.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow", "flow.gv", "flow.png"]
    assert (tmp_path / "flow").read_text() == (tmp_path / "flow.gv").read_text() == "mine"


@has_dot
def test_visualize_after_a_run_colours_the_tasks_by_state(source, tmp_path):
    url = source.add("/todos", ok())
    result = cli("--once", "--url", url, "--visualize", tmp_path / "flow.svg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    svg = (tmp_path / "flow.svg").read_text()
    assert svg.count('fill="#28a745"') == 4  # Success green, once per task


def test_visualize_dot_needs_no_graphviz(tmp_path):
    result = cli("--visualize", tmp_path / "flow.dot", env={"PATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    dot = (tmp_path / "flow.dot").read_text()
    assert dot.startswith("digraph {")
    for name in ("parametro_url", "extract", "transform", "load"):
        assert f"label={name}" in dot
    assert dot.count("->") == 3


def test_visualize_without_dot_says_what_to_install(tmp_path):
    result = cli("--visualize", tmp_path / "flow.png", env={"PATH": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr == (
        "prefectflow.py: error: graphviz's `dot` program is missing; install it "
        "(apt-get install graphviz, brew install graphviz) or use a .dot path\n")
    assert not (tmp_path / "flow.png").exists()


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
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_usage_exits_2(args, message, capsys):
    with pytest.raises(SystemExit) as exited:
        prefectflow.main(args)
    assert exited.value.code == 2
    assert last_line(capsys.readouterr().err) == f"prefectflow.py: error: {message}"


def test_bad_usage_in_a_subprocess_exits_2_and_runs_nothing(tmp_path):
    result = cli("--once", "--runs", "2", cwd=tmp_path)
    assert result.returncode == 2
    assert last_line(result.stderr) == "prefectflow.py: error: --once and --runs cannot be used together"
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


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
