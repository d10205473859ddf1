"""prefectflow: a fault-tolerant Prefect 1 ETL flow.

extract GETs a JSON list of todos, transform renames their keys, load writes
them to datos.json atomically. `python prefectflow.py --help` lists the options.
"""
from __future__ import annotations  # keeps the TypedDicts out of what Dask pickles

import argparse
import contextlib
import datetime
import functools
import gc
import http.server
import itertools
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from concurrent.futures import ThreadPoolExecutor
from operator import itemgetter
from pathlib import Path
from typing import Iterable, Iterator, List, TypedDict

import pendulum
import prefect
import requests
import urllib3
from prefect import Flow, Parameter, task, unmapped
from prefect.executors import DaskExecutor, LocalDaskExecutor, LocalExecutor
from prefect.schedules import IntervalSchedule

# The public API: https://jsonplaceholder.typicode.com/guide/ (same data, the report's mirror)
API_URL = "https://jsonplaceholder.cypress.io/todos"
OUTPUT = "datos.json"
INTERVAL = 120.0  # seconds between scheduled runs
RETRIES = 10
RETRY_DELAY = 10.0  # seconds
TIMEOUT = 10.0  # seconds to connect, and at most between two reads of the body
DEADLINE = 600.0  # seconds for a whole response: 100 MiB at 1.4 Mbit/s
MAX_BYTES = 100 * 2**20
MAX_THREADS = 32  # default cap on threads that fetch several sources at once
SAMPLE = Path(__file__).with_name("sample") / "todos.json"

# Source field -> output key, in output order; and each source field's JSON type.
# transform_records and the writer spell these keys out, for speed.
RENAME = {"userId": "UsuarioID", "id": "ID", "title": "Titulo", "completed": "Completado"}
FIELD_TYPES = {"userId": int, "id": int, "title": str, "completed": bool}

# Exit statuses; bad usage exits 2 (argparse) and a signal 128 + its number.
EXIT_OK, EXIT_FAILED = 0, 1

log = prefect.utilities.logging.get_logger("prefectflow")


class Todo(TypedDict):
    userId: int
    id: int
    title: str
    completed: bool


Record = TypedDict(
    "Record", {"UsuarioID": int, "ID": int, "Titulo": str, "Completado": bool}
)


class SourceError(Exception):
    """The source did not answer with a JSON document; worth retrying."""


class PayloadError(Exception):
    """The source answered JSON of the wrong shape; retrying will not help."""


class SinkError(Exception):
    """The output could not be written."""


# The failures we explain ourselves, in one line.
OUR_ERRORS = (SourceError, PayloadError, SinkError)


# Pure functions ---------------------------------------------------------------

def _all_todos(items: list) -> bool:
    """Whether every item is a dict whose fields have exactly the FIELD_TYPES (checked at C speed)."""
    try:
        return set(map(type, items)) <= {dict} and all(
            set(map(type, map(itemgetter(field), items))) <= {kind} for field, kind in FIELD_TYPES.items())
    except KeyError:
        return False


def validate(payload: object, allow_empty: bool = False) -> List[Todo]:
    """The payload itself, once it is known to be a non-empty list of todos."""
    if type(payload) is not list:
        raise PayloadError(f"expected a JSON list, got {_json_type(payload)}")
    if not payload and not allow_empty:
        raise PayloadError("source returned an empty list (--allow-empty accepts it)")
    if not _all_todos(payload):
        index, problem = next((i, p) for i, todo in enumerate(payload) if (p := _todo_problem(todo)))
        raise PayloadError(f"record at index {index}: {problem}")
    return payload


def _todo_problem(todo: object) -> str:
    if type(todo) is not dict:
        return f"expected an object, got {_json_type(todo)}"
    for field, kind in FIELD_TYPES.items():
        if field not in todo:
            return f"missing field {field!r}"
        if type(todo[field]) is not kind:
            return f"field {field!r} must be {_json_type(kind())}, got {_json_type(todo[field])}"
    return ""


