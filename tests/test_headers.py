"""etl.headers: --header and --header-env, read at each request, kept from other hosts after a
redirect, never shown; against real loopback servers and the command line."""
import json
import urllib.error
import urllib.request

import pytest
from conftest import RECORDS_JSON, TODOS, cli, ok, redirect, status, wait_for

from etl.errors import SettingError
from etl.headers import Headers, headers_for, mask_values, parse_header, parse_header_env
from etl.source import fetch_json

LIMITS = dict(timeout=5, deadline=30, max_bytes=2**20)
SECRET = "s3cret-Value-42"
UNSENDABLE = "holds a line break or a character that is not printable ASCII"


def test_parse_header_splits_at_the_first_colon():
    assert parse_header("Authorization: Bearer a:b ") == ("Authorization", "Bearer a:b")
    assert parse_header_env(" X-Api-Key = API_KEY") == ("X-Api-Key", "API_KEY")


@pytest.mark.parametrize("text, message", [
    (f"X-Api-Key {SECRET}", 'expected "NAME: VALUE", NAME a header name'),
    (f"X Api: {SECRET}", 'expected "NAME: VALUE", NAME a header name'),
    (f"X-Api-Key: {SECRET}\r\nHost: evil", f"X-Api-Key: its value {UNSENDABLE}"),
    (f"X-Api-Key: {SECRET}ñ", f"X-Api-Key: its value {UNSENDABLE}"),
])
def test_parse_header_says_what_is_wrong_without_the_value(text, message):
    with pytest.raises(ValueError) as raised:
        parse_header(text)
    assert str(raised.value) == message


def test_headers_read_the_environment_each_time_and_never_show_their_values(monkeypatch):
    headers = Headers([("X-Api-Key", SECRET)], [("Authorization", "PF_TOKEN")])
    monkeypatch.setenv("PF_TOKEN", "Bearer one")
    assert headers.resolve() == {"X-Api-Key": SECRET, "Authorization": "Bearer one"}
    monkeypatch.setenv("PF_TOKEN", "Bearer two")
    assert headers.resolve()["Authorization"] == "Bearer two"
    assert repr(headers) == "Headers(X-Api-Key, Authorization)"
    monkeypatch.delenv("PF_TOKEN")
    with pytest.raises(SettingError, match="^environment variable PF_TOKEN is not set "
                                           r"\(--header-env Authorization=PF_TOKEN\)$"):
        headers.resolve()


def test_a_header_given_twice_is_refused():
    with pytest.raises(ValueError, match="^header x-api-key given twice$"):
        Headers([("X-Api-Key", "a")], [("x-api-key", "B")])


@pytest.mark.parametrize("url, sent", [
    ("http://127.0.0.1:8000/b?page=2", True),
    ("http://127.0.0.1:80/todos", False),
    ("http://localhost:8000/todos", False),
    ("https://127.0.0.1:8000/todos", False),
    ("http://127.0.0.1.evil.example:8000/todos", False),
])
def test_headers_for_sends_only_to_the_same_scheme_host_and_port(url, sent):
    headers = {"X-Api-Key": SECRET}
    assert headers_for(url, "http://127.0.0.1:8000/todos", headers) == (headers if sent else {})


def test_headers_follow_a_redirect_on_the_same_host_only(source):
    """127.0.0.1 and localhost are two hosts to a client, though the same server answers both."""
    elsewhere = source.url("/elsewhere").replace("127.0.0.1", "localhost")
    source.add("/elsewhere", ok())
    source.add("/here", ok())
    source.add("/moved", redirect(source.url("/here")))
    url = source.add("/todos", redirect(elsewhere))
    headers = {"X-Api-Key": SECRET, "Authorization": "Bearer " + SECRET}
    assert fetch_json(source.url("/moved"), **LIMITS, headers=headers)[0] is not None
    assert fetch_json(url, **LIMITS, headers=headers)[0] is not None
    (moved,), (here,), (todos,), (away,) = (source.asked(p) for p in ("/moved", "/here", "/todos", "/elsewhere"))
    assert all(h["X-Api-Key"] == SECRET and h["Authorization"] == "Bearer " + SECRET for h in (moved, here, todos))
    assert SECRET not in json.dumps(away)
    assert away["Host"].startswith("localhost:")


def test_the_command_line_sends_headers_and_shows_their_values_nowhere(source, tmp_path):
    out, log, diagram = tmp_path / "datos.json", tmp_path / "runs.jsonl", tmp_path / "run.dot"
    url = source.add("/todos", status(401), ok())
    args = ["--once", "--retries", 1, "--retry-delay", 0.01, "--url", url, "--output", out, "--history", log,
            "--header", f"X-Api-Key: {SECRET}", "--header-env", "Authorization=PF_TOKEN"]
    result = cli(*args, "--debug", "--visualize", diagram, env={"PF_TOKEN": f"Bearer {SECRET}"})
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == RECORDS_JSON
    assert [(h["X-Api-Key"], h["Authorization"]) for h in source.asked("/todos")] == [
        (SECRET, f"Bearer {SECRET}")] * 2
    assert "answered HTTP 401 Unauthorized" in result.stdout
    shown = [result.stdout, result.stderr, log.read_text(), diagram.read_text(),
             *(p.read_text() for p in tmp_path.glob(".*"))]
    assert not any(SECRET in text for text in shown)


