"""etl.source: one GET under limits against a real loopback server, and URL masking."""
import pytest
from conftest import TODOS, cached, huge, ok, redirect, slow_headers, status

from etl.errors import SourceError, UrlError
from etl.source import check_url, fetch_json, mask_url

LIMITS = dict(timeout=5, deadline=30, max_bytes=2**20)


def test_fetch_json_returns_the_document_and_the_response(source):
    payload, response = fetch_json(source.add("/todos", ok(ETag='"v1"')), **LIMITS)
    assert payload == TODOS
    assert (response.status_code, response.headers["ETag"]) == (200, '"v1"')
    assert source.hits("/todos") == 1


def test_fetch_json_sends_the_headers_and_returns_none_for_304(source):
    url = source.add("/todos", cached(ETag='"v1"'))
    payload, response = fetch_json(url, **LIMITS, headers={"If-None-Match": '"v1"', "X-Api-Key": "k"})
    assert (payload, response.status_code) == (None, 304)
    assert source.asked("/todos")[0]["X-Api-Key"] == "k"


def test_fetch_json_names_the_http_error(source):
    url = source.add("/todos", status(500))
    with pytest.raises(SourceError, match=f"^{url} answered HTTP 500 Internal Server Error$"):
        fetch_json(url, **LIMITS)


def test_fetch_json_reads_a_utf8_bom(source):
    url = source.add("/todos", ok(b"\xef\xbb\xbf[]"))
    assert fetch_json(url, **LIMITS)[0] == []


