"""The command line: its options and usage rules, logging, the executor and the watches the options
ask for, and the one line a failure prints on stderr."""
import argparse
import logging
import math
import os
import warnings
from typing import Callable, List, Mapping, Optional, Tuple

import cloudpickle
import pendulum
import prefect
from prefect import Flow
from prefect.executors import DaskExecutor, Executor, LocalDaskExecutor, LocalExecutor

import etl
from etl import config, database, errors, logs, schedule
from etl.diagram import FORMATS
from etl.errors import PROG, Explained, SettingError, UrlError
from etl.headers import Headers, parse_header, parse_header_env
from etl.service import Watch, Watches
from etl.settings import (API_URL, DEADLINE, INTERVAL, MAX_BYTES, MAX_PAGES, MAX_SECONDS, MAX_THREADS,
                          NOTIFY_QUIET_INTERVALS, OUTPUT, RETRIES, RETRY_DELAY, STALE_AFTER_INTERVALS, TIMEOUT,
                          TIMEZONE)
from etl.source import check_url


def _at_least(kind: type, low: float, high: Optional[float] = None) -> Callable[[str], float]:
    """An argparse type: a finite number of that kind, at least low (and at most high)."""
    return _number(kind, lambda value: value >= low, f"must be at least {low}", high)


def _greater_than(kind: type, low: float, high: Optional[float] = None) -> Callable[[str], float]:
    """An argparse type: a finite number of that kind, greater than low (and at most high)."""
    return _number(kind, lambda value: value > low, f"must be greater than {low}", high)


def _seconds(low: float, strictly: bool = False) -> Callable[[str], float]:
    """An argparse type: a duration in seconds, from low to MAX_SECONDS: longer ones overflow
    the clocks and timers they are given to."""
    return (_greater_than if strictly else _at_least)(float, low, MAX_SECONDS)


def _number(kind: type, ok: Callable[[float], bool], rule: str, high: Optional[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number: {text}")
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}: {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:.15g}: {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names it in "invalid float value"
    return parse


def _address(text: str) -> Tuple[str, int]:
    """An argparse type: HOST:PORT, an IPv6 address in brackets ([::1]:9100), a port from 0 (any
    free one) to 65535."""
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]") and ":" in host:
        host = host[1:-1]
    elif ":" in host or "[" in host or "]" in host:
        host = ""
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            f"must be HOST:PORT, such as 127.0.0.1:9100 or [::1]:9100: {text}")
    return host, int(port)