def _json_type(value: object) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"),
                       (str, "string"), (list, "list"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return "null"


_source_fields = itemgetter(*FIELD_TYPES)


def transform_records(todos: Iterable[Todo]) -> List[Record]:
    """Each todo with its keys renamed, in output order."""
    return [
        {"UsuarioID": user, "ID": id_, "Titulo": title, "Completado": done}
        for user, id_, title, done in map(_source_fields, todos)
    ]


def concat_records(parts: Iterable[list]) -> list:
    """The lists joined in the order given."""
    return list(itertools.chain.from_iterable(parts))


_encode_str = json.encoder.encode_basestring  # what json.dump uses with ensure_ascii=False
_RECORD_KEYS = tuple(RENAME.values())
# Records formatted, or renamed by the transform task, at a time: about 250 KB of text. At 8192,
# each batch's text got fresh memory from the kernel (mmap) and the writer took 0.3 s longer.
_BATCH = 2048


class _NotPlain(Exception):
    pass


def _not_plain():
    raise _NotPlain


def _encode_batch(records: list) -> str:
    """The records as json.dump(indent=4) writes them inside a list, without the brackets."""
    try:
        # Plain records (exact dicts of int, int, str and bool, in output order): formatted
        # directly, checks and all in one pass; several times faster than json.
        return ",\n".join([
            f'    {{\n        "UsuarioID": {user},\n        "ID": {id_},\n        "Titulo": {_encode_str(title)},'
            f'\n        "Completado": {"true" if done is True else "false" if done is False else _not_plain()}\n    }}'
            if type(record) is dict and tuple(record) == _RECORD_KEYS and type(user) is int and type(id_) is int
            else _not_plain()
            for record in records
            for user, id_, title, done in (record.values(),)
        ])
    except (_NotPlain, AttributeError, TypeError, ValueError):
        # Anything else: json's own encoder, each record indented one level deeper.
        return ",\n".join(
            "    " + json.dumps(record, indent=4, ensure_ascii=False).replace("\n", "\n    ") for record in records
        )


def encode_records(records: list) -> Iterator[str]:
    """The text of json.dump(records, indent=4, ensure_ascii=False), in chunks."""
    if not records:
        yield "[]"
        return
    separator = "[\n"
    for start in range(0, len(records), _BATCH):
        yield separator + _encode_batch(records[start:start + _BATCH])
        separator = ",\n"
    yield "\n]"


def mask_url(url: str) -> str:
    """The URL with any password and token-like query values replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(":" + parts.password + "@", ":***@", 1)
    query = re.sub(
        r"(^|&)([^=&]*(?:token|key|secret|pass|auth|sig)[^=&]*)=[^&]*",
        r"\1\2=***", parts.query, flags=re.IGNORECASE,
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


# I/O ---------------------------------------------------------------------------


def fetch_json(url: str, timeout: float, deadline: float, max_bytes: int) -> object:
    """The JSON document at url; SourceError names the url and the cause."""
    where = mask_url(url)
    logger = prefect.context.get("logger", log)
    attempt = prefect.context.get("task_run_count", 1)
    started = time.monotonic()
    try:
        payload, status, size = _get_json(url, where, timeout, deadline, max_bytes)
    except SourceError as exc:
        logger.warning("Attempt %d failed after %.3f s: %s", attempt, time.monotonic() - started, exc)
        raise
    records = len(payload) if isinstance(payload, list) else "no"
    logger.info("GET %s: HTTP %d, %d bytes, %s records in %.3f s (attempt %d)",
                where, status, size, records, time.monotonic() - started, attempt)
    return payload


def _get_json(url, where, timeout, deadline, max_bytes):
    try:
        text, status, size = _get_text(url, where, timeout, deadline, max_bytes)
        return json.loads(text), status, size
    except ValueError as exc:  # UnicodeDecodeError included
        raise SourceError(f"{where} sent a body that is not valid JSON ({exc})") from None


def _get_text(url, where, timeout, deadline, max_bytes):
    """The body as text. It arrives in one growing buffer, which is gone before the text is parsed."""
    started = time.monotonic()
    body = bytearray()
    try:
        with requests.get(url, timeout=timeout, stream=True) as response:
            if not response.ok:
                raise SourceError(f"{where} answered HTTP {response.status_code} {response.reason}")
            # read1 returns whatever has arrived, so the deadline holds against a trickle.
            while chunk := response.raw.read1(1 << 20, decode_content=True):
                body += chunk
                if len(body) > max_bytes:
                    raise SourceError(f"{where} sent more than --max-bytes {max_bytes} bytes")
                if time.monotonic() - started > deadline:
                    raise SourceError(f"{where} did not finish within --deadline {deadline:g} s")
    except (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError):
        raise SourceError(f"{where} did not answer within --timeout {timeout:g} s") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise SourceError(f"{where} could not be read: {_root_cause(exc)}") from None
    return body.decode("utf-8-sig"), response.status_code, len(body)


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's message: 'Connection refused', not urllib3's wrapping."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def write_json(records: list, path: str) -> None:
    """Replace path with records as JSON, atomically: the old file or the new one, never a mix."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except FileExistsError:
        raise SinkError(f"cannot write {path}: {folder} is a file, not a folder") from None
    except OSError as exc:
        raise SinkError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with open(fd, "w", encoding="utf-8") as out:
            out.writelines(encode_records(records))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):  # a signal can land just after the replace
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise SinkError(f"cannot write {path}: {exc.strerror}") from None
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# Tasks -------------------------------------------------------------------------


