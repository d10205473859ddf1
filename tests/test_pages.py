"""etl.pages: Link headers, and --paginate against a loopback server that paginates as json-server
and GitHub do, with Link rel="next" headers."""
import json

import pytest
from conftest import RECORDS, RECORDS_JSON, TODOS, cli, huge, ok, status

from etl.pages import links, next_link

FAST = ["--once", "--retry-delay", "0.01", "--paginate"]


def history(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_links_reads_every_link_and_its_parameters():
    header = ('<https://api.example/t?page=1>; rel="first"; title="a, b; c", '
              '<https://api.example/t?page=3>;rel=next,<https://api.example/t?page=9>; REL="last prev"')
    assert list(links(header)) == [
        ("https://api.example/t?page=1", {"rel": "first", "title": "a, b; c"}),
        ("https://api.example/t?page=3", {"rel": "next"}),
        ("https://api.example/t?page=9", {"rel": "last prev"}),
    ]


@pytest.mark.parametrize("header, found", [
    ('<?_page=2&_limit=2>; rel="next"', "http://h:1/todos?_page=2&_limit=2"),
    ('</v2/todos?page=2>; rel="prev next"', "http://h:1/v2/todos?page=2"),
    ('<page3>; rel="NEXT"', "http://h:1/page3"),
    ('<https://other.example/p2>; rel=next', "https://other.example/p2"),
    ('<http://h:1/todos?p=1>; rel="first", <http://h:1/todos?p=9>; rel="last"', None),
    ('garbage, <p2>; rel="next"', None),
    ("", None),
    (None, None),
])
def test_next_link_is_resolved_against_the_page(header, found):
    assert next_link(header, "http://h:1/todos?_page=1&_limit=2") == found


def paginated(source, path, parts):
    """Serve parts as pages of path (?page=1, ?page=2, ...), each linking to the next relatively."""
    for number, part in enumerate(parts, 1):
        more = {"Link": f'<{path}?page={number + 1}>; rel="next"'} if number < len(parts) else {}
        source.add(f"{path}?page={number}", ok(part, **more))
    return source.url(f"{path}?page=1")


def test_paginate_joins_every_page_in_order(source, tmp_path):
    out, log = tmp_path / "datos.json", tmp_path / "runs.jsonl"
    url = paginated(source, "/todos", [TODOS[:1], TODOS[1:2], TODOS[2:]])
    result = cli(*FAST, "--url", url, "--output", out, "--history", log)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == RECORDS_JSON
    assert [source.hits(f"/todos?page={n}") for n in (1, 2, 3)] == [1, 1, 1]
    (run,) = history(log)
    assert (run["pages"], run["records"], run["changed"]) == (3, 3, True)
    assert f"Read {url}: 3 pages (0 unchanged)" in result.stdout
    assert "Success, 3 records written, 1 extract attempt, 3 pages" in result.stdout


def test_without_paginate_the_links_are_not_followed(source, tmp_path):
    url = paginated(source, "/todos", [TODOS[:1], TODOS[1:]])
    result = cli("--once", "--url", url, "--output", tmp_path / "datos.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "datos.json").read_text(encoding="utf-8")) == RECORDS[:1]
    assert source.hits("/todos?page=2") == 0


def test_a_failed_page_is_retried_from_that_page(source, tmp_path):
    out, log = tmp_path / "datos.json", tmp_path / "runs.jsonl"
    url = paginated(source, "/todos", [TODOS[:1], TODOS[1:2], TODOS[2:]])
    source.add("/todos?page=2", status(503), status(502),
               ok(TODOS[1:2], Link='</todos?page=3>; rel="next"'))
    result = cli(*FAST, "--retries", 3, "--url", url, "--output", out, "--history", log)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == RECORDS_JSON
    assert [source.hits(f"/todos?page={n}") for n in (1, 2, 3)] == [1, 3, 1]
    (run,) = history(log)
    assert (run["pages"], run["attempts"]) == (3, 3)


def test_several_urls_each_paginate(source, tmp_path):
    out = tmp_path / "datos.json"
    first = paginated(source, "/a", [TODOS[2:], TODOS[1:2]])
    second = paginated(source, "/b", [TODOS[:1]])
    result = cli(*FAST, "--url", first, "--url", second, "--output", out, "--history", tmp_path / "runs.jsonl")
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text(encoding="utf-8")) == [RECORDS[2], RECORDS[1], RECORDS[0]]
    assert history(tmp_path / "runs.jsonl")[0]["pages"] == 3


def failed(result, message, good_output):
    assert result.returncode == 1, result.stdout
    assert result.stderr == f"prefectflow.py: error: {message}\n"
    assert good_output.read_bytes() == RECORDS_JSON
    return True


def test_more_pages_than_max_pages_fail_without_a_retry(source, good_output):
    url = paginated(source, "/todos", [TODOS[:1], TODOS[1:2], TODOS[2:]])
    result = cli(*FAST, "--retries", 2, "--max-pages", 2, "--url", url, "--output", good_output)
    assert failed(result, f"extract failed: {url} has more than --max-pages 2 pages", good_output)
    assert [source.hits(f"/todos?page={n}") for n in (1, 2, 3)] == [1, 1, 0]


def test_a_page_that_links_back_stops_the_loop(source, good_output):
    url = source.add("/todos?page=1", ok(TODOS[:1], Link='</todos?page=2>; rel="next"'))
    source.add("/todos?page=2", ok(TODOS[1:], Link=f'<{url}>; rel="next"'))
    result = cli(*FAST, "--retries", 2, "--url", url, "--output", good_output)
    page2 = source.url("/todos?page=2")
    assert failed(result, f"extract failed: {url}: page {page2} links back to {url}: the pages go round in a loop",
                  good_output)
    assert source.hits("/todos?page=1") == 1


def test_every_page_is_under_the_same_limits(source, good_output):
    url = paginated(source, "/todos", [TODOS[:1], TODOS[1:]])
    source.add("/todos?page=2", huge(4096))
    result = cli(*FAST, "--retries", 0, "--max-bytes", 1024, "--url", url, "--output", good_output)
    page2 = source.url("/todos?page=2")
    assert failed(result, f"extract failed: {page2} sent more than --max-bytes 1024 bytes", good_output)


def test_a_bad_record_names_its_page(source, good_output):
    url = paginated(source, "/todos", [TODOS[:1], [{"id": 1}]])
    result = cli(*FAST, "--url", url, "--output", good_output)
    page2 = source.url("/todos?page=2")
    assert failed(result, f"extract failed: {page2}: record at index 0: missing field 'userId'", good_output)


def test_an_empty_source_is_every_page_empty(source, good_output):
    url = paginated(source, "/todos", [[], []])
    result = cli(*FAST, "--url", url, "--output", good_output)
    assert failed(result, f"extract failed: {url}: source returned an empty list (--allow-empty accepts it)",
                  good_output)


def test_max_pages_needs_paginate():
    result = cli("--once", "--max-pages", 3)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "prefectflow.py: error: --max-pages needs --paginate"


@pytest.mark.parametrize("link, problem", [
    ('<http://[::1/t?page=2>; rel="next"', "Invalid IPv6 URL"),
    ('<ftp://ann:pw@127.0.0.1/t?page=2>; rel="next"',
     "ftp://***@127.0.0.1/t?page=2: only http:// and https:// URLs can be fetched"),
])
def test_a_next_link_that_cannot_be_fetched_is_retried_and_named(source, good_output, link, problem):
    """Without --paginate such a link is not looked at."""
    url = source.add("/t?token=t0p", ok(TODOS, Link=link))
    result = cli(*FAST, "--retries", 1, "--url", url, "--output", good_output)
    assert result.returncode == 1
    assert result.stderr == (f"prefectflow.py: error: extract failed after 2 attempts: {url.replace('t0p', '***')} "
                             f"links to a next page that cannot be fetched: {problem}\n")
    assert good_output.read_bytes() == RECORDS_JSON
    assert cli("--once", "--url", url, "--output", good_output).returncode == 0