def _url(text: str) -> str:
    """An argparse type: a URL that can be fetched; the error names it masked."""
    try:
        check_url(text)
    except UrlError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _table(text: str) -> str:
    """An argparse type: a table name we load into."""
    try:
        return database.check_table_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cron(text: str) -> str:
    """An argparse type: a 5-field cron expression that matches some date; the error names it."""
    try:
        return schedule.check_cron(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _zone(text: str) -> str:
    """An argparse type: an IANA time zone; the error names it."""
    try:
        return schedule.check_zone(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> config.Parser:
    """The one table of options: their names, types and defaults, whatever the source of a value."""
    parser = config.Parser(
        prog=PROG,
        description="Fetch todos, rename their keys, write them to a JSON file or a database table; "
                    "every --interval seconds or at the --cron times until stopped, or once.",
        epilog="Exit status: 0 success, 1 the run failed, 2 bad usage, 75 another process uses the output, "
               "130 SIGINT, 143 SIGTERM.",
    )
    add = parser.add_argument
    add("--url", action="append", type=_url, metavar="URL",
        help=f"source of the todos; repeat to fetch several in parallel (default: {API_URL})")
    add("--output", default=OUTPUT, metavar="PATH",
        help="file to write, or a database to load into: sqlite:///relative/path.db, "
             f"sqlite:////absolute/path.db, postgresql://user@host:port/dbname (default: {OUTPUT})")
    add("--table", type=_table, metavar="NAME",
        help=f"with a database --output, the table to load into (default: {database.TABLE})")
    add("--load-mode", choices=database.MODES,
        help="with a database --output: replace the table's rows, or merge (insert or update by "
             f'"ID", never delete) (default: {database.REPLACE})')
    add("--once", action="store_true", help="run once now instead of on the schedule")
    add("--demo", action="store_true",
        help="run once, offline, on the bundled sample served from 127.0.0.1 (its first answer is 503)")
    add("--interval", type=_seconds(1), metavar="SECONDS",
        help=f"time between scheduled runs, at least 1 (default: {INTERVAL:g})")
    add("--cron", type=_cron, metavar='"EXPR"',
        help='run at the times of this 5-field cron expression instead, such as "*/15 * * * *"')
    add("--timezone", type=_zone, metavar="ZONE",
        help=f"IANA time zone the schedule's times are read in, such as Europe/Madrid (default: {TIMEZONE})")
    add("--next", type=_greater_than(int, 0), metavar="N",
        help="print the schedule's next N start times and exit, without running")
    add("--runs", type=_greater_than(int, 0), metavar="N",
        help="stop after N scheduled runs (default: never)")
    add("--history", metavar="PATH", help="append a JSON line per run to this file")
    add("--listen", type=_address, metavar="HOST:PORT",
        help="serve /healthz, /metrics and a status page at / on this address; port 0 takes a free "
             "port and logs it (default: none)")
    add("--stale-after", type=_seconds(0, strictly=True), metavar="SECONDS",
        help=f"/healthz answers 503 once no run has succeeded for this long "
             f"(default: {STALE_AFTER_INTERVALS} x --interval; with --cron, {STALE_AFTER_INTERVALS} x the longest "
             "time between two of its next runs)")
    add("--notify", action="append", type=_url, metavar="URL",
        help="POST a JSON message to URL when runs start failing and when they recover; repeatable")
    add("--retries", type=_at_least(int, 0), default=RETRIES, metavar="N",
        help=f"retries of a failed fetch, per source (default: {RETRIES})")
    add("--retry-delay", type=_seconds(0), metavar="SECONDS",
        help=f"wait between retries (default: {RETRY_DELAY:g}; 1 with --demo)")
    add("--timeout", type=_seconds(0, strictly=True), default=TIMEOUT, metavar="SECONDS",
        help=f"limit to connect, and between two reads of the body (default: {TIMEOUT:g})")
    add("--deadline", type=_seconds(0, strictly=True), default=DEADLINE, metavar="SECONDS",
        help=f"limit for a whole response (default: {DEADLINE:g})")
    add("--max-bytes", type=_greater_than(int, 0), default=MAX_BYTES, metavar="N",
        help=f"largest body accepted, in bytes (default: {MAX_BYTES}, 100 MiB)")
    add("--allow-empty", action="store_true", help="let an empty list replace the output")
    add("--paginate", action="store_true",
        help='follow each source\'s Link rel="next" headers to its last page and join the pages')
    add("--max-pages", type=_greater_than(int, 0), metavar="N",
        help=f"with --paginate, fail a source that has more than N pages (default: {MAX_PAGES})")
    add("--header", action="append", default=[], metavar='"NAME: VALUE"',
        help="send this header with every request (repeatable); not to another host after a redirect")
    add("--header-env", action="append", default=[], metavar="NAME=ENVVAR",
        help="send header NAME with the value of environment variable ENVVAR, read at each run (repeatable)")
    add("--no-conditional", dest="conditional", action="store_false",
        help="always fetch in full: no If-None-Match/If-Modified-Since, no state file beside the output")
    add("--executor", choices=["local", "threads", "processes", "dask"],
        help="how tasks run (default: local for one source, threads for several)")
    add("--workers", type=_greater_than(int, 0), metavar="N",
        help=f"threads or processes (default: one per source, at most {MAX_THREADS}); "
             "with --executor dask, worker processes of the local cluster (default: one per core)")
    add("--dask-address", metavar="tcp://HOST:PORT", help="run on this Dask cluster (implies --executor dask)")
    add("--visualize", metavar="PATH",
        help="draw the flow to PATH (.png, .svg, .pdf; .dot or .gv for the DOT source) and exit; "
             "with --once or --demo, draw it after the run, coloured by state")
    add("--debug", action="store_true", help="log everything, with tracebacks")
    add("-q", "--quiet", action="store_true", help="log errors only")
    add("--log-format", choices=logs.FORMATS, default="text",
        help="text, or json: every line on stdout and stderr one JSON object (default: text)")
    add("--config", metavar="FILE",
        help="read options from this TOML file, its keys the long options without their dashes; "
             "PREFECTFLOW_<OPTION> environment variables win over it, and the command line over both")
    return parser


def parse_args(argv: Optional[List[str]] = None, environ: Optional[Mapping[str, str]] = None) -> argparse.Namespace:
    """The options from the command line, the environment and --config, checked; exits 2 with one
    line (as JSON with --log-format json) if they cannot be used."""
    environ = os.environ if environ is None else environ
    parser = _parser()
    json_errors = _log_format(argv, environ) == "json"
    logs.use_for_errors(json_errors)
    parser.report = errors.error  # the one line, without argparse's usage block above it
    try:
        args = config.gather(parser, argv, environ)
    except config.Refused as exc:
        parser.error(str(exc))

    def conflict(*names: str) -> None:
        parser.error(f"{' and '.join(names)} cannot be used together")

    args.once = args.once or args.demo
    if args.demo and args.url:
        conflict("--demo", "--url")
    if args.once:  # the options of the schedule
        for name, value in {"--runs": args.runs, "--interval": args.interval, "--cron": args.cron,
                            "--timezone": args.timezone, "--next": args.next, "--listen": args.listen,
                            "--stale-after": args.stale_after, "--notify": args.notify}.items():
            if value is not None:
                conflict("--once" if not args.demo else "--demo", name)
    if args.cron and args.interval is not None:
        conflict("--cron", "--interval")
    if args.next and args.visualize:
        conflict("--next", "--visualize")
    if args.stale_after is not None and not args.listen:
        parser.error("--stale-after needs --listen")
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
    if args.visualize and not args.once:  # it draws and exits
        for name, value in {"--runs": args.runs, "--history": args.history, "--listen": args.listen,
                            "--notify": args.notify}.items():
            if value is not None:
                conflict("--visualize", name)
    if args.visualize and not args.visualize.lower().endswith(tuple("." + f for f in FORMATS)):
        parser.error(f"--visualize: unknown format {args.visualize!r}; use .png, .svg, .pdf, .dot or .gv")
    if args.max_pages and not args.paginate:
        parser.error("--max-pages needs --paginate")
    args.max_pages = args.max_pages or MAX_PAGES
    args.headers = _headers(parser, args.header, args.header_env)
    args.timezone = args.timezone or TIMEZONE
    if args.interval is None and not args.cron:
        args.interval = INTERVAL
    # The longest wait between two runs: what /healthz allows three of, and the status page reloads by.
    try:
        args.period = args.interval or schedule.longest_gap(
            schedule.build(cron=args.cron, start_date=pendulum.now(args.timezone)), pendulum.now("utc"))
    except ValueError as exc:
        parser.error(f"--cron {args.cron!r} in --timezone {args.timezone}: {exc}")
    if args.stale_after is None:
        args.stale_after = STALE_AFTER_INTERVALS * args.period
    if args.retry_delay is None:
        args.retry_delay = 1.0 if args.demo else RETRY_DELAY
    args.urls = args.url or [API_URL]
    args.table = _database(parser, args)
    return args


def _database(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Optional[database.Table]:
    """The table of a database --output (its URL checked, a sqlite path made absolute); None for a file."""
    if not database.is_database(args.output):
        for name, value in {"--table": args.table, "--load-mode": args.load_mode}.items():
            if value is not None:
                parser.error(f"{name} needs a database --output (sqlite:///... or postgresql://...)")
        return None
    try:
        args.output = database.check_output(args.output)
    except ValueError as exc:
        parser.error(f"argument --output: {exc}")
    return database.Table(args.table or database.TABLE, args.load_mode or database.REPLACE)


def _headers(parser: argparse.ArgumentParser, fixed: List[str], from_env: List[str]) -> Optional[Headers]:
    """The --header and --header-env headers, each environment variable checked now; None if none."""
    if not fixed and not from_env:
        return None
    try:
        given = [parse_header(text) for text in fixed]
    except ValueError as exc:
        parser.error(f"--header: {exc}")
    try:
        named = [parse_header_env(text) for text in from_env]
    except ValueError as exc:
        parser.error(f"--header-env: {exc}")
    try:
        headers = Headers(given, named)
        headers.resolve()
    except (ValueError, SettingError) as exc:
        parser.error(str(exc))
    return headers


def make_executor(args: argparse.Namespace) -> Executor:
    """The Prefect executor the options ask for."""
    sources = min(len(args.urls), MAX_THREADS)
    if args.executor == "dask":
        # Workers need not have this project: our functions travel with the tasks, by value.
        cloudpickle.register_pickle_by_value(etl)
        # Dask's "already contains a plugin" warning on each start is harmless.
        warnings.filterwarnings("ignore", message="Scheduler already contains a plugin")
        if args.dask_address:
            return DaskExecutor(address=args.dask_address)
        workers = args.workers or os.cpu_count() or 1
        if args.log_format == "json":
            # The workers write to our stdout and stderr: in our format (etl.logs.dask_setup), and
            # Dask's own lines only from WARNING up, set when a worker imports it, before its preload.
            os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        return DaskExecutor(cluster_kwargs={
            "n_workers": workers, "threads_per_worker": -(-sources // workers),
            # On this machine only: the scheduler, the nannies, the workers and the servers of /metrics
            # and /health they each run (their "dashboards") would otherwise listen on every interface.
            "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", "worker_dashboard_address": "127.0.0.1:0",
            **({"preload": ["etl.logs"]} if args.log_format == "json" else {})})
    if args.executor in ("threads", "processes") or (args.executor is None and len(args.urls) > 1):
        return LocalDaskExecutor(scheduler=args.executor or "threads", num_workers=args.workers or sources)
    return LocalExecutor()


def make_watch(args: argparse.Namespace, flow: Flow) -> Watch:
    """What watches the runs: the status server of --listen, listening already (OSError if it
    cannot), and the webhooks of --notify."""
    # Imported here: only the service needs them (prometheus_client alone takes 25 ms to import).
    from etl import metrics, notify, status, web

    watches: List[Watch] = []
    if args.listen:
        state, counts = status.Status(args.stale_after, args.history), metrics.Metrics()
        refresh = round(min(max(args.period, 5), 60))  # seconds between reloads of the status page
        web.start(*args.listen, state, counts, flow, refresh)
        watches += [state, counts]
    if args.notify:
        watches.append(notify.Notifier(args.notify, quiet=NOTIFY_QUIET_INTERVALS * args.interval))
    return Watches(*watches)


def _one_line(record: logging.LogRecord) -> bool:
    """Without --debug: tracebacks become one line; failures of ours already logged are dropped."""
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        if isinstance(exc, Explained):
            return False
        message, cause = record.getMessage(), f"{type(exc).__name__}: {exc}"
        record.msg = message if str(exc) and str(exc) in message else f"{message} {cause}"
        record.args, record.exc_info, record.exc_text = (), None, None
    return True


def _not_interrupted(record: logging.LogRecord) -> bool:
    """A stopped run's threads executor interrupts its idle threads with KeyboardInterrupt
    (LocalDaskExecutor._interrupt_pool); their "Exception in worker" traceback is noise."""
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def _log_format(argv: Optional[List[str]], environ: Mapping[str, str]) -> str:
    """--log-format as far as it can be told before the options are read, for their errors."""
    early = config.Parser(add_help=False, allow_abbrev=False)
    early.add_argument("--log-format")
    early.add_argument("--config")
    early.reading = True
    try:
        given, _ = early.parse_known_args(argv)
    except config.Refused:
        given = argparse.Namespace(log_format=None, config=None)
    path = given.config or environ.get(config.env_name("config"))
    if given.log_format is None and config.env_name("log-format") not in environ and path:
        try:
            given.log_format = config.read_file(path).get("log-format")
        except config.Refused:
            pass
    return given.log_format or environ.get(config.env_name("log-format"), "text")


def setup_logging(debug: bool, quiet: bool, log_format: str = "text") -> None:
    pool_log = logging.getLogger("concurrent.futures")
    pool_log.removeFilter(_not_interrupted)
    pool_log.addFilter(_not_interrupted)
    root = prefect.utilities.logging.get_logger()
    root.setLevel(logging.DEBUG if debug else logging.ERROR if quiet else logging.INFO)
    for handler in root.handlers:
        handler.removeFilter(_one_line)
        if not debug:
            handler.addFilter(_one_line)
    logs.use(log_format, [h for h in root.handlers if isinstance(h, logging.StreamHandler)])