def _keep_attempts(task, old_state, new_state):
    """Record on the final state how many times the task ran, for the run summary."""
    if new_state.is_finished():
        new_state.context["attempts"] = prefect.context.get("task_run_count", 1)
    return new_state


@task(
    max_retries=RETRIES,
    retry_delay=datetime.timedelta(seconds=RETRY_DELAY),
    retry_on=SourceError,
    state_handlers=[_keep_attempts],
)
def extract(url, timeout=TIMEOUT, deadline=DEADLINE, max_bytes=MAX_BYTES, allow_empty=False) -> List[Todo]:
    """The todos at url (a list of urls: all of them, fetched at once, in that order)."""
    get = functools.partial(_extract_one, timeout=timeout, deadline=deadline,
                            max_bytes=max_bytes, allow_empty=allow_empty)
    if isinstance(url, str):
        return get(url)
    with ThreadPoolExecutor(min(len(url), MAX_THREADS) or 1) as pool:
        return concat_records(pool.map(get, url))


def _extract_one(url, timeout, deadline, max_bytes, allow_empty) -> List[Todo]:
    try:
        return validate(fetch_json(url, timeout, deadline, max_bytes), allow_empty)
    except PayloadError as exc:
        raise PayloadError(f"{mask_url(url)}: {exc}") from None


# transform and concat take over the lists they are given and leave them empty: Prefect keeps
# every task's result until the run ends, so otherwise a million todos would stay in memory
# beside their records. A run is over once a task fails, and neither task is retried.


@task
def transform(records: List[Todo]) -> List[Record]:
    """The todos with their keys renamed; `records` is left empty, each todo freed once renamed."""
    renamed = []
    while records:  # a batch at a time from the end, where removing one moves nothing
        batch = records[-_BATCH:]
        del records[-_BATCH:]
        renamed.append(transform_records(batch))
    return concat_records(reversed(renamed))


@task
def concat(parts: List[List[Todo]]) -> List[Todo]:
    """The sources' todos, in the order the sources were given; `parts` are left empty."""
    joined = concat_records(parts)
    for part in parts:
        part.clear()
    return joined


@task
def load(records: List[Record], path: str = OUTPUT) -> int:
    """How many records were written to path."""
    write_json(records, path)
    prefect.context.get("logger", log).info("Wrote %d records to %s", len(records), path)
    return len(records)


def build_flow(
    retries: int = RETRIES,
    retry_delay: float = RETRY_DELAY,
    timeout: float = TIMEOUT,
    deadline: float = DEADLINE,
    max_bytes: int = MAX_BYTES,
    output: str = OUTPUT,
    interval: float = INTERVAL,
    start_date: datetime.datetime = None,
    allow_empty: bool = False,
    mapped: bool = False,
) -> Flow:
    """etl_flow: parametro_url -> extract -> transform -> load, every `interval` seconds.

    mapped=True fetches a list of urls with extract.map (each with its own retries)
    and joins them in a concat task before transform.
    """
    fetch = extract.copy(
        max_retries=retries,
        retry_delay=datetime.timedelta(seconds=retry_delay) if retries else None,
    )
    settings = dict(timeout=timeout, deadline=deadline, max_bytes=max_bytes, allow_empty=allow_empty)
    schedule = IntervalSchedule(interval=datetime.timedelta(seconds=interval), start_date=start_date)
    with Flow("etl_flow", schedule=schedule) as flow:
        url = Parameter("parametro_url", required=True)
        if mapped:
            todos = concat(fetch.map(url, **{k: unmapped(v) for k, v in settings.items()}))
        else:
            todos = fetch(url, **settings)
        load(transform(todos), output)
    return flow


flow = build_flow()


# Running -----------------------------------------------------------------------


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


