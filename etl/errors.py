"""The failures we explain ourselves, in one line that names the thing and the value, and that line."""
import logging
import sys
from typing import Callable, Optional

PROG = "prefectflow.py"

_json_line: Optional[Callable[[str, int], str]] = None  # set by etl.logs for --log-format json


def line_format(json_line: Optional[Callable[[str, int], str]]) -> None:
    """Print the lines of error() and say() as json_line makes them; None: as text."""
    global _json_line
    _json_line = json_line


def error(message: str) -> None:
    """The one line a failure prints on stderr."""
    print(_json_line(message, logging.ERROR) if _json_line else f"{PROG}: error: {message}", file=sys.stderr)


def say(message: str) -> None:
    """A line of the program's own on stderr that is not a failure (a stop by a signal)."""
    print(_json_line(message, logging.WARNING) if _json_line else f"{PROG}: {message}", file=sys.stderr)


class Explained(Exception):
    """A failure whose message says it all: logged without a traceback."""


class SourceError(Explained):
    """The source did not answer with a JSON document; worth retrying."""


class PayloadError(Explained):
    """The source answered JSON of the wrong shape; retrying will not help."""


class UrlError(Explained):
    """A URL that can never be fetched (not http or https, no host, malformed); retrying will not help."""


class SinkError(Explained):
    """The output could not be written."""


class DatabaseDown(SinkError):
    """The database could not be reached, was busy, or dropped the connection; worth retrying."""


class SettingError(Explained):
    """A setting cannot be used where the run needs it (an unset environment variable); retrying
    will not help."""
