"""prefectflow: the report's Prefect 1 ETL flow, etl_flow, made fault-tolerant.

extract GETs a JSON list of todos, transform renames their keys, load writes them to datos.json
atomically; every 2 minutes, or once. `python prefectflow.py --help` lists the options. The
machinery these tasks call lives in the etl package beside this file (docs/ARCHITECTURE.md).
"""
from __future__ import annotations  # keeps the TypedDicts out of what Dask pickles

import argparse
import contextlib
import datetime
import os
import socket
import sys
from typing import Iterator, List, Optional, Union

import pendulum
import prefect
from prefect import Flow, Parameter, task, unmapped
from prefect.engine.signals import LOOP


from etl import cli, database, demo, diagram, lock, pages, postgres, schedule, service, sink, sqlite, state
from etl.database import Table
from etl.errors import DatabaseDown, PayloadError, SinkError, SourceError, error, say
from etl.headers import Headers
from etl.records import BATCH, Record, Todo, concat_records, transform_records
from etl.settings import DEADLINE, INTERVAL, MAX_BYTES, MAX_PAGES, OUTPUT, RETRIES, RETRY_DELAY, TIMEOUT
from etl.source import mask_url
from etl.state import Fetched, carry

log = prefect.utilities.logging.get_logger("prefectflow")


def _keep_attempts(task, old_state, new_state):
    """Record on the final state how many times the task ran, for the run summary."""
    if new_state.is_finished():
        # After a LOOP, Prefect counts runs from 1 again: the pages read so far count them instead.
        progress = prefect.context.get("task_loop_result")
        runs = prefect.context.get("task_run_count", 1)
        new_state.context["attempts"] = progress.attempts(new_state.is_successful()) if progress else runs
    return new_state


def _keep_host(task, old_state, new_state):
    """Record on the final state where the task ran: on a cluster, another machine."""
    if new_state.is_finished():
        new_state.context["host"] = f"{socket.gethostname()} (pid {os.getpid()})"
    return new_state


@task(
    max_retries=RETRIES,
    retry_delay=datetime.timedelta(seconds=RETRY_DELAY),
    retry_on=SourceError,  # a payload of the wrong shape (PayloadError) or a bad URL (UrlError) fails at once
    state_handlers=[_keep_attempts],
)
def extract(url: Union[str, List[str]], timeout: float = TIMEOUT, deadline: float = DEADLINE,
            max_bytes: int = MAX_BYTES, allow_empty: bool = False, paginate: bool = False,
            max_pages: int = MAX_PAGES, headers: Optional[Headers] = None,
            output: Optional[str] = None, table: Optional[Table] = None) -> List[Todo]:
    """The todos at url (a list of urls: all of them, fetched at once, in that order), knowing the
    pages they came from. With output, each page is asked whether it changed since the run that
    wrote output (into table, for a database); one that did not (304) has its records there and
    none here."""
    urls = [url] if isinstance(url, str) else url
    _require_sources(urls)
    options = pages.Options(timeout, deadline, max_bytes, paginate, max_pages, headers)
    runs = prefect.context.get("task_run_count")  # None outside a flow run
    progress = prefect.context.get("task_loop_result") or pages.start(urls, output, (runs or 1) - 1, table)
    with prefect.context(url=mask_url(url) if isinstance(url, str) else None):  # in the log's JSON lines
        while progress.advance(options):
            if runs:  # each page a LOOP: a retry goes on from the page that failed
                raise LOOP(result=progress, message=f"{sum(len(w.pages) for w in progress.walks)} pages read")
        fetched = [walk.fetched(allow_empty) for walk in progress.walks]
    return fetched[0] if len(fetched) == 1 else Fetched.joined(fetched)


def _require_sources(sources: list) -> None:
    """An empty list of URLs would write an empty output over the last good one."""
    if not sources:
        raise PayloadError("parametro_url is an empty list: give at least one URL")


# transform and concat take over the lists they are given and leave them empty: Prefect keeps
# every task's result until the run ends, so otherwise a million todos would stay in memory
# beside their records. A run is over once a task fails, and neither task is retried.


