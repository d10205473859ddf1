"""A scriptable HTTP server on 127.0.0.1, and helpers to run the command line and the service."""
import http.server
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "prefectflow.py"
TODOS = [
    {"userId": 1, "id": 1, "title": "delectus aut autem", "completed": False},
    {"userId": 1, "id": 2, "title": "señal \"rota\"", "completed": True},
    {"userId": 2, "id": 3, "title": "fugiat veniam minus", "completed": False},
]
RECORDS = [
    {"UsuarioID": 1, "ID": 1, "Titulo": "delectus aut autem", "Completado": False},
    {"UsuarioID": 1, "ID": 2, "Titulo": "señal \"rota\"", "Completado": True},
    {"UsuarioID": 2, "ID": 3, "Titulo": "fugiat veniam minus", "Completado": False},
]
# What load writes for RECORDS, byte for byte.
RECORDS_JSON = json.dumps(RECORDS, indent=4, ensure_ascii=False).encode("utf-8")


def ok(payload=TODOS, **headers):
    """Answer 200 with payload as JSON (bytes go as they are), and these headers (ETag=..., Link=...;
    Last_Modified for Last-Modified)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return lambda handler: handler.answer(200, body, headers)


def cached(payload=TODOS, **headers):
    """As ok, but answer 304 Not Modified, with the same headers, to a request whose If-None-Match
    or If-Modified-Since is the ETag or Last-Modified given here."""
    def act(handler):
        asked = handler.headers.get("If-None-Match"), handler.headers.get("If-Modified-Since")
        if any(value is not None and value in asked for value in (headers.get("ETag"), headers.get("Last_Modified"))):
            handler.answer(304, b"", headers)
        else:
            ok(payload, **headers)(handler)
    return act


def status(code):
    return lambda handler: handler.answer(code, b'{"error": "scripted"}')


def slow(seconds, payload=TODOS):
    """Answer 200 with payload after a while."""
    def act(handler):
        handler.server.stopping.wait(seconds)
        ok(payload)(handler)
    return act


def hang(seconds=5.0):
    """Accept the request and say nothing for a while."""
    return lambda handler: handler.server.stopping.wait(seconds)


def trickle(total=10_000, every=0.05):
    """Promise total bytes, then send one every `every` seconds."""
    def act(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        for _ in range(total):
            if handler.server.stopping.wait(every):
                return
            handler.wfile.write(b" ")
            handler.wfile.flush()
    return act


def huge(size):
    """Answer 200 with size bytes of a JSON list, streamed without a length."""
    def act(handler):
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(b"[" + b" " * (size - 2) + b"]")
        handler.close_connection = True
    return act


def redirect(location, code=302, inflates_to=0):
    """Redirect to location with a gzip body of inflates_to zero bytes, sent one byte short of its
    Content-Length: a client that reads the body waits for that byte until it gives up."""
    body = gzip_zeros(inflates_to)  # made once, here: compressing it must not delay the answer

    def act(handler):
        handler.send_response(code)
        handler.send_header("Location", location)
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(body) + 1))
        handler.end_headers()
        handler.wfile.write(body)
        handler.server.stopping.wait(60)
        handler.close_connection = True
    return act


def gzip_zeros(size):
    packer = zlib.compressobj(wbits=31)  # 31: the gzip format
    chunk = bytes(1 << 20)
    packed = [packer.compress(chunk[:size - done]) for done in range(0, size, len(chunk))]
    return b"".join(packed) + packer.flush()


def slow_headers(every=0.3):
    """Send the status line, then a header line every `every` seconds, without end."""
    def act(handler):
        handler.send_response(200)
        handler.flush_headers()
        sent = 0
        while not handler.server.stopping.wait(every):
            handler.send_header("X-Slow", str(sent))
            handler.flush_headers()
            sent += 1
    return act


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        script = self.server.scripts.get(self.path, [status(404)])
        count = self.server.hits[self.path]
        self.server.hits[self.path] += 1
        self.server.asked.setdefault(self.path, []).append(dict(self.headers))
        script[min(count, len(script) - 1)](self)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.bodies[self.path].append(json.loads(body))
        self.do_GET()

    def handle(self):
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):
            pass  # the client gave up on the answer: a timeout, a cut-off, a failed status

    def answer(self, code, body, headers=None):
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name.replace("_", "-"), value)
        if code != 304:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Source:
    """Serves scripted answers per path: the n-th request gets the n-th action, the last repeats."""

    def __init__(self, host="127.0.0.1"):
        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.server.scripts, self.server.hits = {}, Counter()
        self.server.bodies, self.server.asked = defaultdict(list), {}
        self.server.stopping = threading.Event()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, path, *actions):
        self.server.scripts[path] = list(actions)
        return self.url(path)

    def url(self, path):
        return "http://%s:%d%s" % (*self.server.server_address, path)

    def hits(self, path):
        return self.server.hits[path]

    def bodies(self, path):
        """The JSON bodies POSTed to path, in order."""
        return list(self.server.bodies[path])

    def asked(self, path):
        """The headers of each request for path, in order."""
        return self.server.asked.get(path, [])

    def close(self):
        self.server.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def source():
    server = Source()
    yield server
    server.close()


@pytest.fixture
def other_source():
    """A second source on another loopback address, 127.0.0.2: another origin than source's."""
    server = Source("127.0.0.2")
    yield server
    server.close()


