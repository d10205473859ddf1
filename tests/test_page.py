"""etl.page: the status page's HTML: escaped, self-contained, reloading; the diagram drawn once per run."""
import re
import shutil

import pytest
from prefect.engine.state import Success
from test_status import summary

import prefectflow
from etl.page import Diagram, render

HEALTH = {"status": "degraded", "last_success": None, "next_run": "2026-01-01T00:00:05+00:00",
          "stale_after": 360.0, "started": "2026-01-01T00:00:00+00:00", "last_run": None}


def test_the_page_escapes_every_value_and_needs_no_other_file():
    run = {**summary(0, 'load failed: cannot write <b>"x" & y</b>.json'),
           "urls": ["http://127.0.0.1:1/todos?token=***&q=<script>"]}
    page = render(200, HEALTH, [run], "<svg></svg>", 5)
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "load failed: cannot write &lt;b&gt;&quot;x&quot; &amp; y&lt;/b&gt;.json" in page
    assert "http://127.0.0.1:1/todos?token=***&amp;q=&lt;script&gt;" in page
    assert "<script" not in page and "<b>" not in page
    assert re.findall(r'(?:src|href)="([^"]*)"', page) == ["data:,", "healthz", "metrics"]
    assert ("<tr><td>2026-01-01 00:00:00 UTC</td><td class=\"bad\">Failed</td><td class=\"num\">0</td><td></td>"
            "<td class=\"num\">1</td><td class=\"num\">1.000 s</td><td>load failed") in page
    assert "<tr><th>Last success</th><td>none since the service started</td></tr>" in page
    assert "<tr><th>Next run</th><td>2026-01-01 00:00:05 UTC</td></tr>" in page


def test_a_page_before_any_run_and_with_history_lines_of_any_shape():
    assert '<tr><td colspan="7">No runs yet.</td></tr>' in render(200, HEALTH, [], "", 5)
    page = render(503, {**HEALTH, "status": "stale"}, [{"state": "Success", "started": "yesterday"}, {}], "", 60)
    assert "<tr><td>yesterday</td><td class=\"good\">Success</td><td class=\"num\"></td><td></td>" in page


def test_the_records_of_an_unchanged_run_are_what_the_output_holds_and_it_says_unchanged():
    runs = [{**summary(10), "records": 3, "changed": False}, summary(0)]
    page = render(200, HEALTH, runs, "", 5)
    assert ('<td class="good">Success</td><td class="num">3</td><td>unchanged</td>'
            '<td class="num">1</td>') in page
    assert ('<td class="good">Success</td><td class="num">3</td><td>replaced</td>'
            '<td class="num">1</td>') in page


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs graphviz's dot program")
def test_the_diagram_is_inline_svg_drawn_again_only_after_a_run():
    diagram = Diagram(prefectflow.flow)
    plain = diagram.svg(0, None)
    assert plain.startswith("<svg") and plain.count("<g id=\"node") == 4 and "#28a745" not in plain
    titles = re.findall(r"<title>([^<]*)</title>", plain)
    assert sorted(t for t in titles if "&#45;&gt;" not in t and t != "%3") == [  # task names, not heap addresses
        "extract", "load", "parametro_url", "transform"]
    assert not any(re.search(r"[0-9]{5,}", t) for t in titles)
    assert not any(str(id(task)) in plain for task in prefectflow.flow.tasks)
    assert diagram.svg(0, Success(result={})) is plain  # the same run: not drawn again
    flow_state = Success(result={task: Success() for task in prefectflow.flow.tasks})
    assert diagram.svg(1, flow_state).count('fill="#28a745"') == 4


def test_without_dot_the_page_says_what_the_diagram_needs(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert Diagram(prefectflow.flow).svg(0, None) == "<p>(Drawing the flow needs Graphviz's <code>dot</code> program.)</p>"


BAD_RUNS = [  # --history lines the page once failed on, and others of their kind
    {"urls": [1]},
    {"urls": "http://a/", "started": "2026-01-01T00:00:00", "finished": "2026-01-01T00:00:01+00:00"},
    {"started": "0001-01-01T00:00:00+05:00", "finished": "9999-12-31T23:59:59-05:00"},
    {"state": "\ud800", "error": "lone \udcff surrogate", "records": {"a": [1]}, "attempts": 1e308 * 10},
    {"started": 20260101, "finished": None, "state": ["Success"], "urls": {"x": 1}},
]


def test_history_lines_of_any_shape_show_as_text():
    page = render(200, HEALTH, BAD_RUNS, "", 5)
    assert "<tr><th>Sources</th><td>1</td></tr>" in page
    assert ('<tr><td>2026-01-01T00:00:00</td><td class="bad"></td><td class="num"></td><td></td><td class="num"></td>'
            '<td class="num"></td><td></td></tr>') in page  # a naive time as it is, no duration
    assert '<tr><td>0001-01-01T00:00:00+05:00</td><td class="bad">' in page
    assert ("<td class=\"bad\">\ud800</td><td class=\"num\">{&#x27;a&#x27;: [1]}</td><td></td><td class=\"num\">inf</td>"
            "<td class=\"num\"></td><td>lone \udcff surrogate</td>") in page
    assert '<tr><td>20260101</td><td class="bad">[&#x27;Success&#x27;]</td>' in page
