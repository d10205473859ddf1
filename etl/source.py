"""Fetching a source: which URLs can be fetched, one HTTP GET under limits (timeout, deadline, size,
redirects), the JSON it holds, and which failures are worth retrying (SourceError). URLs are masked
wherever they are shown."""
import json
import re
import socket
import threading
import time
import unicodedata
import urllib.parse
from typing import Iterable, List, Mapping, Optional, Set, Tuple

import prefect
import requests
import urllib3

from etl.errors import SourceError, UrlError
from etl.headers import headers_for, mask_values

log = prefect.utilities.logging.get_logger(__name__)

MAX_REDIRECTS = 5
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
    return printable(head + question + _mask_params(query) + hash_ + _mask_params(fragment))


def _mask_params(params: str) -> str:
    return _SECRET_PARAM.sub(r"\g<name>***", params)


def mask_text(text: str, *urls: str, values: Iterable[str] = ()) -> str:
    """text (a message from requests, urllib3 or a server) with every secret of these urls in it
    replaced by ***, as written in the url, decoded, or re-encoded the way requests sends it; and
    the header values given (which a source can echo back) as headers.mask_values does."""
    for secret in sorted(_secrets(urls), key=len, reverse=True):
        text = text.replace(secret, "***")
    return printable(mask_values(text, values))


def printable(text: str) -> str:
    """text as it can be shown on one line of a terminal or a log: control and format characters
    (line breaks, ANSI escapes, bidirectional overrides) written as Python escapes, and a byte that
    was not UTF-8 (a surrogate, as os.fsdecode leaves it) as \\xNN."""
    if text.isprintable():
        return text
    return "".join(_escape(char) if unicodedata.category(char)[0] in "CZ" and char != " " else char
                   for char in text)


def _escape(char: str) -> str:
    if "\udc80" <= char <= "\udcff":
        return f"\\x{ord(char) - 0xdc00:02x}"
    return char.encode("unicode_escape").decode("ascii")


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
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise UrlError(f"{masked}: holds a byte that is not UTF-8; percent-encode it (%FF for \\xff)") from None
    if not url.isprintable():
        raise UrlError(f"{masked}: holds a line break, a control character or a space that is not a plain "
                       "space; percent-encode it") from None
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


def fetch_json(url: str, timeout: float, deadline: float, max_bytes: int,
               headers: Optional[Mapping[str, str]] = None, origin: Optional[str] = None,
               conditions: Optional[Mapping[str, str]] = None) -> Tuple[object, requests.Response]:
    """The JSON document at url (None if it answered 304 Not Modified) and the response, for its
    status and headers. SourceError (worth retrying) or UrlError (not) names the masked url and the
    cause. headers (the --header values) go only to the hops on origin's scheme, host and port
    (url's if not given), and are masked wherever a message could quote them; conditions (the
    page's validators) go to the hops on url's."""
    sent = _Sent(url, origin or url, headers or {}, conditions or {})
    masked = sent.mask_url(url)
    logger = prefect.context.get("logger", log)
    attempt = prefect.context.get("task_run_count", 1)
    started = time.monotonic()
    try:
        check_url(url)
        text, response, size = _get_text(sent, masked, timeout, deadline, max_bytes)
        payload = None if response.status_code == 304 else _parse_json(text, masked)
    except (SourceError, UrlError) as exc:
        logger.warning("Attempt %d failed after %.3f s: %s", attempt, time.monotonic() - started, exc)
        raise
    records = len(payload) if isinstance(payload, list) else "no"
    logger.info("GET %s: HTTP %d, %d bytes, %s records in %.3f s (attempt %d)",
                masked, response.status_code, size, records, time.monotonic() - started, attempt)
    return payload, response


class _Sent:
    """What one fetch sends, and to whom: the hops it visited (their secrets are masked in
    messages), the --header values and the origin they may go to, the page's validators."""

    def __init__(self, url: str, origin: str, headers: Mapping[str, str], conditions: Mapping[str, str]):
        self.visited = [url]
        self.origin, self.headers, self.conditions = origin, headers, conditions

    def headers_for(self, hop: str) -> dict:
        """The headers that may go to hop."""
        return {**headers_for(hop, self.origin, self.headers), **headers_for(hop, self.visited[0], self.conditions)}

    def mask(self, text: str) -> str:
        """text with the secrets of every hop and the header values masked."""
        return mask_text(text, *self.visited, values=self.headers.values())

    def mask_url(self, url: str) -> str:
        """url masked, and the header values in it (a source can echo them in a Location or a Link)."""
        return mask_values(mask_url(url), self.headers.values())


