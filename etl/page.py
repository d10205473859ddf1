"""The status page: health, the last runs and the flow's diagram in one HTML page that needs no
JavaScript and no other file, and reloads itself."""
import datetime
import html
import threading
from typing import List, Optional

from prefect import Flow
from prefect.engine.state import State

from etl.diagram import draw

STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1em; }
th, td { text-align: left; padding: 0.2em 0.8em 0.2em 0; vertical-align: top; }
.runs td, .runs th { border-bottom: 1px solid #ddd; }
.num { text-align: right; }
.good { color: #1a7f37; } .bad { color: #c62828; } .wait { color: #9a6700; }
svg { max-width: 100%; height: auto; }
"""
TONE = {"ok": "good", "Success": "good", "starting": "wait", "degraded": "wait"}  # anything else: bad


class Diagram:
    """The flow as inline SVG, coloured by the last run's states; drawn again only after a run."""

    def __init__(self, flow: Flow):
        self.flow = flow
        self.lock = threading.Lock()  # one drawing at a time; page loads meanwhile wait for it
        self.drawn: tuple = (None, "")  # (how many runs had finished, the SVG)

    def svg(self, runs: int, states: Optional[State]) -> str:
        with self.lock:
            if self.drawn[0] != runs:
                self.drawn = (runs, _svg(self.flow, states))
            return self.drawn[1]


def _svg(flow: Flow, states: Optional[State]) -> str:
    import graphviz

    try:
        svg = draw(flow, "svg", states).decode("utf-8")
    except (graphviz.ExecutableNotFound, graphviz.CalledProcessError):
        return "<p>(Drawing the flow needs Graphviz's <code>dot</code> program.)</p>"
    # Prefect names each node after id(task), a heap address: the page shows the task's name instead.
    for task in sorted(flow.tasks, key=lambda task: len(str(id(task))), reverse=True):
        svg = svg.replace(str(id(task)), html.escape(task.name))
    return svg[svg.index("<svg"):]  # inline: without the XML declaration and doctype


def render(code: int, health: dict, runs: List[dict], svg: str, refresh: int) -> str:
    """The page; every value in it is escaped, the URLs were masked before they got here. The runs
    may come from --history lines of any shape: what is not what it should be shows as text."""
    status = health["status"]
    sources = _list(runs[0].get("urls")) if runs else ""
    output = runs[0].get("output", "") if runs else ""
    rows = "\n".join(_row(run) for run in runs) or '<tr><td colspan="7">No runs yet.</td></tr>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<link rel="icon" href="data:,">
<title>prefectflow: {_e(status)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>prefectflow: <span class="{_tone(status)}">{_e(status)}</span></h1>
<table>
<tr><th>Health</th><td>{_e(status)} (HTTP {code}; 503 after {health["stale_after"]:g} s without a successful run)</td></tr>
<tr><th>Last success</th><td>{_e(_when(health["last_success"]) or "none since the service started")}</td></tr>
<tr><th>Next run</th><td>{_e(_when(health["next_run"]) or "not scheduled")}</td></tr>
<tr><th>Sources</th><td>{_e(sources)}</td></tr>
<tr><th>Output</th><td>{_e(output)}</td></tr>
</table>
<h2>The flow, coloured by the last run</h2>
{svg}
<h2>The last {len(runs)} runs, newest first</h2>
<table class="runs">
<tr><th>Start</th><th>State</th><th class="num">Records</th><th>Output</th><th class="num">Attempts</th><th class="num">Duration</th><th>Error</th></tr>
{rows}
</table>
<p>This page reloads every {refresh} s. Also: <a href="healthz">healthz</a>, <a href="metrics">metrics</a>.</p>
</body>
</html>
"""


def _row(run: dict) -> str:
    state = str(run.get("state", ""))
    return (f'<tr><td>{_e(_when(run.get("started")))}</td><td class="{_tone(state)}">{_e(state)}</td>'
            f'<td class="num">{_e(run.get("records", ""))}</td><td>{_e(_output(run))}</td>'
            f'<td class="num">{_e(run.get("attempts", ""))}</td>'
            f'<td class="num">{_e(_duration(run))}</td><td>{_e(run.get("error", ""))}</td></tr>')


def _output(run: dict) -> str:
    """What a successful run did to the output: replaced it, or left it as it was."""
    if run.get("state") != "Success" or "changed" not in run:
        return ""
    return "replaced" if run["changed"] else "unchanged"


def _e(value: object) -> str:
    return html.escape(str(value))


def _tone(status: str) -> str:
    return TONE.get(status, "bad")


def _list(values: object) -> str:
    return ", ".join(map(str, values)) if isinstance(values, list) else "" if values is None else str(values)


def _when(value: object) -> str:
    """An ISO 8601 time with its offset as UTC to the second; anything else as it is."""
    try:
        when = datetime.datetime.fromisoformat(value)
        if when.tzinfo is None:
            raise ValueError("no UTC offset")
        return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError):  # not text, not a time, out of range once in UTC
        return "" if value is None else str(value)


def _duration(run: dict) -> str:
    try:
        started, finished = (datetime.datetime.fromisoformat(run[key]) for key in ("started", "finished"))
        return f"{(finished - started).total_seconds():.3f} s"
    except (KeyError, TypeError, ValueError, OverflowError):  # a naive time beside an aware one: TypeError
        return ""
