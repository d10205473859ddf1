"""The failures we explain ourselves, in one line that names the thing and the value."""


class Explained(Exception):
    """A failure whose message says it all: logged without a traceback."""


class SourceError(Explained):
    """The source did not answer with a JSON document; worth retrying."""


class PayloadError(Explained):
    """The source answered JSON of the wrong shape; retrying will not help."""


class SinkError(Explained):
    """The output could not be written."""


class SettingError(Explained):
    """A setting cannot be used where the run needs it (an unset environment variable); retrying
    will not help."""
