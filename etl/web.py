"""The status server behind --listen: /healthz, /metrics and the status page (/).

One thread serves every client, waiting on all their sockets at once (selectors): a client can hold
neither a thread nor more than its share of file descriptors, and each has REQUEST_DEADLINE seconds
from its connection to the last byte of the answer, however it trickles. The runs never wait for it.
"""
import email.utils
import errno
import http
import ipaddress
import json
import re
import resource
import selectors
import socket
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import prefect
from prefect import Flow
from prometheus_client import CONTENT_TYPE_LATEST

from etl import page
from etl.metrics import Metrics
from etl.status import Status

log = prefect.utilities.logging.get_logger(__name__)

REQUEST_DEADLINE = 10.0  # seconds from accepting a connection to the last byte of its answer
MAX_CONNECTIONS = 256  # open at once, at most; fewer under a low fd limit (see connection_limit)
FD_SHARE = 4  # ... at most a quarter of the soft fd limit: the rest stays for the runs
MAX_HEAD = 8192  # bytes of request line and headers
BACKLOG = 128  # connections the kernel holds until they are accepted: they cost us no fd
PAUSE = 0.5  # seconds without accepting when the process has no fd left, instead of spinning
GRACE = 0.2  # seconds a new client has to send its request before a newer one may take its place
ALLOW = "GET, HEAD"
HEADERS = {  # on every answer: the page runs no script, loads nothing, and is never framed or sniffed
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Connection": "close",
}
TEXT = "text/plain; charset=utf-8"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a method's characters (RFC 9110)
_HOST = re.compile(r"(?P<name>\[[0-9A-Fa-f:.]+\]|[^:\[\]]*)(?::[0-9]*)?")  # name or [v6], then :port

Answer = Tuple[int, str, bytes, Dict[str, str]]  # status, Content-Type, body, more headers


def connection_limit() -> int:
    """How many clients may be connected at once: MAX_CONNECTIONS, or a quarter of the soft fd
    limit when that is less, so clients can never take the fds a run needs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft // FD_SHARE))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(host: Optional[str], listen_host: str) -> bool:
    """Whether a loopback server answers a request with this Host header: localhost, a loopback
    address or the --listen host, with any port or none. Another name may be a DNS rebinding:
    a web page whose own name was made to resolve to 127.0.0.1, reading us from a browser."""
    if host is None:
        return True  # not a browser: every browser sends Host
    match = _HOST.fullmatch(host.strip())
    if not match:
        return False
    name = match["name"].lower().rstrip(".")
    if name.startswith("["):
        name = name[1:-1]
    return name in ("localhost", listen_host.lower()) or is_loopback(name)


class Request:
    """A request's line and headers, parsed from its head; error is set instead when they are bad."""

    def __init__(self, head: bytes):
        self.method = self.target = ""
        self.headers: Dict[str, List[str]] = {}
        self.error: Optional[Answer] = None
        lines = head.decode("latin-1").split("\n")
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        while lines and not lines[0]:
            lines.pop(0)  # empty lines before the request line may be ignored (RFC 9112)
        parts = lines[0].split(" ") if lines else []
        if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not re.fullmatch(r"HTTP/\d\.\d", parts[2]):
            self.error = _text(400, "Bad request: expected a request line such as GET / HTTP/1.1.\n")
            return
        self.method, self.target, version = parts
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            self.error = _text(505, "Only HTTP/1.0 and HTTP/1.1 are served.\n")
            return
        for line in lines[1:]:
            if not line:
                break
            name, colon, value = line.partition(":")
            if not colon or not _TOKEN.fullmatch(name):  # folded lines, spaces before the colon: refused
                self.error = _text(400, "Bad request: a header line is malformed.\n")
                return
            self.headers.setdefault(name.lower(), []).append(value.strip(" \t"))


