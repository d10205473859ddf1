"""Fetching a source: which URLs can be fetched, one HTTP GET under limits (timeout, deadline, size),
the JSON it holds, and which failures are worth retrying (SourceError). URLs are masked wherever they
are shown."""
import json
import re
import time
import urllib.parse
from typing import Set, Tuple

import prefect
import requests
import urllib3

from etl.errors import SourceError, UrlError

log = prefect.utilities.logging.get_logger(__name__)

# Everything up to the last "@" before the host ends (the first "/", "?" or "#" after "//"), with
# or without a scheme: "https://ghp_x@h", "ann:pw@h/x" (which urlsplit reads as scheme "ann").
_USERINFO = re.compile(r"^(?P<start>(?:[^/?#]*//)?)(?P<userinfo>[^/?#]*)@")
# A name=value pair, in a query or a fragment ("#access_token=..."), split on "&" or ";", whose
# name looks like it holds a secret: X-Amz-Credential, X-Amz-Signature, api_key, password, jwt...
_SECRET_PARAM = re.compile(
    r"(?P<name>(?:^|[&;])[^=&;]*(?:token|key|secret|pass|auth|sig|jwt|code|credential)[^=&;]*=)"
    r"(?P<value>[^&;]*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The URL with its userinfo (user name and password) and the values of token-like parameters,
    in the query or the fragment, replaced by ***."""
    url = _USERINFO.sub(r"\g<start>***@", url, count=1)
    head, hash_, fragment = url.partition("#")
    head, question, query = head.partition("?")
    return head + question + _mask_params(query) + hash_ + _mask_params(fragment)


def _mask_params(params: str) -> str:
    return _SECRET_PARAM.sub(r"\g<name>***", params)


def mask_text(text: str, *urls: str) -> str:
    """text (a message from requests, urllib3 or a server) with every secret of these urls in it
    replaced by ***, as written in the url, decoded, or re-encoded the way requests sends it."""
    for secret in sorted(_secrets(urls), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _secrets(urls: Tuple[str, ...]) -> Set[str]:
    found = []
    for url in urls:
        if userinfo := _USERINFO.match(url):
            found += [userinfo["userinfo"], *userinfo["userinfo"].split(":", 1)]
        head, _, fragment = url.partition("#")
        for params in (head.partition("?")[2], fragment):
            found += [param["value"] for param in _SECRET_PARAM.finditer(params)]
    forms = (lambda s: s, urllib.parse.unquote, requests.utils.requote_uri)
    return {form(secret) for secret in found if secret for form in forms} - {""}


def check_url(url: str) -> None:
    """Raise UrlError, naming the masked url, if it can never be fetched: not http or https, no
    host, or malformed."""
    masked = mask_url(url)
    if not url:
        raise UrlError("an empty URL")
    if "://" not in url:
        raise UrlError(f"{masked}: no scheme; write https:// or http:// before the host")
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise UrlError(f"{masked}: only http:// and https:// URLs can be fetched")
        if not parts.hostname:
            raise UrlError(f"{masked}: no host")
        parts.port  # raises on a port out of range or not a number
        requests.Request("GET", url).prepare()  # raises on a host that is not a valid name
    except (ValueError, requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise UrlError(f"{masked}: not a valid URL ({mask_text(str(exc), url)})") from None


def fetch_json(url: str, timeout: float, deadline: float, max_bytes: int) -> object:
    """The JSON document at url; SourceError (worth retrying) or UrlError (not) names the masked
    url and the cause."""
    masked = mask_url(url)
    logger = prefect.context.get("logger", log)
    attempt = prefect.context.get("task_run_count", 1)
    started = time.monotonic()
    try:
        check_url(url)
        text, status, size = _get_text(url, masked, timeout, deadline, max_bytes)
        payload = _parse_json(text, masked)
    except (SourceError, UrlError) as exc:
        logger.warning("Attempt %d failed after %.3f s: %s", attempt, time.monotonic() - started, exc)
        raise
    records = len(payload) if isinstance(payload, list) else "no"
    logger.info("GET %s: HTTP %d, %d bytes, %s records in %.3f s (attempt %d)",
                masked, status, size, records, time.monotonic() - started, attempt)
    return payload


def _get_text(url: str, masked: str, timeout: float, deadline: float, max_bytes: int) -> tuple:
    """The body as text, its HTTP status and size. It arrives in one growing buffer, which is gone
    before the text is parsed."""
    started = time.monotonic()
    body = bytearray()
    try:
        with requests.get(url, timeout=timeout, stream=True) as response:
            if not response.ok:
                reason = mask_text(response.reason or "", url)  # the server's words
                raise SourceError(f"{masked} answered HTTP {response.status_code} {reason}")
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
        raise SourceError(f"{masked} could not be read: {mask_text(_root_cause(exc), url)}") from None
    try:
        return body.decode("utf-8-sig"), response.status_code, len(body)
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
