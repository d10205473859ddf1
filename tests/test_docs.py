"""The documentation: README.md and docs/*.md link only to files and headings that exist."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target), the target without spaces, an optional "title" after it.
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^\s)>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text):
    """The lines of a Markdown text outside fenced code blocks."""
    fence = None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None and line.lstrip().startswith(fence):
            fence = None
        elif fence is None:
            yield line


def slug(heading):
    """GitHub's anchor for a heading: its text lower case, punctuation dropped, spaces to '-'."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text only
    text = re.sub(r"[*~]", "", text)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path):
    """Every #anchor the headings of a Markdown file get, numbered as GitHub numbers repeats."""
    seen = {}
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            yield base if count == 0 else f"{base}-{count}"


def links(path):
    """The link targets of a Markdown file, code blocks and code spans left out."""
    for line in prose_lines(path.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub("", line)
        yield from LINK.findall(line)
        yield from REFERENCE.findall(line)


def broken_links(path):
    """The relative links of one Markdown file whose file or heading does not exist."""
    broken = []
    for target in links(path):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # an address outside the repository
        name, _, anchor = target.partition("#")
        linked = (path.parent / name).resolve() if name else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in set(anchors(linked)):
            broken.append(f"{target}: no heading with that anchor")
    return broken


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(path):
    assert broken_links(path) == []


def test_every_docs_page_is_linked_from_the_readme():
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for target in links(ROOT / "README.md")
        if not SCHEME.match(target)
    }
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_the_front_page_keeps_the_reports_vocabulary():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    words = ["etl_flow", "parametro_url", "extract", "transform", "load", "datos.json", "docs/flow.png"]
    assert [word for word in words if word not in readme] == []
    assert "make demo" in readme and "make test" in readme


def test_anchors_follow_githubs_rules():
    assert slug("Failure notices: `--notify URL`") == "failure-notices---notify-url"
    assert slug("Several sources, executors and Dask") == "several-sources-executors-and-dask"
    assert slug("What it guarantees under faults") == "what-it-guarantees-under-faults"
    assert slug("[systemd](x.md) and the *unit*") == "systemd-and-the-unit"


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "a.md").write_text(
        "# Page A\n\n## Part two\n\n```\n# not a heading\n```\n\n"
        "[ok](b.md) [ok](b.md#page-b) [ok](#part-two) [ok](https://example.org/x) `[code](nowhere.md)`\n"
        "[gone](c.md) [wrong](b.md#nowhere) [fenced](#not-a-heading)\n",
        encoding="utf-8",
    )
    (tmp_path / "b.md").write_text("# Page B\n", encoding="utf-8")
    assert broken_links(tmp_path / "a.md") == [
        "c.md: no such file",
        "b.md#nowhere: no heading with that anchor",
        "#not-a-heading: no heading with that anchor",
    ]


def test_the_options_table_lists_every_option():
    """Each option --help shows has its row in docs/options.md (the first cell of a table row)."""
    shown = subprocess.run([sys.executable, str(ROOT / "prefectflow.py"), "--help"], capture_output=True,
                           text=True, check=True).stdout
    options = set(re.findall(r"^  (?:-\w, )?(--[\w-]+)", shown, re.MULTILINE)) - {"--help"}
    rows = [line.split("|")[1] for line in (ROOT / "docs" / "options.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("| `-")]
    listed = {option for cell in rows for option in re.findall(r"`(--?[\w-]+)", cell)}
    assert sorted(options - listed) == []
