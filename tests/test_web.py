"""etl.web: --listen's routes, asked over real HTTP of the service running in a subprocess."""
import datetime
import html.parser
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading

import pytest
import requests
from conftest import ROOT, cached, cli, ok, status, wait_for
from prometheus_client.parser import text_string_to_metric_families
from test_page import BAD_RUNS

CHROMIUM = shutil.which("chromium")
SAFE = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                   "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def get(service, path, **kwargs):
    return requests.get(service.url + path, timeout=30, **kwargs)


def metrics(service):
    """{sample name and labels: value} of /metrics, read by prometheus_client's own parser."""
    text = get(service, "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def when(iso):
    return datetime.datetime.fromisoformat(iso)


def test_healthz_and_metrics_describe_the_last_run_and_the_next(service, source):
    url = source.add("/todos", ok())
    running = service("--interval", 60, "--url", url)
    (run,) = running.runs()
    next_run = (when(run["scheduled"]) + datetime.timedelta(seconds=60)).isoformat()
    # The history line is written before the watches hear of the run: wait for them to.
    wait_for(lambda: get(running, "/healthz").json()["next_run"] == next_run, "next run in /healthz")

    answer = get(running, "/healthz")
    assert (answer.status_code, answer.headers["Content-Type"]) == (200, "application/json")
    health = answer.json()
    assert health == {"status": "ok", "last_success": run["finished"], "next_run": next_run,
                      "stale_after": 180.0, "started": health["started"], "last_run": run}
    assert when(health["started"]) <= when(run["started"])

    values = metrics(running)
    assert {name for name, _ in values} == {
        "prefectflow_runs_total", "prefectflow_extract_attempts_total", "prefectflow_records_written",
        "prefectflow_last_success_timestamp_seconds", "prefectflow_run_duration_seconds_bucket",
        "prefectflow_run_duration_seconds_count", "prefectflow_run_duration_seconds_sum",
        "prefectflow_next_run_timestamp_seconds", "prefectflow_output_unchanged"}
    assert values[("prefectflow_runs_total", (("state", "success"),))] == 1
    assert values[("prefectflow_runs_total", (("state", "failed"),))] == 0
    assert values[("prefectflow_extract_attempts_total", ())] == 1
    assert values[("prefectflow_records_written", ())] == 3
    assert values[("prefectflow_output_unchanged", ())] == 0
    assert values[("prefectflow_last_success_timestamp_seconds", ())] == when(run["finished"]).timestamp()
    assert values[("prefectflow_next_run_timestamp_seconds", ())] == when(next_run).timestamp()
    assert values[("prefectflow_run_duration_seconds_count", ())] == 1
    assert values[("prefectflow_run_duration_seconds_sum", ())] == pytest.approx(
        (when(run["finished"]) - when(run["started"])).total_seconds())
    assert source.hits("/todos") == 1


def test_only_get_and_head_of_three_paths_are_served(service, source):
    running = service("--interval", 60, "--url", source.add("/todos", ok()))
    for path, kind in [("/", "text/html; charset=utf-8"), ("/healthz", "application/json"),
                       ("/metrics", "text/plain; version=1.0.0; charset=utf-8")]:
        got, head = get(running, path), requests.head(running.url + path, timeout=30)
        assert (got.status_code, got.headers["Content-Type"]) == (200, kind)
        assert (head.status_code, head.headers["Content-Type"], head.content) == (200, kind, b"")
        assert int(head.headers["Content-Length"]) > 0
    missing = get(running, "/nope")
    assert (missing.status_code, missing.text) == (404, "Not found. Try /, /healthz or /metrics.\n")
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND", "TRACE", "BREW"):
        refused = requests.request(method, running.url + "/healthz", timeout=30, data=b"x" * 100_000)
        assert (refused.status_code, refused.headers["Allow"], refused.text) == (
            405, "GET, HEAD", "Only GET and HEAD are served.\n")
    assert answer(running.port, b"CONNECT example.org:443 HTTP/1.1\r\nHost: localhost\r\n\r\n")[0] == 405


def test_every_answer_forbids_scripts_framing_and_sniffing(service, source):
    running = service("--interval", 60, "--url", source.add("/todos", ok()))
    for method, path in [("GET", "/"), ("HEAD", "/healthz"), ("GET", "/metrics"), ("GET", "/nope"), ("TRACE", "/")]:
        headers = requests.request(method, running.url + path, timeout=30).headers
        assert {name: headers[name] for name in SAFE} == SAFE, (method, path)


def answer(port, request, host="127.0.0.1"):
    """Send request's bytes as they are; the status and the body of the answer, read until the
    server closes."""
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


def test_odd_requests_get_a_clear_answer(service, source):
    running = service("--interval", 60, "--url", source.add("/todos", ok()))
    cases = [
        (b"GET /healthz HTTP/1.0\r\n\r\n", 200),  # no Host: not a browser
        (b"\r\nGET /healthz?x=1&y HTTP/1.1\nHost: localhost\n\n", 200),
        (b"GET //x HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
        (b"GET //[ HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
        (b"GET /\xff\x00 HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
        (b"GET /%2e%2e/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
        (b"GET /healthz/ HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
        (b"GET ? HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET http://127.0.0.1/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET /\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS, or bytes like it
        (b"GET / HTTP/1.1\r\nHost: localhost\r\n X-Folded: y\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : localhost\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\n\r\n", 431),
    ]
    for request, code in cases:
        assert answer(running.port, request)[0] == code, request[:60]
    assert answer(running.port, b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n") == (
        431, "The request line and headers take more than 8192 bytes.\n")
    assert get(running, "/healthz").status_code == 200  # and the server goes on


def test_a_loopback_server_answers_only_a_loopback_host(service, source):
    """A page whose name was rebound to 127.0.0.1 cannot read the status page from a browser."""
    running = service("--interval", 60, "--url", source.add("/todos", ok()))
    for host in ["localhost", "localhost:9100", "LocalHost.", "127.0.0.1", "127.0.0.2:80", "[::1]", "[::1]:8080",
                 f"127.0.0.1:{running.port}"]:
        assert get(running, "/healthz", headers={"Host": host}).status_code == 200, host
    for host in ["evil.example", f"evil.example:{running.port}", "127.0.0.1.nip.io", "localhost.evil.example",
                 "0.0.0.0", "192.168.1.1", "2130706433", "[::1", "[fe80::1]:80", "", "localhost:x"]:
        for path in ("/", "/healthz", "/metrics"):
            refused = get(running, path, headers={"Host": host})
            assert (refused.status_code, refused.text) == (421, (
                "This server answers only to localhost and loopback addresses: "
                "reach it through a proxy that sets one as Host.\n")), host


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="needs an IPv6 loopback address")
def test_it_listens_on_an_ipv6_address(service, source):
    running = service("--interval", 60, "--url", source.add("/todos", ok()), listen="[::1]:0")
    assert running.url.startswith("http://[::1]:")
    assert get(running, "/healthz").status_code == 200
    assert answer(running.port, b"GET /healthz HTTP/1.1\r\nHost: [::1]:1\r\n\r\n", host="::1")[0] == 200
    assert answer(running.port, b"GET /healthz HTTP/1.1\r\nHost: evil.example\r\n\r\n", host="::1")[0] == 421


def test_healthz_answers_503_once_no_run_succeeded_within_stale_after_and_200_once_one_does(service, source):
    url = source.add("/todos", status(503))
    running = service("--interval", 1, "--retries", 0, "--stale-after", 1.5, "--url", url)
    # Before the first run ends it may be "stale" (503 too), on a busy machine: wait for "failing".
    health = wait_for(lambda: (found := health_if(running, 503)) and found["status"] == "failing" and found,
                      "503 failing from /healthz")
    assert health["last_success"] is None
    assert health["last_run"]["error"] == f"extract failed: {url} answered HTTP 503 Service Unavailable"

    source.add("/todos", ok())
    health = wait_for(lambda: health_if(running, 200), "200 from /healthz")
    assert health["status"] == "ok"
    assert health["last_success"] == health["last_run"]["finished"]


def health_if(service, code):
    """/healthz's JSON if it answers with code."""
    answer = get(service, "/healthz")
    return answer.json() if answer.status_code == code else None


def test_idle_connections_hold_up_neither_runs_nor_other_clients(service, source):
    running = service("--interval", 1, "--url", source.add("/todos", ok()))
    port = int(running.url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    for sock in idle[::2]:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # half a request, never finished
    held_from = len(running.runs())
    running.runs(held_from + 2)  # two more runs while all 20 are open
    assert get(running, "/healthz").status_code == 200
    for sock in idle:  # then each is closed by the server, having sent nothing in time
        sock.settimeout(60)
        assert sock.recv(1) == b""
        sock.close()


def test_bad_history_lines_never_break_the_status_page(service, source, tmp_path):
    lines = [json.dumps(run).encode() for run in BAD_RUNS] + [b"[1, 2]", b"not json", b'{"error": "\xff"}', b"{"]
    (tmp_path / "runs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    running = service("--interval", 60, "--url", source.add("/todos", ok()))
    wait_for(lambda: get(running, "/healthz").json()["status"] == "ok", "a run")
    page = get(running, "/")
    assert page.status_code == 200
    assert f"<td class=\"bad\">?</td><td class=\"num\">{{&#x27;a&#x27;: [1]}}</td>" in page.text
    assert "<td>lone ? surrogate</td>" in page.text
    assert page.text.count("<tr><td>") == len(BAD_RUNS) + 1  # the lines that are not objects: skipped


def test_a_client_that_trickles_its_request_is_cut_off_at_the_deadline(service, source):
    """A byte every 0.1 s never leaves the connection idle, but the whole request has 10 s."""
    running = service("--interval", 60, "--url", source.add("/todos", ok()))
    with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
        for byte in (b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 600)[:600]:  # 60 s of bytes
            try:
                sock.send(bytes([byte]))
                if select.select([sock], [], [], 0.1)[0]:
                    assert sock.recv(1) == b""  # closed, without an answer
                    break
            except ConnectionResetError:
                break
        else:
            raise AssertionError("a client that trickled for 60 s was never cut off")


def test_a_port_in_use_is_one_line_and_exit_1_before_any_run(source, good_output):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("--listen", f"127.0.0.1:{port}", "--interval", 1, "--runs", 1,
                     "--url", source.add("/todos", ok()), "--output", good_output)
    assert (result.returncode, result.stderr) == (
        1, f"prefectflow.py: error: cannot listen on --listen 127.0.0.1:{port}: Address already in use\n")
    assert source.hits("/todos") == 0


class Text(html.parser.HTMLParser):
    """The text a browser shows of a DOM, spaces collapsed: all but <style> and <title> (the SVG's
    nodes have titles that show only as tooltips), a space between blocks and cells."""

    INLINE = ("a", "span", "code")

    def __init__(self, dom):
        super().__init__()
        self.parts, self.skipping = [], False
        self.feed(dom)
        self.text = " ".join("".join(self.parts).split())

    def handle_starttag(self, tag, attrs):
        self.skipping = tag in ("style", "title")
        if tag not in self.INLINE:
            self.parts.append(" ")

    def handle_endtag(self, tag):
        self.skipping = False
        if tag not in self.INLINE:
            self.parts.append(" ")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_the_status_page_in_headless_chromium(service, source, tmp_path):
    url = source.add("/todos?token=s3cret", status(503), ok())
    running = service("--interval", 1, "--retries", 0, "--stale-after", 600, "--url", url)  # a busy machine: not stale
    first, second = running.runs(2)[:2]
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium'}",
         "--dump-dom", running.url + "/"],
        capture_output=True, text=True, timeout=120).stdout
    text = Text(dom).text
    masked = url.replace("s3cret", "***")
    assert "s3cret" not in dom and "<script" not in dom
    assert text.startswith("prefectflow: ok Health ok (HTTP 200; 503 after 600 s without")
    assert f"Sources {masked} Output {tmp_path / 'datos.json'} The flow, coloured by the last run " in text
    drawn = text.split(" The flow, coloured by the last run ")[1].split(" The last ")[0]
    assert sorted(drawn.split()) == ["extract", "load", "parametro_url", "records", "records", "transform", "url"]
    assert "Start State Records Output Attempts Duration Error" in text
    assert (f"{when(second['started']):%Y-%m-%d %H:%M:%S} UTC Success 3 replaced 1" in text)
    assert (f"{when(first['started']):%Y-%m-%d %H:%M:%S} UTC Failed 0 1" in text)
    assert text.endswith(f"extract failed: {masked} answered HTTP 503 Service Unavailable "
                         "This page reloads every 5 s. Also: healthz, metrics.")
    assert dom.count('fill="#28a745"') == 4  # the diagram: every task green, after a success


def test_after_an_unchanged_run_the_page_and_metrics_count_what_the_output_holds(service, source):
    url = source.add("/todos", cached(ETag='"v1"'))
    running = service("--interval", 1, "--url", url)
    first, second = running.runs(2)[:2]
    assert [(r["changed"], r["records"]) for r in (first, second)] == [(True, 3), (False, 3)]
    values = wait_for(lambda: (v := metrics(running))[("prefectflow_runs_total", (("state", "success"),))] >= 2 and v,
                      "two runs in /metrics")
    page = get(running, "/").text
    running.stop()  # no more runs: the newest lines of the page and the metrics are the second run's or later
    assert values[("prefectflow_records_written", ())] == 3  # not 0: the output still holds 3
    assert values[("prefectflow_output_unchanged", ())] == 1
    assert '<td class="good">Success</td><td class="num">3</td><td>unchanged</td>' in page
    assert '<td class="good">Success</td><td class="num">3</td><td>replaced</td>' in page
    assert "1 pages" not in running.log.read_text() and ", 1 page, " in running.log.read_text()
class Crowd:
    """count slow clients of a server, from a thread of their own: each sends a byte of a request
    that never ends every `every` seconds, and whichever the server drops connects again, until
    stopped. Their number stays above what the server may hold, in count and in fds."""

    def __init__(self, port, count, every=0.5):
        self.port, self.count, self.every = port, count, every
        self.sockets, self.dropped, self.full = [], 0, threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stopping.set()
        self.thread.join(60)
        for sock in self.sockets:
            sock.close()

    def _trickle(self):
        request = b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100_000
        sent = 0
        while not self.stopping.is_set():
            while len(self.sockets) < self.count:
                self.sockets.append(socket.create_connection(("127.0.0.1", self.port), timeout=30))
            self.full.set()
            for index, sock in enumerate(self.sockets):
                try:
                    sock.send(request[sent:sent + 1])
                except OSError:  # dropped by the server: connect again
                    sock.close()
                    self.sockets[index] = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                    self.dropped += 1
            sent += 1
            self.stopping.wait(self.every)


def connections(pid, port):
    """How many TCP connections process pid holds on its local port `port`."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    held = set()  # a busy table is read in pieces, and may list a socket twice
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            if local_port == port and state == "01" and inode in inodes:  # 01: ESTABLISHED
                held.add(inode)
    return len(held)


def threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def test_hundreds_of_slow_clients_starve_neither_the_runs_nor_a_fresh_client(service, source):
    """300 clients trickling their requests, more than the service's 256 fds: it holds at most 64
    of them (a quarter of its fds) on one thread, runs go on succeeding, /healthz answers."""
    running = service("--interval", 1, "--retries", 0, "--url", source.add("/todos", ok()), max_fds=256)
    before = len(running.runs())
    idle_threads = threads(running.proc.pid)
    with Crowd(running.port, 300) as crowd:
        wait_for(crowd.full.is_set, "300 slow clients")
        held_from = len(running.runs())
        for _ in range(3):
            health = get(running, "/healthz")
            assert (health.status_code, health.json()["status"]) == (200, "ok")
            assert connections(running.proc.pid, running.port) <= 64
            assert threads(running.proc.pid) <= idle_threads + 8  # a run's own threads, not one per client
        runs = running.runs(held_from + 3)
        assert crowd.dropped > 0 and len(crowd.sockets) == 300  # they were there all along
    assert [run["state"] for run in runs[before:]] == ["Success"] * (len(runs) - before)
    assert "Too many open files" not in running.log.read_text()


@pytest.mark.parametrize("fds, clients", [(1024, 256), (256, 64), (8192, 256), (16, 4), (3, 1)])
def test_clients_get_at_most_a_quarter_of_the_fd_limit(fds, clients):
    """Measured in a process of its own: the fd limit is the process's."""
    code = ("import resource, sys; from etl.web import connection_limit; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({fds}, {fds})); print(connection_limit())")
    shown = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert shown.stdout == f"{clients}\n", shown.stderr
