"""The loopback server behind --demo: the bundled sample, with a 503 first to show a retry."""
import http.server
import threading

import prefect

from etl.settings import SAMPLE

log = prefect.utilities.logging.get_logger(__name__)


class DemoHandler(http.server.BaseHTTPRequestHandler):
    """Serves the bundled sample at any path; the first request gets 503, to show a retry."""

    requests_seen = 0

    def do_GET(self):
        type(self).requests_seen += 1
        body = SAMPLE.read_bytes()
        status = 503 if type(self).requests_seen == 1 else 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if status == 200 else 0))
        self.end_headers()
        if status == 200:
            self.wfile.write(body)

    def log_message(self, format, *args):
        log.debug("demo server: " + format, *args)


def start_demo_server() -> http.server.HTTPServer:
    """A loopback server for --demo, on a free port, in a daemon thread."""
    handler = type("Handler", (DemoHandler,), {"requests_seen": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def demo_url(server: http.server.HTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/todos"
