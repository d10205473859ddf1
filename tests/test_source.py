"""etl.source: one GET under limits against a real loopback server, and URL masking."""
import pytest
from conftest import TODOS, cached, huge, ok, status

from etl.errors import SourceError
from etl.source import fetch_json, mask_url

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


@pytest.mark.parametrize("url, masked", [
    ("http://127.0.0.1:8000/todos", "http://127.0.0.1:8000/todos"),
    ("https://ann:s3cret@example.org/todos", "https://ann:***@example.org/todos"),
    ("https://example.org/todos?token=abc&page=2&api_key=k", "https://example.org/todos?token=***&page=2&api_key=***"),
])
def test_mask_url_hides_secrets(url, masked):
    assert mask_url(url) == masked
