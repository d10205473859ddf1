"""etl.web: --listen's routes, asked over real HTTP of the service running in a subprocess."""
import datetime
import html.parser
import shutil
import socket
import subprocess

import pytest
import requests
from conftest import cached, cli, ok, status, wait_for
from prometheus_client.parser import text_string_to_metric_families

CHROMIUM = shutil.which("chromium")


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
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        refused = requests.request(method, running.url + "/healthz", timeout=30)
        assert (refused.status_code, refused.headers["Allow"]) == (405, "GET, HEAD")
    assert requests.request("BREW", running.url + "/", timeout=30).status_code == 501


def test_healthz_answers_503_once_no_run_succeeded_within_stale_after_and_200_once_one_does(service, source):
    url = source.add("/todos", status(503))
    running = service("--interval", 1, "--retries", 0, "--stale-after", 1.5, "--url", url)
    health = wait_for(lambda: health_if(running, 503), "503 from /healthz")
    assert (health["status"], health["last_success"]) == ("failing", None)
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
    running = service("--interval", 1, "--retries", 0, "--url", url)
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
    assert text.startswith("prefectflow: ok Health ok (HTTP 200; 503 after 3 s without")
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
