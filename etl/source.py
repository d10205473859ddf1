"""Fetching a source: one HTTP GET under limits (timeout, deadline, size), the JSON it holds, and
which failures are worth retrying (SourceError). URLs are masked wherever they are shown."""
import json
import re
import time
import urllib.parse
from typing import Mapping, Optional, Tuple

import prefect
import requests
import urllib3

from etl.errors import SourceError
from etl.headers import Session

log = prefect.utilities.logging.get_logger(__name__)


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


def fetch_json(url: str, timeout: float, deadline: float, max_bytes: int,
               headers: Optional[Mapping[str, str]] = None) -> Tuple[object, requests.Response]:
    """The JSON document at url (None if it answered 304 Not Modified) and the response, for its
    status and headers; SourceError names the (masked) url and the cause. headers go with the
    request, and after a redirect only to the same host."""
    masked = mask_url(url)
    logger = prefect.context.get("logger", log)
    attempt = prefect.context.get("task_run_count", 1)
    started = time.monotonic()
    try:
        text, response, size = _get_text(url, masked, timeout, deadline, max_bytes, headers or {})
        payload = None if response.status_code == 304 else _parse_json(text, masked)
    except SourceError as exc:
        logger.warning("Attempt %d failed after %.3f s: %s", attempt, time.monotonic() - started, exc)
        raise
    records = len(payload) if isinstance(payload, list) else "no"
    logger.info("GET %s: HTTP %d, %d bytes, %s records in %.3f s (attempt %d)",
                masked, response.status_code, size, records, time.monotonic() - started, attempt)
    return payload, response


def _get_text(url: str, masked: str, timeout: float, deadline: float, max_bytes: int,
              headers: Mapping[str, str]) -> tuple:
    """The body as text, the response and the body's size. It arrives in one growing buffer, which
    is gone before the text is parsed."""
    started = time.monotonic()
    body = bytearray()
    try:
        with Session(url, headers) as session, \
                session.get(url, headers=headers, timeout=timeout, stream=True) as response:
            if not response.ok:
                raise SourceError(f"{masked} answered HTTP {response.status_code} {response.reason}")
            # read1 returns whatever has arrived, so the deadline holds against a trickle.
            while chunk := response.raw.read1(1 << 20, decode_content=True):
                body += chunk
                if len(body) > max_bytes:
                    raise SourceError(f"{masked} sent more than --max-bytes {max_bytes} bytes")
                if time.monotonic() - started > deadline:
                    raise SourceError(f"{masked} did not finish within --deadline {deadline:g} s")
    except (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError):
        raise SourceError(f"{masked} did not answer within --timeout {timeout:g} s") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise SourceError(f"{masked} could not be read: {_root_cause(exc)}") from None
    try:
        return body.decode("utf-8-sig"), response, len(body)
    except UnicodeDecodeError as exc:
        raise _not_json(masked, exc) from None


def _parse_json(text: str, masked: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _not_json(masked, exc) from None


def _not_json(masked: str, exc: ValueError) -> SourceError:
    return SourceError(f"{masked} sent a body that is not valid JSON ({exc})")


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's message: 'Connection refused', not urllib3's wrapping."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