def _get_text(sent: _Sent, masked: str, timeout: float, deadline: float, max_bytes: int) -> tuple:
    """The body as text, the response and the body's size. It arrives in one growing buffer, which
    is gone before the text is parsed."""
    body = bytearray()
    watchdog = _Watchdog(deadline)
    try:
        with watchdog, _Session(watchdog) as session:
            # Connecting is bounded by the deadline too: the watchdog only sees connected sockets.
            response = _follow_redirects(session, sent, (min(timeout, deadline), timeout))
            with response:
                if response.status_code >= 300 and response.status_code != 304:
                    reason = sent.mask(response.reason or "")  # the server's words
                    raise SourceError(f"{masked} answered HTTP {response.status_code} {reason}")
                # read1 returns whatever has arrived, so the watchdog's shutdown ends the loop.
                while chunk := response.raw.read1(1 << 20, decode_content=True):
                    body += chunk
                    if len(body) > max_bytes:
                        raise SourceError(f"{masked} sent more than --max-bytes {max_bytes} bytes")
        if watchdog.expired:  # a body without a length ends, cut short, when its socket is shut
            raise watchdog.error(masked)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        if watchdog.expired:
            raise watchdog.error(masked) from None
        if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
            raise SourceError(f"{masked} did not answer within --timeout {timeout:g} s") from None
        raise SourceError(f"{masked} could not be read: {sent.mask(root_cause(exc))}") from None
    try:
        return body.decode("utf-8-sig"), response, len(body)
    except UnicodeDecodeError as exc:
        raise _not_json(masked, exc) from None


def _follow_redirects(session: requests.Session, sent: _Sent, timeout: tuple) -> requests.Response:
    """The response at the end of sent.visited[-1]'s redirects, its body unread; each hop is
    appended to sent.visited and logged masked. A redirect's body is never read: it could be any
    size."""
    logger = prefect.context.get("logger", log)
    visited = sent.visited
    while True:
        response = session.get(visited[-1], headers=sent.headers_for(visited[-1]), timeout=timeout, stream=True)
        current = sent.mask_url(visited[-1])
        try:
            target = session.redirect_target(response)
        except UnicodeDecodeError:  # requests reads a Location as UTF-8
            response.close()
            raise SourceError(f"{current} answered HTTP {response.status_code} with a Location that is not "
                              "UTF-8") from None
        if target is None:
            return response
        response.close()
        # A relative Location keeps the scheme, host and credentials; another host gets none.
        try:
            visited.append(urllib.parse.urljoin(visited[-1], target))
        except ValueError as exc:
            raise SourceError(f"{current} redirected to a Location that is not a valid URL ({exc})") from None
        following = sent.mask_url(visited[-1])
        if len(visited) > MAX_REDIRECTS + 1:
            raise SourceError(f"{sent.mask_url(visited[0])} redirected more than {MAX_REDIRECTS} times "
                              f"(the last time to {following}); give --url the final address")
        logger.info("GET %s: HTTP %d, redirected to %s", current, response.status_code, following)
        try:
            check_url(visited[-1])
        except UrlError as exc:
            raise SourceError(f"{current} redirected to {sent.mask(str(exc))}") from None


def _parse_json(text: str, masked: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _not_json(masked, exc) from None
    except RecursionError:
        raise SourceError(f"{masked} sent a body that is not valid JSON (nested too deeply)") from None


def _not_json(masked: str, exc: ValueError) -> SourceError:
    return SourceError(f"{masked} sent a body that is not valid JSON ({exc})")


def root_cause(exc: BaseException) -> str:
    """The innermost exception's message: 'Connection refused', not urllib3's wrapping."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class _Watchdog:
    """Bounds one fetch by its deadline wherever it is when the deadline passes (connecting,
    waiting for headers, reading a body): requests' own timeout bounds each read, not their sum,
    so a source that trickles header lines would never be cut off. It shuts down every socket the
    fetch connected; the read that waits on one then ends at once."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.ends = time.monotonic() + deadline
        self.fired = False
        self._sockets: List[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(min(deadline, threading.TIMEOUT_MAX), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> "_Watchdog":
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    @property
    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.ends

    def error(self, masked: str) -> SourceError:
        return SourceError(f"{masked} did not finish within --deadline {self.deadline:g} s")

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.fired:
                _shut_down(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: the fetch is over


class _WatchedConnection:
    """A urllib3 connection that hands its socket to the fetch's watchdog once connected."""

    def __init__(self, *args: object, watchdog: _Watchdog, **kwargs: object):
        super().__init__(*args, **kwargs)
        self.watchdog = watchdog

    def connect(self) -> None:
        super().connect()
        self.watchdog.watch(self.sock)


class _HTTPConnection(_WatchedConnection, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_WatchedConnection, urllib3.connection.HTTPSConnection):
    pass


_WATCHED = {urllib3.connection.HTTPConnection: _HTTPConnection,
            urllib3.connection.HTTPSConnection: _HTTPSConnection}


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' transport, with every connection it opens watched by the fetch's watchdog."""

    def __init__(self, watchdog: _Watchdog):
        self.watchdog = watchdog
        super().__init__()

    def get_connection_with_tls_context(self, *args, **kwargs) -> urllib3.HTTPConnectionPool:
        pool = super().get_connection_with_tls_context(*args, **kwargs)
        if pool.ConnectionCls in _WATCHED:
            pool.ConnectionCls = _WATCHED[pool.ConnectionCls]
            pool.conn_kw["watchdog"] = self.watchdog
        return pool


class _Session(requests.Session):
    """One fetch's session. It never follows a redirect itself: requests would read the redirect's
    body whole to free the connection, even when asked not to follow (to fill response.next)."""

    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        adapter = _Adapter(watchdog)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def get_redirect_target(self, resp: requests.Response) -> Optional[str]:
        return None

    def redirect_target(self, resp: requests.Response) -> Optional[str]:
        """Where resp redirects to, if it is a redirect; its body is not read."""
        return super().get_redirect_target(resp)