@contextlib.contextmanager
def no_gc():
    """Pause the cycle collector: over large acyclic data it only costs time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_once(flow: Flow, urls: List[str], executor=None, scheduled=None):
    """Run the flow once now; a summary of the run (see --history) and the flow's state."""
    started = pendulum.now("utc")
    param = urls[0] if len(urls) == 1 and not _is_mapped(flow) else urls
    with no_gc():  # a run's data is freed by reference counting; collect after it, not during
        state = flow.run(parameters={"parametro_url": param}, run_on_schedule=False,
                         executor=executor or LocalExecutor())
    finished = pendulum.now("utc")
    summary = {
        "scheduled": (scheduled or started).isoformat(),
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "state": "Success" if state.is_successful() else "Failed",
        "records": sum(s.result for s in _task_states(flow, state, "load")) if state.is_successful() else 0,
        "attempts": sum(s.context.get("attempts", 0) for s in _task_states(flow, state, "extract")),
        "urls": [mask_url(u) for u in urls],
    }
    if not state.is_successful():
        summary["error"] = _error(flow, state)
    log.info("Run started %s (scheduled %s): %s, %d records written, %d extract attempts, %.3f s",
             summary["started"], summary["scheduled"], summary["state"], summary["records"],
             summary["attempts"], (finished - started).total_seconds())
    return summary, state


def _is_mapped(flow: Flow) -> bool:
    return bool(flow.get_tasks(name="concat"))


def _task_states(flow: Flow, state, name: str) -> list:
    """The final states of the task called name (of each child, if mapped); none if the run broke."""
    task_state = state.result.get(flow.get_tasks(name=name)[0]) if isinstance(state.result, dict) else None
    if task_state is None:
        return []
    return task_state.map_states if task_state.is_mapped() else [task_state]


def _error(flow: Flow, state) -> str:
    """One line: which task failed and why."""
    for task in flow.sorted_tasks():
        for child in _task_states(flow, state, task.name):
            if child.is_failed() and isinstance(child.result, Exception):
                exc = child.result
                attempts = child.context.get("attempts", 1)
                tries = f" after {attempts} attempts" if attempts > 1 else ""
                why = str(exc) if isinstance(exc, OUR_ERRORS) else f"{type(exc).__name__}: {exc}"
                return f"{task.name} failed{tries}: {why}"
    return f"the flow run failed: {state.message}"


def serve(flow: Flow, urls: List[str], runs: int = 0, history: str = None, executor=None) -> int:
    """Run on the flow's schedule until stopped, or `runs` runs; the exit status of the last run."""
    schedule = flow.schedule
    slot = schedule.next(1, after=pendulum.now("utc").subtract(seconds=1))[0]
    done = 0
    while True:
        wait = (slot - pendulum.now("utc")).total_seconds()
        if wait > 0:
            log.info("Waiting for next scheduled run at %s", slot)
            time.sleep(wait)
        summary, _ = run_once(flow, urls, executor, scheduled=slot)
        _record(history, summary)
        if "error" in summary:
            log.error("Run failed: %s", summary["error"])
        done += 1
        if done == runs:
            return EXIT_OK if "error" not in summary else EXIT_FAILED
        following = schedule.next(1, after=slot)[0]
        slot = schedule.next(1, after=pendulum.now("utc"))[0]
        if slot > following:
            missed = round((slot - following).total_seconds() / schedule.clocks[0].interval.total_seconds())
            log.warning("The run took longer than the interval: skipping %d missed slot(s)", missed)


def append_line(path: str, record: dict) -> None:
    """Append record to a JSON Lines file in a single write, so a crash cannot leave half a line."""
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _record(history: str, summary: dict) -> None:
    """Append the run's summary to the history file, if any; a failure there does not fail the run."""
    if history:
        try:
            append_line(history, summary)
        except OSError as exc:
            log.error("Cannot append to --history %s: %s", history, exc.strerror)


def write_diagram(flow: Flow, path: str, flow_state=None) -> None:
    """Draw the flow to path; the format comes from its extension (.dot and .gv: DOT source)."""
    import graphviz

    graphs = []
    render = graphviz.Digraph.render
    # Flow.visualize hands its graph only to render(); keep it instead, to write it ourselves.
    graphviz.Digraph.render = lambda graph, *args, **kwargs: graphs.append(graph)
    try:
        flow.visualize(flow_state=flow_state, filename=path)
    finally:
        graphviz.Digraph.render = render
    graph = graphs[0]
    fmt = path.rsplit(".", 1)[-1].lower()
    if fmt in ("dot", "gv"):
        Path(path).write_text(graph.source, encoding="utf-8")
    else:
        Path(path).write_bytes(graph.pipe(format=fmt))  # pipe: no source file left beside it


