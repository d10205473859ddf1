"""Request headers from the command line (--header, --header-env): parsed, read from the
environment at each request, sent only to the origin of the --url they were given for, and masked
in every message."""
import os
import re
import urllib.parse
from typing import Dict, Iterable, Mapping, Optional, Tuple


from etl.errors import SettingError

_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110 5.1)
_VALUE = re.compile(r"[\t\x20-\x7e]*")  # printable ASCII: no line break can end the header early
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PORTS = {"http": 80, "https": 443}
MASKED_LENGTH = 4  # a header value, or a word of one, shorter than this is not masked in messages


def parse_header(text: str) -> Tuple[str, str]:
    """NAME and VALUE of "NAME: VALUE". The ValueError names the header, never its value."""
    name, colon, value = text.partition(":")
    name = name.strip()
    if not colon or not _NAME.fullmatch(name):
        raise ValueError('expected "NAME: VALUE", NAME a header name')
    return name, check_value(name, value.strip(), "its value")


def parse_header_env(text: str) -> Tuple[str, str]:
    """NAME and ENVVAR of "NAME=ENVVAR"."""
    name, equals, variable = text.partition("=")
    if not equals or not _NAME.fullmatch(name.strip()) or not _VARIABLE.fullmatch(variable.strip()):
        raise ValueError("expected NAME=ENVVAR, NAME a header name and ENVVAR an environment variable")
    return name.strip(), variable.strip()


def check_value(name: str, value: str, what: str) -> str:
    """value, if it can be sent as the header name."""
    if not _VALUE.fullmatch(value):
        raise ValueError(f"{name}: {what} holds a line break or a character that is not printable ASCII")
    return value


class Headers:
    """Headers to send with every request: fixed values, and values read from environment
    variables each time they are resolved. Its repr names the headers, never their values."""

    def __init__(self, fixed: Iterable[Tuple[str, str]] = (), from_env: Iterable[Tuple[str, str]] = ()):
        fixed, from_env = list(fixed), list(from_env)
        names = [name for name, _ in fixed + from_env]
        for index, name in enumerate(names):
            if name.lower() in (other.lower() for other in names[:index]):
                raise ValueError(f"header {name} given twice")
        self.fixed, self.from_env = dict(fixed), dict(from_env)

    def resolve(self) -> Dict[str, str]:
        """The headers with their values now; SettingError if an environment variable is unset."""
        values = dict(self.fixed)
        for name, variable in self.from_env.items():
            value = os.environ.get(variable)
            if value is None:
                raise SettingError(f"environment variable {variable} is not set (--header-env {name}={variable})")
            try:
                values[name] = check_value(name, value.strip(), f"environment variable {variable}")
            except ValueError as exc:
                raise SettingError(str(exc)) from None
        return values

    def __repr__(self) -> str:
        return f"Headers({', '.join([*self.fixed, *self.from_env])})"


def headers_for(url: str, original_url: str, headers: Mapping[str, str]) -> Dict[str, str]:
    """The headers meant for original_url that may go to url: all of them on the same scheme,
    host and port, none anywhere else (a redirect or a next page must not hand an API key to
    another host, nor send it in clear text after an https:// URL)."""
    return dict(headers) if same_origin(url, original_url) else {}


def same_origin(url: str, other: str) -> bool:
    """Whether the two URLs have the same scheme, host and port."""
    return _origin(url) == _origin(other)


def mask_values(text: str, values: Iterable[str]) -> str:
    """text with each header value in it, and each word of one (the TOKEN of "Bearer TOKEN"),
    replaced by ***, as written or percent-encoded: wherever one stands on its own, not inside a
    longer word, and if it has at least MASKED_LENGTH characters (a "2" is no secret, but masking
    it would garble "HTTP 502")."""
    secrets = set()
    for value in values:
        for secret in (value, *value.split()):
            secrets |= {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret, safe="")}
    for secret in sorted((s for s in secrets if len(s) >= MASKED_LENGTH), key=len, reverse=True):
        text = re.sub(rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])", "***", text)
    return text


def _origin(url: str) -> Tuple[str, Optional[str], Optional[int]]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, parts.hostname, parts.port or _PORTS.get(scheme)
