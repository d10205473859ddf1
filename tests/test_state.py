"""etl.state: conditional GET against loopback servers that send ETags and Last-Modified and answer
304, with outputs deleted or edited between runs, several sources and several pages."""
import hashlib
import json
import os

import pytest
from conftest import RECORDS, RECORDS_JSON, TODOS, cached, cli, ok

import prefectflow
from etl.service import run_once
from etl.state import state_path

CHANGED = [dict(TODOS[0], title="changed")]
DATE = "Wed, 21 Oct 2026 07:28:00 GMT"


def identity(path):
    info = os.stat(path)
    return info.st_ino, info.st_mtime_ns


def written(path):
    return json.loads(path.read_text(encoding="utf-8"))


def run(out, *urls, **settings):
    flow = prefectflow.build_flow(retries=0, output=str(out), mapped=len(urls) > 1, **settings)
    summary, _ = run_once(flow, list(urls))
    assert summary["state"] == "Success", summary.get("error")
    return summary


@pytest.mark.parametrize("validator, condition", [
    ({"ETag": 'W/"v1"'}, ("If-None-Match", 'W/"v1"')),
    ({"Last_Modified": DATE}, ("If-Modified-Since", DATE)),
])
def test_a_304_leaves_the_output_untouched(source, tmp_path, validator, condition):
    out = tmp_path / "datos.json"
    url = source.add("/todos", cached(**validator))
    first = run(out, url)
    before = identity(out)
    second = run(out, url)
    assert (first["changed"], first["records"]) == (True, 3)
    assert (second["changed"], second["records"], second["pages"]) == (False, 3, 1)  # what the output holds
    assert identity(out) == before
    assert out.read_bytes() == RECORDS_JSON
    first_asked, second_asked = source.asked("/todos")
    assert condition[0] not in first_asked
    assert second_asked[condition[0]] == condition[1]
    assert sorted(os.listdir(tmp_path)) == [".datos.json.state", "datos.json"]


def test_the_state_file_holds_the_digest_and_each_pages_validators(source, tmp_path):
    out = tmp_path / "datos.json"
    url = source.add("/todos", ok(ETag='"v1"', Last_Modified=DATE))
    run(out, url)
    saved = json.loads((tmp_path / ".datos.json.state").read_text())
    assert saved == {"version": 1, "sha256": hashlib.sha256(RECORDS_JSON).hexdigest(), "records": 3, "pages": [
        {"source": url, "url": url, "etag": '"v1"', "last_modified": DATE, "next": None, "count": 3}]}


@pytest.mark.parametrize("change", ["deleted", "edited", "state deleted", "state garbled"])
def test_a_304_is_not_trusted_when_the_output_is_not_what_the_last_run_wrote(source, tmp_path, change):
    out = tmp_path / "datos.json"
    url = source.add("/todos", cached(ETag='"v1"'))
    run(out, url)
    if change == "deleted":
        out.unlink()
    elif change == "edited":
        out.write_bytes(RECORDS_JSON.replace(b"delectus", b"DELECTUS"))
    elif change == "state deleted":
        os.unlink(state_path(str(out)))
    else:
        with open(state_path(str(out)), "r+b") as state:
            state.truncate(10)
    summary = run(out, url)
    assert "If-None-Match" not in source.asked("/todos")[1]
    assert (summary["changed"], out.read_bytes()) == (change in ("deleted", "edited"), RECORDS_JSON)
    assert run(out, url)["changed"] is False  # and the state is whole again: the next run is a 304
    assert source.asked("/todos")[2]["If-None-Match"] == '"v1"'


def test_several_sources_are_unchanged_only_when_all_are(source, tmp_path):
    out = tmp_path / "datos.json"
    first = source.add("/a", cached(TODOS[:2], ETag='"a1"'))
    second = source.add("/b", cached(TODOS[2:], ETag='"b1"'), cached(TODOS[2:], ETag='"b1"'),
                        cached(CHANGED, ETag='"b2"'))
    assert run(out, first, second)["changed"] is True
    before = identity(out)
    assert run(out, first, second)["changed"] is False
    assert identity(out) == before
    third = run(out, first, second)  # /a answers 304: its records come from the output
    assert third["changed"] is True
    assert written(out) == RECORDS[:2] + [dict(RECORDS[0], Titulo="changed")]
    assert [h.get("If-None-Match") for h in source.asked("/a")] == [None, '"a1"', '"a1"']
    assert run(out, first, second)["changed"] is False


def test_a_source_removed_from_the_list_changes_the_output(source, tmp_path):
    out = tmp_path / "datos.json"
    first = source.add("/a", cached(TODOS[:2], ETag='"a1"'))
    second = source.add("/b", cached(TODOS[2:], ETag='"b1"'))
    run(out, first, second)
    assert run(out, second)["changed"] is True
    assert written(out) == RECORDS[2:]