@task
def transform(records: List[Todo]) -> List[Record]:
    """The todos with their keys renamed; `records` is left empty, each todo freed once renamed."""
    renamed = []
    while records:  # a batch at a time from the end, where removing one moves nothing
        batch = records[-BATCH:]
        del records[-BATCH:]
        renamed.append(transform_records(batch))
    return carry(records, concat_records(reversed(renamed)))


@task
def concat(parts: List[List[Todo]]) -> List[Todo]:
    """The sources' todos, in the order the sources were given; `parts` are left empty."""
    _require_sources(parts)
    joined = Fetched.joined(parts)
    for part in parts:
        part.clear()
    return joined


@task(state_handlers=[_keep_host, _keep_attempts])
def load(records: List[Record], path: str = OUTPUT, keep_state: bool = True,
         table: Optional[Table] = None) -> Optional[int]:
    """How many records were written to path; None if path already held them and was left alone.
    keep_state writes path's state file: the validators of the pages the records came from.
    A database URL as path loads them into table (default: todos, replaced), in one transaction
    with that state."""
    if database.is_database(path):
        return database.load(records, path, table or Table(), keep_state)
    written = state.write_output(records, path, keep_state)
    logger = prefect.context.get("logger", log)
    if written is None:
        logger.info("Left %s as it was: unchanged", path)
    else:
        logger.info("Wrote %d records to %s", written, path)
    return written


def build_flow(
    retries: int = RETRIES,
    retry_delay: float = RETRY_DELAY,
    timeout: float = TIMEOUT,
    deadline: float = DEADLINE,
    max_bytes: int = MAX_BYTES,
    output: str = OUTPUT,
    interval: float = INTERVAL,
    start_date: Optional[datetime.datetime] = None,
    cron: Optional[str] = None,
    allow_empty: bool = False,
    mapped: bool = False,
    paginate: bool = False,
    max_pages: int = MAX_PAGES,
    headers: Optional[Headers] = None,
    conditional: bool = True,
    table: Optional[Table] = None,
) -> Flow:
    """etl_flow: parametro_url -> extract -> transform -> load, every `interval` seconds from
    start_date, or at the times of the 5-field `cron` expression after it; on the clocks of
    start_date's time zone (etl.schedule).

    mapped=True fetches a list of urls with extract.map (each with its own retries)
    and joins them in a concat task before transform. conditional=True asks each source whether it
    changed since the last run (If-None-Match, If-Modified-Since), keeping a state file beside output.
    A database URL as output loads into table (replace or merge): the state is kept in the same
    database, and a database that is down is retried as a source is.
    """
    retrying_extract = extract.copy(
        max_retries=retries,
        retry_delay=datetime.timedelta(seconds=retry_delay) if retries else None,
    )
    settings = dict(timeout=timeout, deadline=deadline, max_bytes=max_bytes, allow_empty=allow_empty,
                    paginate=paginate, max_pages=max_pages, headers=headers,
                    output=output if conditional else None)
    loading = load
    if database.is_database(output):
        settings["table"] = table = table or Table()
        if retries:  # a database that is down, or drops the connection, is retried as a source is
            loading = load.copy(max_retries=retries, retry_delay=datetime.timedelta(seconds=retry_delay),
                                retry_on={DatabaseDown})
    with Flow("etl_flow", schedule=schedule.build(interval, cron, start_date)) as flow:
        url = Parameter("parametro_url", required=True)
        if mapped:
            todos = concat(retrying_extract.map(url, **{k: unmapped(v) for k, v in settings.items()}))
        else:
            todos = retrying_extract(url, **settings)
        loading(transform(todos), output, conditional, **({"table": table} if table else {}))
    return flow


