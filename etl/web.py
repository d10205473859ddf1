"""The status server behind --listen: /healthz, /metrics and the status page (/), served from
daemon threads, one per connection, so no client can delay or block a run."""
import http.server
import json
import socketserver
import sys
import threading
import urllib.parse
from typing import Tuple

import prefect
from prefect import Flow
from prometheus_client import CONTENT_TYPE_LATEST

from etl import page
from etl.metrics import Metrics
from etl.status import Status

log = prefect.utilities.logging.get_logger(__name__)

IDLE_TIMEOUT = 10  # seconds a connection may wait between reads before it is closed
ALLOW = "GET, HEAD"


class Handler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD of /, /healthz and /metrics; 404 for other paths, 405 for other methods."""

    timeout = IDLE_TIMEOUT

    def version_string(self) -> str:
        return "prefectflow"

    def do_GET(self) -> None:
        self._answer(*self._route())

    def do_HEAD(self) -> None:
        self._answer(*self._route(), with_body=False)

    def refuse(self) -> None:
        self._answer(405, "text/plain; charset=utf-8", b"Only GET and HEAD are served.\n", allow=True)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = refuse

    def _route(self) -> Tuple[int, str, bytes]:
        path = urllib.parse.urlsplit(self.path).path
        server = self.server
        if path == "/healthz":
            code, health = server.status.health()
            return code, "application/json", (json.dumps(health, indent=2, ensure_ascii=False) + "\n").encode()
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, server.metrics.text()
        if path == "/":
            code, health = server.status.health()
            runs, states, finished = server.status.recent()
            svg = server.diagram.svg(finished, states)
            return 200, "text/html; charset=utf-8", page.render(code, health, runs, svg, server.refresh).encode()
        return 404, "text/plain; charset=utf-8", b"Not found. Try /, /healthz or /metrics.\n"

    def _answer(self, code: int, kind: str, body: bytes, with_body: bool = True, allow: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if allow:
            self.send_header("Allow", ALLOW)
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("status server: " + format, *args)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would look the host's name up in DNS
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: object, client_address: tuple) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):  # a client that went away is no news
            log.error("Status server failed to answer %s: %s: %s", client_address[0], type(exc).__name__, exc)


def start(host: str, port: int, status: Status, metrics: Metrics, flow: Flow, refresh: int) -> Server:
    """Listen on host:port (port 0: any free port) and serve in a daemon thread; OSError if it cannot
    listen there."""
    server = Server((host, port), Handler)
    server.status, server.metrics, server.diagram, server.refresh = status, metrics, page.Diagram(flow), refresh
    threading.Thread(target=server.serve_forever, name="status-server", daemon=True).start()
    log.info("Serving on http://%s:%d", *server.server_address[:2])
    return server