def test_pages_that_answer_304_keep_their_records_when_another_page_changed(source, tmp_path):
    out = tmp_path / "datos.json"
    url = source.add("/t?page=1", cached(TODOS[:1], ETag='"p1"', Link='</t?page=2>; rel="next"'))
    source.add("/t?page=2", cached(TODOS[1:2], ETag='"p2"', Link='</t?page=3>; rel="next"'))
    source.add("/t?page=3", cached(TODOS[2:], ETag='"p3"'), cached(CHANGED, ETag='"p3b"'))
    assert run(out, url, paginate=True)["pages"] == 3
    summary = run(out, url, paginate=True)
    assert (summary["changed"], summary["pages"]) == (True, 3)
    assert written(out) == RECORDS[:2] + [dict(RECORDS[0], Titulo="changed")]
    assert [source.hits(f"/t?page={n}") for n in (1, 2, 3)] == [2, 2, 2]
    assert run(out, url, paginate=True)["changed"] is False


def test_a_new_page_after_a_304_changes_the_output(source, tmp_path):
    """The 304's own Link header says where the pages go now."""
    out = tmp_path / "datos.json"
    url = source.add("/t?page=1", cached(TODOS[:2], ETag='"p1"'),
                     cached(TODOS[:2], ETag='"p1"', Link='</t?page=2>; rel="next"'))
    source.add("/t?page=2", ok(TODOS[2:]))
    run(out, url, paginate=True)
    assert run(out, url, paginate=True)["changed"] is True
    assert out.read_bytes() == RECORDS_JSON


def test_identical_data_without_validators_leaves_the_output_alone(source, tmp_path):
    out = tmp_path / "datos.json"
    url = source.add("/todos", ok())
    run(out, url, conditional=False)
    before = identity(out)
    summary = run(out, url, conditional=False)
    assert (summary["changed"], summary["records"]) == (False, 3)
    assert identity(out) == before
    assert os.listdir(tmp_path) == ["datos.json"]  # no state file without conditional requests


def test_without_conditional_requests_no_validator_is_sent(source, tmp_path):
    out = tmp_path / "datos.json"
    url = source.add("/todos", cached(ETag='"v1"'))
    run(out, url)
    run(out, url, conditional=False)
    assert [h.get("If-None-Match") for h in source.asked("/todos")] == [None, None]


def test_the_command_line_says_unchanged(source, tmp_path):
    out, log = tmp_path / "datos.json", tmp_path / "runs.jsonl"
    url = source.add("/todos", cached(ETag='"v1"'))
    args = ["--runs", 2, "--interval", 1, "--url", url, "--output", out, "--history", log]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["changed"] for line in log.read_text().splitlines()] == [True, False]
    assert f"Left {out} as it was: unchanged" in result.stdout
    assert "Success, unchanged (3 records), 1 extract attempt, 1 page, " in result.stdout
    assert "If-None-Match" not in cli("--once", "--no-conditional", *args[4:]).stdout
    assert [h.get("If-None-Match") for h in source.asked("/todos")] == [None, '"v1"', None]


def test_a_304_to_a_request_that_was_not_conditional_is_a_failure(source, good_output):
    url = source.add("/todos", lambda handler: handler.answer(304, b""))
    flow = prefectflow.build_flow(retries=1, retry_delay=0.01, output=str(good_output))
    summary, _ = run_once(flow, [url])
    assert summary["error"] == (f"extract failed after 2 attempts: {url} answered HTTP 304 Not Modified to a "
                                "request that was not conditional")
    assert good_output.read_bytes() == RECORDS_JSON


def paged(source, parts, changed=None):
    """parts as pages /t?page=1.., each answering 304 to its ETag; the last one changed after the
    first run if changed is given. The first page's url."""
    for number, part in enumerate(parts, 1):
        more = {"Link": f'</t?page={number + 1}>; rel="next"'} if number < len(parts) else {}
        answers = [cached(part, ETag=f'"p{number}"', **more)]
        if changed is not None and number == len(parts):
            answers.append(cached(changed, ETag=f'"p{number}b"', **more))
        source.add(f"/t?page={number}", *answers)
    return source.url("/t?page=1")


def edit_state(out, edit):
    """Edit the state file's fields with edit(saved), keeping its sha256."""
    path = state_path(str(out))
    saved = json.loads(open(path).read())
    edit(saved)
    with open(path, "w") as file:
        json.dump(saved, file)


def set_counts(*counts):
    def edit(saved):
        for page, count in zip(saved["pages"], counts):
            page["count"] = count
    return edit


def set_field(index, field, value):
    def edit(saved):
        saved["pages"][index][field] = value
    return edit