flow = build_flow()


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; returns the exit status."""
    args = cli.parse_args(argv)
    cli.setup_logging(args.debug, args.quiet, args.log_format)
    # On a cluster the workers write the output: a relative path would be theirs, not ours.
    if not database.is_database(args.output):
        args.output = os.path.abspath(args.output)
    etl_flow = build_flow(
        retries=args.retries, retry_delay=args.retry_delay, timeout=args.timeout,
        deadline=args.deadline, max_bytes=args.max_bytes, output=args.output,
        interval=args.interval or INTERVAL, cron=args.cron,
        start_date=pendulum.now(args.timezone),
        allow_empty=args.allow_empty, mapped=len(args.urls) > 1, paginate=args.paginate,
        max_pages=args.max_pages, headers=args.headers, conditional=args.conditional, table=args.table,
    )
    if args.next:
        for when in schedule.next_times(etl_flow.schedule, args.next, pendulum.now("utc").subtract(seconds=1)):
            print(when.isoformat())
        return service.EXIT_OK
    if args.history:
        try:
            os.close(sink.open_lines(args.history, f"--history {args.history}"))
        except SinkError as exc:
            error(str(exc))
            return service.EXIT_FAILED
    try:
        with service.stopped_by_signals(abandon=lambda: _remove_unfinished(args.output)):
            if args.visualize and not args.once:
                return _draw(etl_flow, args.visualize)
            with _one_process(args.output, args.table):  # before anything is fetched
                return _run(args, etl_flow)
    except lock.Busy as busy:
        error(str(busy))
        return lock.EX_TEMPFAIL
    except lock.LockError as failed:
        error(str(failed))
        return service.EXIT_FAILED
    except service.Stopped as stop:
        _remove_unfinished(args.output)  # what threads were writing since: they are interrupted
        say(f"stopped by {stop}")
        return 128 + stop.signum


@contextlib.contextmanager
def _one_process(output: str, table: Optional[Table]) -> Iterator[None]:
    """Hold the output while inside (lock.Busy if another process holds it): a lock file beside a
    file or an SQLite database; for PostgreSQL, an advisory lock on the table, held by a connection
    of its own. A PostgreSQL server that cannot be reached now is no reason not to start: its runs
    are retried like any, and each load locks the table for its own transaction."""
    kind = database.scheme(output)
    if kind != "postgresql" and kind != "postgres":
        path, what = (sqlite.path_of(output), database.describe(output, table)) if kind else (output, output)
        with lock.held(lock.lock_path(path), what):
            yield
        return
    what = database.describe(output, table)
    try:
        holder = postgres.lock(output, table.name)
    except postgres.errors() as exc:
        log.warning("Could not lock %s for this process (%s); going on", what, database.why(output, exc))
        yield
        return
    if holder is None:
        raise lock.Busy(f"{what} is in use by another process: stop it, or give this one another --table")
    with holder:
        yield


def _run(args: argparse.Namespace, etl_flow: Flow) -> int:
    """Run the flow as the options say: once, or on its schedule; the exit status."""
    if args.demo:
        args.urls = [demo.demo_url(demo.start_demo_server())]
    if not args.once:
        try:
            watch = cli.make_watch(args, etl_flow)
        except OSError as exc:
            host, port = args.listen
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            error(f"cannot listen on --listen {where}: {exc.strerror or exc}")
            return service.EXIT_FAILED
        status = service.serve(etl_flow, args.urls, args.runs, args.history, cli.make_executor(args), watch)
        watch.close()
        return status
    summary, state = service.run_once(etl_flow, args.urls, cli.make_executor(args))
    service.append_history(args.history, summary)
    status = service.EXIT_OK if "error" not in summary else service.EXIT_FAILED
    if "error" in summary:
        error(summary["error"])
    if args.visualize:
        status = max(status, _draw(etl_flow, args.visualize, state))
    return status


def _remove_unfinished(output: str) -> None:
    """Remove the temporary files of the output's and its state file's writes that a stop cut short.
    A database rolls back what a stop cut short by itself."""
    if database.is_database(output):
        return
    sink.remove_unfinished(output)
    sink.remove_unfinished(state.state_path(output), follow=False)


def _draw(etl_flow: Flow, path: str, state: Optional[prefect.engine.state.State] = None) -> int:
    import graphviz

    try:
        diagram.write_diagram(etl_flow, path, state)
    except graphviz.ExecutableNotFound:
        error("graphviz's `dot` program is missing; install it "
                  "(apt-get install graphviz, brew install graphviz) or use a .dot path")
        return service.EXIT_FAILED
    except OSError as exc:
        error(f"cannot write {path}: {exc.strerror}")
        return service.EXIT_FAILED
    log.info("Wrote the flow diagram to %s", path)
    return service.EXIT_OK


if __name__ == "__main__":
    status = main()
    if status > 128:
        # Stopped by a signal: worker threads still blocked on a source would hold up the exit
        # for as long as --timeout; the output is the last good file either way.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
