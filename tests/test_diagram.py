"""etl.diagram: --visualize draws the flow with Graphviz; DOT source needs no dot program."""
import shutil

import pytest
from conftest import cli, ok

has_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="needs graphviz's dot program")


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