class App:
    """What the server answers: the routes over Status and Metrics, and the rules before them."""

    def __init__(self, status: Status, metrics: Metrics, flow: Flow, refresh: int, listen_host: Optional[str]):
        self.status, self.metrics, self.diagram, self.refresh = status, metrics, page.Diagram(flow), refresh
        self.listen_host = listen_host  # None: any Host is answered (not a loopback address)

    def answer(self, request: Request) -> Answer:
        if request.error:
            return request.error
        hosts = request.headers.get("host", [])
        if len(hosts) > 1:
            return _text(400, "Bad request: more than one Host header.\n")
        if self.listen_host is not None and not host_allowed(hosts[0] if hosts else None, self.listen_host):
            return _text(421, "This server answers only to localhost and loopback addresses: "
                              "reach it through a proxy that sets one as Host.\n")
        if request.method not in ("GET", "HEAD"):
            return _text(405, "Only GET and HEAD are served.\n", Allow=ALLOW)
        if not request.target.startswith("/"):
            return _text(400, "Bad request: the target must be a path, such as /healthz.\n")
        return self.route(request.target.partition("?")[0])

    def route(self, path: str) -> Answer:
        if path == "/healthz":
            code, health = self.status.health()
            return code, "application/json", _encode(json.dumps(health, indent=2, ensure_ascii=False) + "\n"), {}
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self.metrics.text(), {}
        if path == "/":
            code, health = self.status.health()
            runs, states, finished = self.status.recent()
            svg = self.diagram.svg(finished, states)
            return 200, "text/html; charset=utf-8", _encode(page.render(code, health, runs, svg, self.refresh)), {}
        return _text(404, "Not found. Try /, /healthz or /metrics.\n")


def _text(code: int, text: str, **headers: str) -> Answer:
    return code, TEXT, text.encode(), headers


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "replace")  # a lone surrogate read back from a file becomes "?"


def response(code: int, kind: str, body: bytes, headers: Dict[str, str], with_body: bool) -> bytes:
    """The bytes of an answer, head and (unless to a HEAD) body."""
    fields = {"Server": "prefectflow", "Date": email.utils.formatdate(usegmt=True), "Content-Type": kind,
              "Content-Length": str(len(body)), **HEADERS, **headers}
    lines = [f"HTTP/1.1 {code} {http.HTTPStatus(code).phrase}"] + [f"{name}: {value}" for name, value in fields.items()]
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("latin-1") + (body if with_body else b"")


class Connection:
    """One client: its request read into a buffer, then its answer written from one, by deadline."""

    def __init__(self, sock: socket.socket, since: float):
        self.sock, self.since, self.deadline = sock, since, since + REQUEST_DEADLINE
        self.inbox, self.outbox = bytearray(), b""
        self.answered = False  # the answer is written: what the client still sends is drained

    def head(self) -> Optional[bytes]:
        """The request's head once it has arrived whole, else None."""
        end = re.search(rb"\r?\n\r?\n", self.inbox.lstrip(b"\r\n"))
        return bytes(self.inbox.lstrip(b"\r\n")[:end.end()]) if end else None