@pytest.mark.parametrize("edit", [
    set_counts("1"), set_counts(-1, 2, 2), set_counts(-1, 4), set_counts(2, 2, 2), set_counts(True, 1, 1),
    set_counts(1.0, 1, 1), lambda saved: saved.update(records=4), lambda saved: saved.update(records="3"),
    lambda saved: saved.update(sha256=None), lambda saved: saved["pages"].append(None),
    lambda saved: saved["pages"][0].update(extra=1), lambda saved: saved["pages"][0].pop("etag"),
    set_field(0, "etag", '"p1"\r\nX-Evil: 1'), set_field(0, "etag", 1), set_field(1, "url", None),
    set_field(0, "next", "ftp://example.org/t?page=2"), set_field(0, "last_modified", ["x"]),
], ids=lambda edit: "edit")
def test_a_state_file_edited_under_its_digest_is_not_trusted(source, tmp_path, edit):
    """Its types, ranges and counts are checked before anything is sent: on any doubt every page
    is fetched in full, and the next state file is whole again."""
    out = tmp_path / "datos.json"
    url = paged(source, [TODOS[:1], TODOS[1:2], TODOS[2:]], changed=CHANGED)
    run(out, url, paginate=True)
    edit_state(out, edit)
    summary = run(out, url, paginate=True)
    assert [source.asked(f"/t?page={n}")[1].get("If-None-Match") for n in (1, 2, 3)] == [None, None, None]
    assert (summary["changed"], written(out)) == (True, RECORDS[:2] + [dict(RECORDS[0], Titulo="changed")])
    assert run(out, url, paginate=True)["changed"] is False
    assert [source.asked(f"/t?page={n}")[2].get("If-None-Match") for n in (1, 2, 3)] == ['"p1"', '"p2"', '"p3b"']


def test_the_state_file_is_checked_against_the_records_in_the_output(source, tmp_path):
    """Counts that add up to a "records" the output does not hold: the run fails in one line, the
    output untouched, and the next run fetches in full."""
    out = tmp_path / "datos.json"
    url = paged(source, [TODOS[:1], TODOS[1:2], TODOS[2:]], changed=CHANGED)
    run(out, url, paginate=True)
    edit_state(out, lambda saved: [saved.update(records=4), saved["pages"][2].update(count=2)])
    flow = prefectflow.build_flow(retries=0, output=str(out), paginate=True)
    summary, _ = run_once(flow, [url])
    assert summary["error"] == (f"load failed: the state file {state_path(str(out))} does not match {out}: "
                                "the next run fetches every source in full")
    assert out.read_bytes() == RECORDS_JSON
    assert run(out, url, paginate=True)["changed"] is True
    assert [h.get("If-None-Match") for h in source.asked("/t?page=1")] == [None, '"p1"', None]


def test_a_state_file_that_is_a_symbolic_link_is_replaced_not_written_through(source, tmp_path):
    out, victim = tmp_path / "datos.json", tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    url = source.add("/todos", cached(ETag='"v1"'))
    run(out, url)
    victim.write_bytes(open(state_path(str(out)), "rb").read())  # a state file that would be trusted
    before = victim.read_bytes(), identity(victim)
    os.unlink(state_path(str(out)))
    os.symlink(victim, state_path(str(out)))
    assert run(out, url)["changed"] is False
    assert "If-None-Match" not in source.asked("/todos")[1]  # not read through the link either
    assert (victim.read_bytes(), identity(victim)) == before
    assert not os.path.islink(state_path(str(out)))
    assert run(out, url)["changed"] is False
    assert source.asked("/todos")[2]["If-None-Match"] == '"v1"'


@pytest.mark.parametrize("kind", ["fifo", "huge", "nested", "not UTF-8"])
def test_a_state_file_that_cannot_be_read_back_is_a_full_fetch(source, tmp_path, kind):
    """A fifo would block the read forever; a huge file is not read whole."""
    out = tmp_path / "datos.json"
    url = source.add("/todos", cached(ETag='"v1"'))
    run(out, url)
    path = state_path(str(out))
    os.unlink(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        with open(path, "wb") as file:
            file.truncate(1 << 30)  # sparse: nothing is written to the disk
    else:
        open(path, "wb").write(b"[" * 100_000 + b"]" * 100_000 if kind == "nested" else b'{"version": 1\xff}')
    assert run(out, url)["changed"] is False
    assert "If-None-Match" not in source.asked("/todos")[1]
    assert os.path.isfile(path) and os.path.getsize(path) < 1000


def test_a_validator_that_cannot_be_sent_back_is_not_kept(source, tmp_path):
    """An ETag with a byte that is not ASCII: the page is fetched in full each time, and the state
    file stays one this program trusts."""
    out = tmp_path / "datos.json"
    url = source.add("/todos", cached(ETag='"v\xff"', Last_Modified=DATE))
    run(out, url)
    run(out, url)
    first, second = source.asked("/todos")
    assert "If-None-Match" not in second and second["If-Modified-Since"] == DATE
    assert json.loads(open(state_path(str(out))).read())["pages"][0]["etag"] is None
