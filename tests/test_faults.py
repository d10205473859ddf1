"""Faults injected for real: a loopback source that misbehaves, a sink that cannot be written,
a process killed mid-write. Each failure exits 1 with one line and leaves the last good file."""
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
from conftest import (RECORDS_JSON, SCRIPT, TODOS, can_unshare, caught_writing, cli, hang, huge, ok, redirect,
                      slow_headers, status, trickle)

FAST = ["--once", "--retry-delay", "0.01"]


def failed_with(result, message, good_output):
    """The run exited 1, said only message on stderr, and left good_output as it was."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == f"prefectflow.py: error: {message}\n"
    assert "Traceback" not in result.stdout
    assert good_output.read_bytes() == RECORDS_JSON
    assert os.listdir(good_output.parent) == [good_output.name]
    return True


def test_503s_then_200_succeeds_on_the_fourth_request(source, tmp_path):
    url = source.add("/todos", status(503), status(503), status(503), ok())
    result = cli(*FAST, "--retries", 5, "--url", url, "--output", tmp_path / "datos.json")
    assert result.returncode == 0, result.stderr
    assert source.hits("/todos") == 4
    assert (tmp_path / "datos.json").read_bytes() == RECORDS_JSON
    assert result.stdout.count("final state: 'Retrying'") == 3
    assert "Success, 3 records written, 4 extract attempts" in result.stdout


def test_permanent_404_makes_three_requests_and_fails(source, good_output):
    url = source.add("/todos", status(404))
    result = cli(*FAST, "--retries", 2, "--url", url, "--output", good_output)
    assert failed_with(result, f"extract failed after 3 attempts: {url} answered HTTP 404 Not Found", good_output)
    assert source.hits("/todos") == 3


def test_connection_refused(good_output):
    url = "http://127.0.0.1:9/todos"  # discard port: nothing listens on it here
    result = cli(*FAST, "--retries", 1, "--url", url, "--output", good_output)
    assert failed_with(result, f"extract failed after 2 attempts: {url} could not be read: Connection refused",
                       good_output)


@pytest.mark.skipif(not can_unshare("--net"), reason="needs unshare --net (root)")
def test_an_unknown_host(good_output):
    """In a network namespace of its own, with no network at all, a name lookup fails on the spot."""
    url = "http://no-such-host.invalid/todos"
    result = subprocess.run(["unshare", "--net", sys.executable, SCRIPT, *FAST, "--retries", "1", "--url", url,
                             "--output", good_output], capture_output=True, text=True, timeout=60)
    assert failed_with(result, f"extract failed after 2 attempts: {url} could not be read: "
                               "Temporary failure in name resolution", good_output)


def test_a_source_that_never_answers_is_cut_off_by_the_timeout(source, good_output):
    """The source says nothing until the test ends: the run ends only if it cuts the source off."""
    url = source.add("/todos", hang(600))
    result = cli(*FAST, "--retries", 1, "--timeout", 0.3, "--url", url, "--output", good_output)
    assert failed_with(result, f"extract failed after 2 attempts: {url} did not answer within --timeout 0.3 s",
                       good_output)
    assert source.hits("/todos") == 2


@pytest.mark.parametrize("answer", [trickle(total=10_000, every=0.05), slow_headers(every=0.3)],
                         ids=["its body", "its headers"])
def test_a_source_that_trickles_is_cut_off_by_the_deadline(source, good_output, answer):
    """The source keeps sending, never within --timeout of its last byte, for longer than cli() waits:
    the run ends only if the deadline cuts it off."""
    url = source.add("/todos", answer)
    result = cli(*FAST, "--retries", 0, "--timeout", 1, "--deadline", 0.5, "--url", url, "--output", good_output)
    assert failed_with(result, f"extract failed: {url} did not finish within --deadline 0.5 s", good_output)


def test_a_body_that_is_not_json_is_retried_then_fails(source, good_output):
    url = source.add("/todos", ok(b'[{"userId": 1,'))
    result = cli(*FAST, "--retries", 1, "--url", url, "--output", good_output)
    assert failed_with(
        result, f"extract failed after 2 attempts: {url} sent a body that is not valid JSON "
                "(Expecting property name enclosed in double quotes: line 1 column 15 (char 14))", good_output)
    assert source.hits("/todos") == 2


def test_an_html_error_page_from_a_proxy_is_retried(source, tmp_path):
    url = source.add("/todos", ok(b"<html><body>502 Bad Gateway</body></html>"), ok())
    result = cli(*FAST, "--retries", 2, "--url", url, "--output", tmp_path / "datos.json")
    assert result.returncode == 0, result.stderr
    assert source.hits("/todos") == 2
    assert "Success, 3 records written, 2 extract attempts" in result.stdout


def test_redirects_are_followed_and_each_hop_is_logged_masked(source, tmp_path):
    source.add("/todos?sig=s1g", ok())
    old = source.add("/old?token=t0p", redirect("/todos?sig=s1g", code=301))
    result = cli(*FAST, "--url", old.replace("//", "//ann:pa55w0rd@"), "--output", tmp_path / "datos.json")
    assert result.returncode == 0, result.stderr
    base = source.url("").replace("//", "//***@")
    assert f"GET {base}/old?token=***: HTTP 301, redirected to {base}/todos?sig=***\n" in result.stdout
    assert "pa55w0rd" not in result.stdout and "t0p" not in result.stdout and "s1g" not in result.stdout
    assert (tmp_path / "datos.json").read_bytes() == RECORDS_JSON


def test_a_redirect_body_over_max_bytes_is_not_read(source, tmp_path):
    source.add("/todos", ok())
    url = source.add("/old", redirect("/todos", inflates_to=50 * 2**20))
    result = cli(*FAST, "--retries", 0, "--timeout", 10, "--max-bytes", 2**20, "--url", url,
                 "--output", tmp_path / "datos.json")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "datos.json").read_bytes() == RECORDS_JSON


def test_too_many_redirects_fail(source, good_output):
    url = source.add("/a", redirect("/b"))
    source.add("/b", redirect("/a"))
    result = cli(*FAST, "--retries", 0, "--url", url, "--output", good_output)
    assert failed_with(result, f"extract failed: {url} redirected more than 5 times (the last time to {url}); "
                               "give --url the final address", good_output)


def test_a_body_over_max_bytes_is_cut_off(source, good_output):
    url = source.add("/todos", huge(50 * 2**20))
    result = cli(*FAST, "--retries", 0, "--max-bytes", 2**20, "--url", url, "--output", good_output)
    assert failed_with(result, f"extract failed: {url} sent more than --max-bytes 1048576 bytes", good_output)


@pytest.mark.parametrize("payload, problem", [
    ({"todos": TODOS}, "expected a JSON list, got object"),
    ([TODOS[0], "x"], "record at index 1: expected an object, got string"),
    ([TODOS[0], {**TODOS[1], "id": None}], "record at index 1: field 'id' must be integer, got null"),
    ([{k: v for k, v in TODOS[0].items() if k != "completed"}], "record at index 0: missing field 'completed'"),
    ([], "source returned an empty list (--allow-empty accepts it)"),
])
def test_a_payload_of_the_wrong_shape_fails_at_once(source, good_output, payload, problem):
    url = source.add("/todos", ok(payload))
    result = cli(*FAST, "--url", url, "--output", good_output)
    assert failed_with(result, f"extract failed: {url}: {problem}", good_output)
    assert source.hits("/todos") == 1


def test_allow_empty_lets_an_empty_list_through(source, good_output):
    result = cli(*FAST, "--allow-empty", "--url", source.add("/todos", ok([])), "--output", good_output)
    assert result.returncode == 0, result.stderr
    assert good_output.read_bytes() == b"[]"


def test_an_output_under_a_file_fails_cleanly(source, good_output):
    target = good_output / "datos.json"
    result = cli(*FAST, "--url", source.add("/todos", ok()), "--output", target)
    assert failed_with(result, f"cannot lock {target}: {good_output} is a file, not a folder", good_output)


def test_a_full_disk_mid_write_leaves_no_temporary_file(source, good_output):
    """RLIMIT_FSIZE makes writes past 20 kB fail as a full disk would."""
    todos = [{**TODOS[0], "id": i} for i in range(2000)]
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
    result = subprocess.run(
        [sys.executable, SCRIPT, *FAST, "--url", source.add("/todos", ok(todos)), "--output", good_output],
        preexec_fn=limit, capture_output=True, text=True, timeout=60)
    assert failed_with(result, f"load failed: cannot write {good_output}: File too large", good_output)


def test_logs_mask_credentials(source, tmp_path):
    url = source.add("/todos?page=1&access_token=t0ps3cret", ok())
    url = url.replace("http://", "http://ann:hunter2@")
    result = cli("--once", "--url", url, "--output", tmp_path / "datos.json")
    assert result.returncode == 0, result.stderr
    assert "GET http://***@127.0.0.1" in result.stdout
    assert "/todos?page=1&access_token=***: HTTP 200, " in result.stdout
    assert "hunter2" not in result.stdout and "t0ps3cret" not in result.stdout


SECRETS = ["us3rt0k", "pa55w0rd", "qu3ryt0k", "fr4gt0k", "h0pt0k"]
QUERY = "?page=1&access_token=qu3ryt0k"


def secret_url(base):
    """base (scheme://host:port/path) with a secret user name and password, query token and fragment token."""
    scheme, rest = base.split("://")
    return f"{scheme}://us3rt0k:pa55w0rd@{rest}{QUERY}#id_token=fr4gt0k"


def served(answer):
    """A failure met on the loopback source: it answers /todos with answer."""
    def meet(source):
        source.add("/todos" + QUERY, answer(source))
        return [], source.url("/todos")
    return meet


def unknown_host(source):
    if not can_unshare("--net"):
        pytest.skip("needs unshare --net (root)")
    return ["unshare", "--net"], "http://no-such-host.invalid/todos"


FAILURES = {  # how to meet it: the command's prefix (if any) and the url, before its secrets
    "refused": lambda source: ([], "http://127.0.0.1:9/todos"),
    "unknown host": unknown_host,
    "timeout": served(lambda source: hang(10)),
    "deadline": served(lambda source: slow_headers()),
    "bad scheme": lambda source: ([], "ftp://127.0.0.1:9/todos"),
    "404": served(lambda source: status(404)),
    "invalid JSON": served(lambda source: ok(b"[1,")),
    "redirected to a 500": served(lambda source: redirect(
        source.add("/next?sig=h0pt0k", status(500)).replace("//", "//us3rt0k:pa55w0rd@"))),
}


@pytest.mark.parametrize("failure", FAILURES)
def test_secrets_show_nowhere_whatever_fails(source, good_output, failure):
    prefix, base = FAILURES[failure](source)
    url, history = secret_url(base), good_output.parent / "runs.jsonl"
    args = [*FAST, "--retries", 1, "--timeout", 0.5, "--deadline", 1, "--url", url, "--output", good_output,
            "--history", history]
    result = subprocess.run([*prefix, sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True,
                            timeout=60)
    seen = result.stdout + result.stderr + (history.read_text() if history.exists() else "")
    assert result.returncode == (2 if failure == "bad scheme" else 1), seen
    assert "***@" in result.stderr and "access_token=***" in result.stderr
    assert [secret for secret in SECRETS if secret in seen] == []
    assert good_output.read_bytes() == RECORDS_JSON


def test_debug_shows_the_traceback(source, good_output):
    url = source.add("/todos", status(500))
    quiet = cli(*FAST, "--retries", 0, "--url", url, "--output", good_output)
    loud = cli(*FAST, "--retries", 0, "--debug", "--url", url, "--output", good_output)
    assert "Traceback" not in quiet.stdout and "Traceback (most recent call last)" in loud.stdout
    assert quiet.stderr == loud.stderr


def test_sigkill_at_any_moment_leaves_the_old_file_or_the_whole_new_one(source, good_output):
    todos = [{"userId": i // 20, "id": i, "title": f"título {i} \"x\"", "completed": i % 3 == 0}
             for i in range(300_000)]
    url = source.add("/todos", ok(todos))
    new = json.dumps([{"UsuarioID": t["userId"], "ID": t["id"], "Titulo": t["title"],
                       "Completado": t["completed"]} for t in todos], indent=4, ensure_ascii=False).encode()
    outcomes = []
    for delay in [i * 0.07 for i in range(14)]:  # from the temporary file's creation past the replace
        good_output.write_bytes(RECORDS_JSON)
        proc = subprocess.Popen([sys.executable, SCRIPT, "--once", "--url", url, "--output", good_output],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        caught_writing(proc, good_output)  # aim at the write; a miss only aims later
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = good_output.read_bytes()
        assert data in (RECORDS_JSON, new)
        outcomes.append(data == new)
        for name in os.listdir(good_output.parent):
            if name.endswith(".tmp"):
                os.unlink(good_output.parent / name)
    assert not all(outcomes), "some kill came before the replace"


def raw_answer(code, reason, *header_lines, body=b""):
    """Answer with this status line and these header lines as they are, bytes and all."""
    def act(handler):
        handler.wfile.write(b"HTTP/1.1 %d %s\r\n" % (code, reason))
        for line in header_lines:
            handler.wfile.write(line + b"\r\n")
        handler.wfile.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        handler.close_connection = True
    return act


@pytest.mark.parametrize("answer, problem", [
    (raw_answer(302, b"Found", b"Location: /x\xff"), "answered HTTP 302 with a Location that is not UTF-8"),
    (raw_answer(302, b"Found", b"Location: http://[::1/x"),
     "redirected to a Location that is not a valid URL (Invalid IPv6 URL)"),
    (raw_answer(503, b"\x1b[2J\x1b[31mOK\xe2\x80\xae"), "answered HTTP 503 \\x1b[2J\\x1b[31mOK\xe2\\x80\xae"),
    (raw_answer(200, b"OK", body=b"[" * 100_000 + b"]" * 100_000),
     "sent a body that is not valid JSON (nested too deeply)"),
])
def test_a_hostile_answer_is_retried_and_named_masked_in_one_line(source, good_output, answer, problem):
    """A reason phrase is read as Latin-1: the UTF-8 of U+202E arrives as â, a control character, ®."""
    url = source.add("/todos?token=t0p", answer)
    result = cli(*FAST, "--retries", 1, "--url", url, "--output", good_output)
    masked = url.replace("t0p", "***")
    assert failed_with(result, f"extract failed after 2 attempts: {masked} {problem}", good_output)
    assert source.hits("/todos?token=t0p") == 2
    assert "t0p" not in result.stdout + result.stderr