def can_unshare(*namespaces):
    """Whether unshare can give a process these namespaces of its own (root, and not in a chroot
    for --mount, whose private propagation needs / to be a mount point)."""
    try:
        return subprocess.run(["unshare", *namespaces, "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def cli(*args, cwd=None, env=None, timeout=300):
    """Run prefectflow.py in a subprocess; the finished process, output as text."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )


def last_line(text):
    return text.strip().splitlines()[-1]


@pytest.fixture
def good_output(tmp_path):
    """An output file that holds the last good run's bytes."""
    path = tmp_path / "datos.json"
    path.write_bytes(RECORDS_JSON)
    return path


def caught_writing(proc, output, deadline=180):
    """Wait until proc has a temporary file beside output (True), or has replaced output or ended
    before one was seen (False): on a busy machine the write can come and go between two looks."""
    inode = output.stat().st_ino if output.exists() else None
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if any(name.endswith(".tmp") for name in os.listdir(output.parent)):
            return True
        if proc.poll() is not None or (output.exists() and output.stat().st_ino != inode):
            return False
        time.sleep(0)
    raise AssertionError(f"no write to {output} within {deadline} s")


def wait_for(condition, what, deadline=180):
    """condition()'s first true value, asked until the deadline."""
    end = time.monotonic() + deadline
    while not (value := condition()):
        assert time.monotonic() < end, f"no {what} within {deadline} s"
        time.sleep(0.02)
    return value


def history(path):
    """The runs in a --history file."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [json.loads(line) for line in lines]


class Service:
    """prefectflow.py running on its schedule with --listen (127.0.0.1:0 unless told) and --history,
    in a subprocess, with at most max_fds open files if told; its log goes to a file, where it says
    which port it took."""

    def __init__(self, tmp_path, *args, listen="127.0.0.1:0", max_fds=None, env=None):
        self.log, self.history = tmp_path / "service.log", tmp_path / "runs.jsonl"
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))) if max_fds else None
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), "--listen", listen, "--history", str(self.history),
                 "--output", str(tmp_path / "datos.json"), *map(str, args)],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit, env={**os.environ, **(env or {})})
        self.url = wait_for(self._served_at, "'Serving on' line in the log")
        self.port = int(self.url.rsplit(":", 1)[1])

    def _served_at(self):
        assert self.proc.poll() is None, self.log.read_text()
        found = re.search(r"Serving on (http://[^\s]+:\d+)\n", self.log.read_text())
        return found and found.group(1)

    def runs(self, count=1):
        """The runs in the history, once there are at least count."""
        return wait_for(lambda: len(runs := history(self.history)) >= count and runs, f"{count} runs")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture
def service(tmp_path):
    """Starts the service with the given options; stops it after the test."""
    started = []

    def start(*args, **options):
        started.append(Service(tmp_path, *args, **options))
        return started[-1]
    yield start
    for running in started:
        running.stop()


def invalid_choice(value, choices):
    """argparse's words for a value that is not one of choices, as this Python writes them
    (3.12.8 and 3.13.1 stopped quoting the choices)."""
    import argparse

    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("x", choices=choices)
    try:
        parser.parse_args([value])
    except argparse.ArgumentError as exc:
        return str(exc).split(": ", 1)[1]
    raise AssertionError(f"{value!r} is one of {choices}")