class Server:
    """Listens on host:port and serves every client from the one thread that runs serve_forever();
    self.app answers each request."""

    def __init__(self, host: str, port: int, limit: int):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.sock.listen(BACKLOG)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()[:2]
        self.limit = limit
        self.app: Callable[[Request], Answer] = lambda request: _text(404, "Nothing is served yet.\n")
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)
        # Oldest first: all have the same time to live, so their deadlines come in this order too.
        self.clients: Dict[socket.socket, Connection] = {}
        self.paused_until = 0.0  # not accepting until then (monotonic); 0: accepting

    def serve_forever(self) -> None:
        while True:
            self.serve_once()

    def serve_once(self) -> None:
        """Wait for what comes first, a client or a deadline, and handle it."""
        if self.paused_until and time.monotonic() >= self.paused_until:
            self.paused_until = 0.0
            self.selector.register(self.sock, selectors.EVENT_READ)
        calling = False
        for key, events in self.selector.select(self._wait()):
            if key.fileobj is self.sock:
                calling = True
            elif key.fileobj in self.clients:
                self._serve(key.data, events)
        if calling:  # once the clients already in were read
            self._accept()
        now = time.monotonic()
        while self.clients and (oldest := next(iter(self.clients.values()))).deadline <= now:
            self._close(oldest)  # its time is up, whatever it was doing

    def _wait(self) -> Optional[float]:
        """Seconds until the oldest client's deadline or the end of a pause; None: until a client comes."""
        ends = [self.paused_until] if self.paused_until else []
        if self.clients:
            ends.append(next(iter(self.clients.values())).deadline)
        return max(0.0, min(ends) - time.monotonic()) if ends else None

    def _accept(self) -> None:
        """Accept the connections waiting. When all places are taken, the oldest client makes room,
        once it has had GRACE seconds to send its request: until then, the next wait in the
        kernel's backlog."""
        while True:
            full = len(self.clients) >= self.limit
            if full and (oldest := next(iter(self.clients.values()))).since + GRACE > time.monotonic():
                return self._pause(oldest.since + GRACE)  # all are new: the next waits in the backlog
            try:
                sock, _ = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The process is out of fds (the runs hold them): wait for them instead of spinning.
                    log.warning("Status server: cannot accept a connection: %s; pausing %g s", exc.strerror, PAUSE)
                    self._pause(time.monotonic() + PAUSE)
                return  # ECONNABORTED and the like: that client is gone
            if full:
                self._close(next(iter(self.clients.values())))
            sock.setblocking(False)
            client = Connection(sock, time.monotonic())
            self.clients[sock] = client
            self.selector.register(sock, selectors.EVENT_READ, client)

    def _pause(self, until: float) -> None:
        """Accept no connection until then (monotonic)."""
        self.selector.unregister(self.sock)
        self.paused_until = until

    def _serve(self, client: Connection, events: int) -> None:
        try:
            if events & selectors.EVENT_READ:
                data = client.sock.recv(65536)
                if not data:
                    return self._close(client)  # the client is gone, or done after our answer
                if client.answered:
                    return  # what it sends after the answer is dropped, so that closing resets nothing
                client.inbox += data
                head = client.head()
                if head is None and len(client.inbox) <= MAX_HEAD:
                    return
                self._answer(client, head)
            elif events & selectors.EVENT_WRITE:
                self._write(client)
        except OSError:
            self._close(client)
        except Exception as exc:  # a bug: this client goes, the server goes on
            log.error("Status server failed to serve a client: %s: %s", type(exc).__name__, exc)
            self._close(client)

    def _answer(self, client: Connection, head: Optional[bytes]) -> None:
        if head is None or len(head) > MAX_HEAD:
            request = None
            code, kind, body, extra = _text(431, f"The request line and headers take more than {MAX_HEAD} bytes.\n")
        else:
            request = Request(head)
            try:
                code, kind, body, extra = self.app(request)
            except Exception as exc:  # a bug: one answer fails, the server goes on
                log.error("Status server failed to answer %s %s: %s: %s",
                          request.method, request.target[:100], type(exc).__name__, exc)
                code, kind, body, extra = _text(500, "Internal error; the log says more.\n")
        log.debug("status server: %s %s %d", request.method if request else "-",
                  request.target[:100] if request else "-", code)
        client.outbox = response(code, kind, body, extra, with_body=not request or request.method != "HEAD")
        client.inbox = bytearray()
        client.answered = True
        self.selector.modify(client.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)
        self._write(client)

    def _write(self, client: Connection) -> None:
        sent = client.sock.send(client.outbox)
        client.outbox = client.outbox[sent:]
        if not client.outbox:
            # Answered: half-close, and wait (until its deadline) for the client to close its side,
            # reading what it still sends, so that a close does not reset the answer away.
            client.sock.shutdown(socket.SHUT_WR)
            self.selector.modify(client.sock, selectors.EVENT_READ, client)

    def _close(self, client: Connection) -> None:
        self.clients.pop(client.sock, None)
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()


def start(host: str, port: int, status: Status, metrics: Metrics, flow: Flow, refresh: int) -> Server:
    """Listen on host:port (port 0: any free port) and serve in a daemon thread; OSError if it cannot
    listen there. On a loopback address, only requests for a loopback Host are answered."""
    server = Server(host, port, connection_limit())
    server.app = App(status, metrics, flow, refresh, host if is_loopback(server.address[0]) else None).answer
    threading.Thread(target=server.serve_forever, name="status-server", daemon=True).start()
    shown = f"[{server.address[0]}]" if ":" in server.address[0] else server.address[0]
    log.info("Serving on http://%s:%d", shown, server.address[1])
    log.debug("Status server: at most %d clients at once, %g s each", server.limit, REQUEST_DEADLINE)
    return server