@pytest.mark.parametrize("args, message", [
    (["--header", f"X-Api-Key={SECRET}"], '--header: expected "NAME: VALUE", NAME a header name'),
    (["--header-env", "X-Api-Key"], "--header-env: expected NAME=ENVVAR, NAME a header name and ENVVAR an "
                                    "environment variable"),
    (["--header-env", "X-Api-Key=PF_UNSET_TOKEN"],
     "environment variable PF_UNSET_TOKEN is not set (--header-env X-Api-Key=PF_UNSET_TOKEN)"),
    (["--header", "X-Api-Key: a", "--header", "X-Api-Key: b"], "header X-Api-Key given twice"),
])
def test_bad_headers_are_a_usage_error(args, message):
    result = cli("--once", "--url", "http://127.0.0.1:9/todos", *args)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"prefectflow.py: error: {message}"
    assert SECRET not in result.stderr


def test_headers_stay_with_the_origin_of_url_across_pages_and_redirects(source, other_source, tmp_path):
    """Page 2 is on 127.0.0.2 and redirects there: it is fetched without the headers; page 3 is back
    on the --url's origin and gets them again."""
    out = tmp_path / "datos.json"
    url = source.add("/t?page=1", ok(TODOS[:1], Link=f'<{other_source.url("/t?page=2")}>; rel="next"'))
    other_source.add("/t?page=2", redirect("/p2"))
    other_source.add("/p2", ok(TODOS[1:2], Link=f'<{source.url("/t?page=3")}>; rel="next"'))
    source.add("/t?page=3", ok(TODOS[2:]))
    result = cli("--once", "--paginate", "--url", url, "--output", out, "--header", f"X-Api-Key: {SECRET}",
                 "--header-env", "Authorization=PF_TOKEN", env={"PF_TOKEN": f"Bearer {SECRET}"})
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == RECORDS_JSON
    for path in ("/t?page=1", "/t?page=3"):
        (asked,) = source.asked(path)
        assert (asked["X-Api-Key"], asked["Authorization"]) == (SECRET, f"Bearer {SECRET}")
    far = other_source.asked("/t?page=2") + other_source.asked("/p2")
    assert len(far) == 2 and SECRET not in json.dumps(far)
    assert f"GET {other_source.url('/t?page=2')}: without --header and --header-env, another origin than " \
           f"--url {url}" in result.stdout


def echo(code, reason, location=None):
    """Answer code with this reason phrase (and Location), as a source that echoes credentials does."""
    def act(handler):
        handler.send_response(code, reason)
        if location:
            handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return act


def served(url):
    """The body at url, whatever its status (/healthz answers 503 while the runs fail)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.read().decode()


def test_header_values_a_source_echoes_show_nowhere(service, source, tmp_path):
    """Reason phrases and redirects that echo the values whole, their token alone or percent-encoded:
    not in the log, --history, /healthz, the status page, /metrics or the notices."""
    key = "k3y-Value-99"
    url = source.add("/todos", echo(401, f"Bad credentials: Bearer {SECRET}"),
                     echo(403, f"token {SECRET} and {key} refused"),
                     echo(302, "Found", f"/login?next=Bearer%20{SECRET}&k={key}"))
    source.add(f"/login?next=Bearer%20{SECRET}&k={key}", status(503))
    hook = source.add("/hook", ok({}))
    watched = service("--url", url, "--interval", 1, "--retries", 0, "--notify", hook,
                      "--header", f"X-Api-Key: {key}", "--header-env", "Authorization=PF_TOKEN",
                      env={"PF_TOKEN": f"Bearer {SECRET}"})
    runs = watched.runs(3)
    assert [run["error"] for run in runs[:3]] == [
        f"extract failed: {url} answered HTTP 401 Bad credentials: ***",
        f"extract failed: {url} answered HTTP 403 token *** and *** refused",
        f"extract failed: {url} answered HTTP 503 Service Unavailable"]
    pages = [served(watched.url + path) for path in ("/healthz", "/", "/metrics")]
    wait_for(lambda: source.bodies("/hook"), "notice")
    watched.stop()
    assert f"redirected to {source.url('/login?next=***&k=***')}" in watched.log.read_text()
    shown = [watched.log.read_text(), watched.history.read_text(), json.dumps(source.bodies("/hook")), *pages]
    assert not any(SECRET in text or key in text for text in shown)


@pytest.mark.parametrize("text, masked", [
    (f"Bad credentials: Bearer {SECRET}", "Bad credentials: ***"),
    (f"token {SECRET}.", "token ***."),
    (f"/login?next=Bearer%20{SECRET}", "/login?next=***"),
    (f"/login?next=Bearer+{SECRET}", "/login?next=***"),
    (f"x{SECRET}y and Bearer", "x" + SECRET + "y and ***"),  # only on its own; "Bearer" is a word of the value
    ("HTTP 502 after 2 attempts, page=2", "HTTP 502 after 2 attempts, page=2"),  # "2" is too short to mask
])
def test_mask_values_masks_values_and_their_words_on_their_own(text, masked):
    assert mask_values(text, [f"Bearer {SECRET}", "2"]) == masked
