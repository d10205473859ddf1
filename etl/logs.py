"""The log's two formats (--log-format): text as Prefect writes it, or one JSON object a line with the
run's fields, a traceback inside its object; the one-line errors of etl.errors follow the same."""
import logging
import sys
from typing import Optional

import prefect
from pythonjsonlogger.json import JsonFormatter

from etl import errors

FORMATS = ("text", "json")
# Record attributes that Prefect sets from the run's context (or _RunFields does), as they are named
# in a JSON line.
_FIELDS = {"name": "logger", "levelname": "level", "exc_info": "traceback", "stack_info": "stack",
           "flow_name": "flow", "flow_run_id": "flow_run", "task_name": "task", "task_run_id": "task_run"}
_JSON = JsonFormatter(["levelname", "name", "message"], rename_fields=_FIELDS, timestamp="time",
                      defaults={"time": None}, json_ensure_ascii=False)


class _RunFields(logging.Filter):
    """Adds what Prefect's context says of the task run a record was logged in: its attempt and the
    (masked) URL extract is reading. Prefect adds the flow run's and the task's ids itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        attempt, url = prefect.context.get("task_run_count"), prefect.context.get("url")
        if attempt is not None and prefect.context.get("task_name"):
            record.attempt = attempt
        if url is not None:
            record.url = url
        return True


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever sys.stderr is when a record comes (as logging's last resort)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def use_for_errors(json_lines: bool) -> None:
    """The one-line errors of etl.errors as JSON objects, or as text; and an uncaught exception."""
    global _excepthook
    errors.line_format(error_line if json_lines else None)
    if json_lines and sys.excepthook is not _uncaught:
        _excepthook, sys.excepthook = sys.excepthook, _uncaught
    elif not json_lines and sys.excepthook is _uncaught:
        sys.excepthook = _excepthook


def use(log_format: str, handlers: list) -> None:
    """Format these handlers' records, the one-line errors and anything else logged, as log_format says."""
    json_lines = log_format == "json"
    use_for_errors(json_lines)
    for handler in handlers:
        handler.removeFilter(_RUN_FIELDS)
        if json_lines:
            handler.setFormatter(_JSON)
            handler.addFilter(_RUN_FIELDS)
        elif handler.formatter is _JSON:
            handler.setFormatter(_TEXT)
    # Whatever logs outside Prefect's logger (Python's warnings, Dask, urllib3): as logging's last
    # resort would, from WARNING up, but in the same format.
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _Stderr)]
    logging.captureWarnings(json_lines)
    if json_lines:
        fallback = _Stderr()
        fallback.setLevel(logging.WARNING)
        fallback.addFilter(_unhandled)
        fallback.setFormatter(_JSON)
        root.addHandler(fallback)


def dask_setup(worker) -> None:
    """Run by each worker of a local Dask cluster as it starts (a preload): its log lines share our
    stdout, so they are JSON too."""
    use("json", [h for h in prefect.utilities.logging.get_logger().handlers
                 if isinstance(h, logging.StreamHandler)])


def _unhandled(record: logging.LogRecord) -> bool:
    """Whether no handler below the root took the record (Prefect's, Dask's): the last resort's
    cases, and Python's warnings (whose logger gets a handler that drops them)."""
    logger = logging.getLogger(record.name)
    while logger is not logging.root:  # it came up here, so every logger on the way propagates
        if logger.handlers and logger.name != "py.warnings":
            return False
        logger = logger.parent
    return True


def error_line(message: str, level: int = logging.ERROR, exc_info=None) -> str:
    """One line of etl.errors as a JSON object: its logger is the program."""
    return _JSON.format(logging.LogRecord(errors.PROG, level, "", 0, message, None, exc_info))


def _uncaught(kind, value, traceback) -> None:
    """A failure nothing explained, as one JSON object with its traceback."""
    print(error_line(f"unexpected error: {kind.__name__}: {value}", logging.CRITICAL, (kind, value, traceback)),
          file=sys.stderr)


def _text_formatter() -> Optional[logging.Formatter]:
    """The formatter Prefect gave its handler at import."""
    for handler in prefect.utilities.logging.get_logger().handlers:
        if isinstance(handler, logging.StreamHandler):
            return handler.formatter
    return None


_RUN_FIELDS = _RunFields()
_TEXT = _text_formatter()
_excepthook = sys.excepthook  # the one before JSON lines took over
