"""The flow drawn by Graphviz, as Flow.visualize draws it: coloured by state after a run."""
import os
import tempfile
from pathlib import Path
from typing import Optional

from prefect import Flow
from prefect.engine.state import State

FORMATS = ("png", "svg", "pdf", "dot", "gv")  # .dot and .gv: the DOT source, which needs no dot program


def draw(flow: Flow, fmt: str, flow_state: Optional[State] = None) -> bytes:
    """The diagram in fmt. Raises graphviz.ExecutableNotFound without the dot program, but for DOT."""
    import graphviz  # only the diagram needs it

    with tempfile.TemporaryDirectory() as tmp:
        stem = os.path.join(tmp, "flow")
        if fmt in ("dot", "gv"):
            try:
                return flow.visualize(flow_state=flow_state, filename=stem, format="svg").source.encode()
            except graphviz.ExecutableNotFound:
                return Path(stem).read_bytes()  # render() saves the source before it looks for dot
        # Flow.visualize hands its graph to render(), which writes stem.fmt and removes the source.
        flow.visualize(flow_state=flow_state, filename=stem, format=fmt)
        return Path(f"{stem}.{fmt}").read_bytes()


def write_diagram(flow: Flow, path: str, flow_state: Optional[State] = None) -> None:
    """Draw the flow to path; the format comes from its extension."""
    Path(path).write_bytes(draw(flow, path.rsplit(".", 1)[-1].lower(), flow_state))