@pytest.mark.parametrize("body, cause", [
    (b"[1,", "Expecting value: line 1 column 4 (char 3)"),
    (b"\xff[]", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
])
def test_fetch_json_says_a_body_is_not_json(source, body, cause):
    url = source.add("/todos", ok(body))
    with pytest.raises(SourceError) as raised:
        fetch_json(url, **LIMITS)
    assert str(raised.value) == f"{url} sent a body that is not valid JSON ({cause})"


def test_fetch_json_stops_reading_past_max_bytes(source):
    url = source.add("/todos", huge(8 * 2**20))
    with pytest.raises(SourceError, match=r"sent more than --max-bytes 1048576 bytes$"):
        fetch_json(url, **LIMITS)


def test_a_redirect_is_followed_without_reading_its_body(source):
    """Its gzip body inflates past max_bytes and never ends: reading it would fail."""
    source.add("/todos", ok())
    url = source.add("/old", redirect("/todos", inflates_to=8 * 2**20))
    assert fetch_json(url, **LIMITS)[0] == TODOS
    assert (source.hits("/old"), source.hits("/todos")) == (1, 1)


@pytest.mark.parametrize("location", ["todos", "/api/todos", "../api/todos", "{base}/api/todos"])
def test_a_relative_or_absolute_location_is_followed(source, location):
    source.add("/api/todos", ok())
    url = source.add("/api/old", redirect(location.format(base=source.url(""))))
    assert fetch_json(url, **LIMITS)[0] == TODOS


def chain(source, hops):
    """A chain of hops redirects, /r1 -> /r2 -> ... -> /todos; the url of /r1."""
    source.add("/todos", ok())
    for n in range(1, hops + 1):
        source.add(f"/r{n}", redirect(f"/r{n + 1}" if n < hops else "/todos", code=(301, 302, 303, 307, 308)[n % 5]))
    return source.url("/r1")


def test_five_redirects_are_followed(source):
    assert fetch_json(chain(source, 5), **LIMITS)[0] == TODOS


def test_a_sixth_redirect_fails(source):
    url = chain(source, 6)
    with pytest.raises(SourceError) as raised:
        fetch_json(url, **LIMITS)
    assert str(raised.value) == (f"{url} redirected more than 5 times (the last time to {source.url('/todos')}); "
                                 "give --url the final address")
    assert (source.hits("/r6"), source.hits("/todos")) == (1, 0)


def test_a_redirect_loop_fails(source):
    url = source.add("/a", redirect("/b"))
    source.add("/b", redirect("/a"))
    with pytest.raises(SourceError, match=r"/a redirected more than 5 times \(the last time to http://\S+/a\)"):
        fetch_json(url, **LIMITS)
    assert source.hits("/a") + source.hits("/b") == 6


def test_each_hop_is_logged_masked(source, caplog):
    source.add("/todos?sig=s1g", ok())
    url = source.add("/old?token=t0p", redirect("/todos?sig=s1g"))
    fetch_json(url.replace("//", "//ann:pa55w0rd@"), **LIMITS)
    base = source.url("").replace("//", "//***@")
    assert f"GET {base}/old?token=***: HTTP 302, redirected to {base}/todos?sig=***" in caplog.messages
    assert not [m for m in caplog.messages if "pa55w0rd" in m or "t0p" in m or "s1g" in m]


def test_a_redirect_to_a_url_that_cannot_be_fetched_fails_naming_it_masked(source):
    url = source.add("/todos", redirect("ftp://ann:pw@example.org/todos?token=t0p"))
    with pytest.raises(SourceError) as raised:
        fetch_json(url, **LIMITS)
    assert str(raised.value) == (f"{url} redirected to ftp://***@example.org/todos?token=***: "
                                 "only http:// and https:// URLs can be fetched")


def test_the_deadline_covers_headers_sent_a_line_at_a_time(source):
    url = source.add("/todos", slow_headers(every=0.3))
    with pytest.raises(SourceError) as raised:
        fetch_json(url, timeout=1, deadline=0.5, max_bytes=2**20)
    assert str(raised.value) == f"{url} did not finish within --deadline 0.5 s"


def test_the_deadline_covers_every_hop(source):
    source.add("/todos", slow_headers(every=0.3))
    url = source.add("/old", redirect("/todos"))
    with pytest.raises(SourceError, match=r"/old did not finish within --deadline 0\.5 s$"):
        fetch_json(url, timeout=1, deadline=0.5, max_bytes=2**20)


def test_a_bad_timeout_is_not_reported_as_a_bad_body(source):
    """Only the parse's ValueError means the body is not JSON; the command line refuses nan."""
    url = source.add("/todos", ok())
    with pytest.raises(ValueError, match="NaN"):
        fetch_json(url, timeout=float("nan"), deadline=30, max_bytes=2**20)


@pytest.mark.parametrize("url, message", [
    ("ftp://ann:pw@example.org/x?token=t0p", "ftp://***@example.org/x?token=***: only http:// and https:// URLs can be fetched"),
    ("file:///etc/passwd", "file:///etc/passwd: only http:// and https:// URLs can be fetched"),
    ("example.org/todos?key=k3y", "example.org/todos?key=***: no scheme; write https:// or http:// before the host"),
    ("ann:pw@example.org/todos", "***@example.org/todos: no scheme; write https:// or http:// before the host"),
    ("http:///todos", "http:///todos: no host"),
    ("https://ann:pw@/todos", "https://***@/todos: no host"),
    ("http://example.org:99999/todos", "http://example.org:99999/todos: not a valid URL (Port out of range 0-65535)"),
    ("http://[::1/todos", "http://[::1/todos: not a valid URL (Invalid IPv6 URL)"),
    ("http://ann:pw@exa mple.org/?sig=s1g",
     "http://***@exa mple.org/?sig=***: not a valid URL (Failed to parse: Host 'exa mple.org' contains invalid character ' ')"),
    ("", "an empty URL"),
])
def test_a_url_that_can_never_be_fetched_fails_at_once(url, message):
    with pytest.raises(UrlError) as raised:
        fetch_json(url, **LIMITS)
    assert str(raised.value) == message
    assert not isinstance(raised.value, SourceError)


def test_check_url_accepts_http_and_https():
    for url in ["http://127.0.0.1:8000/todos", "HTTPS://example.org/todos?page=2", "https://ann:pw@[::1]:8443/"]:
        check_url(url)


@pytest.mark.parametrize("url, masked", [
    ("http://127.0.0.1:8000/todos", "http://127.0.0.1:8000/todos"),
    ("https://ann:s3cret@example.org/todos", "https://***@example.org/todos"),
    ("https://ghp_t0k3n@example.org/todos", "https://***@example.org/todos"),
    ("https://ann:@example.org/todos", "https://***@example.org/todos"),
    ("https://ann:p@ss@example.org/a@b?c@d", "https://***@example.org/a@b?c@d"),
    ("ann:s3cret@example.org/todos", "***@example.org/todos"),
    ("https://example.org/todos?token=abc&page=2&api_key=k", "https://example.org/todos?token=***&page=2&api_key=***"),
    ("https://example.org/todos?page=2;token=abc;password=p", "https://example.org/todos?page=2;token=***;password=***"),
    ("https://example.org/cb#access_token=abc&state=1", "https://example.org/cb#access_token=***&state=1"),
    ("https://example.org/todos#top", "https://example.org/todos#top"),
    ("https://b.s3.amazonaws.com/t.json?X-Amz-Credential=AKIA%2F1&X-Amz-Date=1&X-Amz-Signature=ab",
     "https://b.s3.amazonaws.com/t.json?X-Amz-Credential=***&X-Amz-Date=1&X-Amz-Signature=***"),
    ("https://example.org/?jwt=a.b.c&code=123&page=2", "https://example.org/?jwt=***&code=***&page=2"),
    ("http://[::1/todos?token=abc", "http://[::1/todos?token=***"),
])
def test_mask_url_hides_secrets(url, masked):
    assert mask_url(url) == masked
