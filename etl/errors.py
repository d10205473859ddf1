"""The failures we explain ourselves, in one line that names the thing and the value, and that line."""
import sys

PROG = "prefectflow.py"


def error(message: str) -> None:
    """The one line a failure prints on stderr."""
    print(f"{PROG}: error: {message}", file=sys.stderr)


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