class DemoHandler(http.server.BaseHTTPRequestHandler):
    """Serves the bundled sample at any path; the first request gets 503, to show a retry."""

    requests_seen = 0

    def do_GET(self):
        type(self).requests_seen += 1
        body = SAMPLE.read_bytes()
        status = 503 if type(self).requests_seen == 1 else 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if status == 200 else 0))
        self.end_headers()
        if status == 200:
            self.wfile.write(body)

    def log_message(self, format, *args):
        log.debug("demo server: " + format, *args)


def start_demo_server() -> http.server.HTTPServer:
    """A loopback server for --demo, on a free port, in a daemon thread."""
    handler = type("Handler", (DemoHandler,), {"requests_seen": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# Command line ------------------------------------------------------------------


def _one_line(record: logging.LogRecord) -> bool:
    """Without --debug: tracebacks become one line; failures of ours already logged are dropped."""
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        if isinstance(exc, OUR_ERRORS):
            return False
        record.msg = f"{record.getMessage()} {type(exc).__name__}: {exc}"
        record.args, record.exc_info, record.exc_text = (), None, None
    return True


def setup_logging(debug: bool, quiet: bool) -> None:
    root = prefect.utilities.logging.get_logger()
    root.setLevel(logging.DEBUG if debug else logging.ERROR if quiet else logging.INFO)
    for handler in root.handlers:
        handler.removeFilter(_one_line)
        if not debug:
            handler.addFilter(_one_line)


def _number(kind, low, above=False):
    """An argparse type: a kind of number, at least low (above=True: greater than low)."""
    def parse(text):
        value = kind(text)
        if value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"must be {'greater than' if above else 'at least'} {low}: {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="prefectflow.py",
        description="Fetch todos, rename their keys, write them to a JSON file; "
                    "every --interval seconds until stopped, or once.",
        epilog="Exit status: 0 success, 1 the run failed, 2 bad usage, 130 SIGINT, 143 SIGTERM.",
    )
    add = parser.add_argument
    add("--url", action="append", metavar="URL",
        help=f"source of the todos; repeat to fetch several in parallel (default: {API_URL})")
    add("--output", default=OUTPUT, metavar="PATH", help="file to write (default: %(default)s)")
    add("--once", action="store_true", help="run once now instead of on the schedule")
    add("--demo", action="store_true",
        help="run once, offline, on the bundled sample served from 127.0.0.1 (its first answer is 503)")
    add("--interval", type=_number(float, 1), metavar="SECONDS",
        help=f"time between scheduled runs, at least 1 (default: {INTERVAL:g})")
    add("--runs", type=_number(int, 0, above=True), metavar="N",
        help="stop after N scheduled runs (default: never)")
    add("--history", metavar="PATH", help="append a JSON line per run to this file")
    add("--retries", type=_number(int, 0), default=RETRIES, metavar="N",
        help="retries of a failed fetch, per source (default: %(default)s)")
    add("--retry-delay", type=_number(float, 0), metavar="SECONDS",
        help=f"wait between retries (default: {RETRY_DELAY:g}; 1 with --demo)")
    add("--timeout", type=_number(float, 0, above=True), default=TIMEOUT, metavar="SECONDS",
        help="limit to connect, and between two reads of the body (default: %(default)g)")
    add("--deadline", type=_number(float, 0, above=True), default=DEADLINE, metavar="SECONDS",
        help="limit for a whole response (default: %(default)g)")
    add("--max-bytes", type=_number(int, 0, above=True), default=MAX_BYTES, metavar="N",
        help="largest body accepted, in bytes (default: %(default)s, 100 MiB)")
    add("--allow-empty", action="store_true", help="let an empty list replace the output")
    add("--executor", choices=["local", "threads", "processes", "dask"],
        help="how tasks run (default: local for one source, threads for several)")
    add("--workers", type=_number(int, 0, above=True), metavar="N",
        help=f"threads or processes (default: one per source, at most {MAX_THREADS}); "
             "with --executor dask, worker processes of the local cluster (default: one per core)")
    add("--dask-address", metavar="tcp://HOST:PORT", help="run on this Dask cluster (implies --executor dask)")
    add("--visualize", metavar="PATH",
        help="draw the flow to PATH (.png, .svg, .pdf; .dot or .gv for the DOT source) and exit; "
             "with --once or --demo, draw it after the run, coloured by state")
    add("--debug", action="store_true", help="log everything, with tracebacks")
    add("-q", "--quiet", action="store_true", help="log errors only")
    args = parser.parse_args(argv)

    def conflict(*names):
        parser.error(f"{' and '.join(names)} cannot be used together")

    once = args.once or args.demo
    if args.demo and args.url:
        conflict("--demo", "--url")
    if once and args.runs:
        conflict("--once" if args.once else "--demo", "--runs")
    if once and args.interval is not None:
        conflict("--once" if args.once else "--demo", "--interval")
    if args.debug and args.quiet:
        conflict("--debug", "--quiet")
    if args.dask_address:
        if args.executor not in (None, "dask"):
            conflict("--dask-address", f"--executor {args.executor}")
        args.executor = "dask"
        if args.workers:
            conflict("--dask-address", "--workers")
    if args.workers and args.executor == "local":
        conflict("--workers", "--executor local")
    if args.workers and args.executor is None:
        args.executor = "threads"
    if args.visualize and not once and (args.runs or args.history):
        conflict("--visualize", "--runs" if args.runs else "--history")
    if args.visualize and not args.visualize.lower().endswith((".png", ".svg", ".pdf", ".dot", ".gv")):
        parser.error(f"--visualize: unknown format {args.visualize!r}; use .png, .svg, .pdf, .dot or .gv")
    if args.interval is None:
        args.interval = INTERVAL
    if args.retry_delay is None:
        args.retry_delay = 1.0 if args.demo else RETRY_DELAY
    args.urls = args.url or [API_URL]
    return args


def make_executor(args):
    """The Prefect executor the options ask for."""
    sources = min(len(args.urls), MAX_THREADS)
    if args.executor == "dask":
        # Dask's "already contains a plugin" warning on each start is harmless.
        warnings.filterwarnings("ignore", message="Scheduler already contains a plugin")
        if args.dask_address:
            return DaskExecutor(address=args.dask_address)
        workers = args.workers or os.cpu_count() or 1
        return DaskExecutor(cluster_kwargs={
            "n_workers": workers, "threads_per_worker": -(-sources // workers), "dashboard_address": None})
    if args.executor in ("threads", "processes") or (args.executor is None and len(args.urls) > 1):
        return LocalDaskExecutor(scheduler=args.executor or "threads", num_workers=args.workers or sources)
    return LocalExecutor()


def main(argv=None) -> int:
    """The command line; returns the exit status."""
    args = parse_args(argv)
    setup_logging(args.debug, args.quiet)
    once = args.once or args.demo
    if args.history:
        try:
            open(args.history, "a").close()
        except OSError as exc:
            print(f"prefectflow.py: error: cannot write --history {args.history}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILED
    flow = build_flow(
        retries=args.retries, retry_delay=args.retry_delay, timeout=args.timeout,
        deadline=args.deadline, max_bytes=args.max_bytes, output=args.output,
        interval=args.interval, start_date=pendulum.now("utc"),
        allow_empty=args.allow_empty, mapped=len(args.urls) > 1,
    )
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.visualize and not once:
            return _draw(flow, args.visualize)
        if args.demo:
            server = start_demo_server()
            args.urls = [f"http://127.0.0.1:{server.server_address[1]}/todos"]
        if once:
            summary, state = run_once(flow, args.urls, make_executor(args))
            _record(args.history, summary)
            status = EXIT_OK if "error" not in summary else EXIT_FAILED
            if "error" in summary:
                print(f"prefectflow.py: error: {summary['error']}", file=sys.stderr)
            if args.visualize:
                status = max(status, _draw(flow, args.visualize, state))
            return status
        return serve(flow, args.urls, args.runs, args.history, make_executor(args))
    except Stopped as stop:
        print(f"prefectflow.py: stopped by {stop}", file=sys.stderr)
        return 128 + stop.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _draw(flow: Flow, path: str, state=None) -> int:
    import graphviz

    try:
        write_diagram(flow, path, state)
    except graphviz.ExecutableNotFound:
        print("prefectflow.py: error: graphviz's `dot` program is missing; install it "
              "(apt-get install graphviz, brew install graphviz) or use a .dot path", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"prefectflow.py: error: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    log.info("Wrote the flow diagram to %s", path)
    return EXIT_OK


if __name__ == "__main__":
    status = main()
    if status > 128:
        # Stopped by a signal: worker threads still blocked on a source would hold up the exit
        # for as long as --timeout; the output is the last good file either way.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
