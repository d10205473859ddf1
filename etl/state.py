"""The state file beside the output: what the last run wrote (its digest) and, for each page of each
source, its validators (ETag, Last-Modified) and where its records are in the output; and writing
the output so that pages that answered 304 Not Modified keep their records."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Dict, List, Optional

import prefect

from etl import sink
from etl.errors import SinkError

log = prefect.utilities.logging.get_logger(__name__)

VERSION = 1
MAX_STATE_BYTES = 64 * 2**20  # a larger state file is not read: every source is fetched in full
_DIGEST = re.compile(r"[0-9a-f]{64}")
_VALIDATOR = re.compile(r"[\x20-\x7e]*")  # an ETag or a date that can be sent back as it is


@dataclass
class Page:
    """One page of a source: its validators, the page after it, and how many records it held.
    A page that answered 304 has a start: its records are the last output's, from there on."""

    source: str
    url: str
    etag: Optional[str] = None
    last_modified: Optional[str] = None
    next: Optional[str] = None
    count: int = 0
    start: Optional[int] = None
    basis: Optional[str] = None  # the digest of the output that start refers to

    def conditions(self) -> Dict[str, str]:
        """The headers that ask the source to answer 304 if the page is as it was."""
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


class Fetched(list):
    """Todos or records, with the pages they came from, in order. A page that answered 304 has
    no items here: its records are in the last output (Page.start)."""

    def __init__(self, items: list = (), pages: List[Page] = ()):
        super().__init__(items)
        self.pages = list(pages)

    @classmethod
    def joined(cls, parts: List[list]) -> Fetched:
        """The parts' items and pages, in order."""
        joined = cls(pages=[page for part in parts for page in pages_of(part)])
        for part in parts:
            joined += part
        return joined


def pages_of(items: list) -> List[Page]:
    return getattr(items, "pages", [])


def carry(source: list, items: list) -> list:
    """items, carrying the pages that source came from (a transform's output is its input's)."""
    return Fetched(items, pages_of(source)) if isinstance(source, Fetched) else items


def state_path(output: str) -> str:
    """The state file of output: hidden beside it (beside its target, for a symbolic link)."""
    target = os.path.realpath(output)
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.state")


@dataclass
class Last:
    """What the last run wrote, while the output still holds it."""

    digest: str
    records: int
    pages: Dict[str, Dict[str, Page]]  # by source, by page URL; each with its start in the output


def read_last(output: str) -> Optional[Last]:
    """What the last run wrote, from the state file; None without one, or if the output is missing
    or no longer what that run wrote, or if anything in the state file is not as _save writes it
    (then a 304 cannot be trusted). A state file that is a symbolic link is not followed."""
    logger = prefect.context.get("logger", log)
    path = state_path(output)
    try:
        with sink.open_regular(path, MAX_STATE_BYTES, follow=False) as file:
            digest, records, pages = _verified(json.load(file))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not as this program writes it"
        logger.warning("Not using the state file %s (%s): fetching every source in full", path, why)
        return None
    if sink.file_digest(output) != digest:
        logger.info("%s is missing or not what the last run wrote: fetching every source in full", output)
        return None
    last = Last(digest, records, {})
    start = 0
    for page in pages:
        page.start, page.basis = start, digest
        last.pages.setdefault(page.source, {}).setdefault(page.url, page)
        start += page.count
    return last


def _verified(saved: object) -> tuple:
    """The digest, the record count and the pages of a state file's JSON; ValueError unless every
    field has the type and range _save gives it, and the pages' counts add up to the records."""
    if not (type(saved) is dict and saved.keys() == {"version", "sha256", "records", "pages"}
            and saved["version"] == VERSION and type(saved["sha256"]) is str and _DIGEST.fullmatch(saved["sha256"])
            and _count(saved["records"]) and type(saved["pages"]) is list):
        raise ValueError("not a state file")
    pages = [_page(page) for page in saved["pages"]]
    if sum(page.count for page in pages) != saved["records"]:
        raise ValueError("the pages do not add up to the records")
    return saved["sha256"], saved["records"], pages


def _page(saved: object) -> Page:
    fields = {field.name for field in dataclasses.fields(Page)} - {"start", "basis"}
    if type(saved) is not dict or saved.keys() != fields or not _count(saved["count"]):
        raise ValueError("not a page")
    if type(saved["source"]) is not str or type(saved["url"]) is not str:
        raise ValueError("not a page")
    for validator in (saved["etag"], saved["last_modified"]):
        if validator is not None and (type(validator) is not str or sendable(validator) is None):
            raise ValueError("a validator that cannot be sent")
    if saved["next"] is not None and not _fetchable(saved["next"]):
        raise ValueError("a next page that cannot be fetched")
    return Page(**saved)


def _fetchable(url: object) -> bool:
    """Whether url looks like a URL source.check_url accepts: the same rules, without preparing a
    request for each (1,000 pages would take seconds)."""
    if type(url) is not str or not url.isprintable():
        return False
    parts = urllib.parse.urlsplit(url)  # a ValueError (a bad port, a bad IPv6 address) is a doubt too
    return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != -1


def sendable(value: Optional[str]) -> Optional[str]:
    """value, a header a source sent, if it can be sent back as it is (printable ASCII); else None."""
    return value if value is not None and _VALIDATOR.fullmatch(value) else None


def _count(value: object) -> bool:
    return type(value) is int and value >= 0


def write_output(records: list, output: str, keep_state: bool = True) -> Optional[int]:
    """Write records (a Fetched list: with the pages that answered 304 filled in from the output)
    to output, and its state file; how many records were written, or None if output already held
    them and was left alone."""
    full = _assemble(records, output)
    if full is None:
        return None
    changed, digest = sink.write_json(full, output)
    if keep_state and isinstance(records, Fetched):
        _save(output, digest, len(full), records.pages)
    return len(full) if changed else None


def _assemble(records: list, output: str) -> Optional[list]:
    """The records to write; None if every page answered 304 and they are the output, in order."""
    pages = pages_of(records)
    kept = [page for page in pages if page.start is not None]
    if not kept:
        return records
    last = read_last(output)
    if last is None or any(page.basis != last.digest for page in kept):
        raise _changed_during_the_run(output)
    if len(kept) == len(pages) and in_order(pages) == last.records:
        return None
    try:
        with sink.open_regular(output) as file:
            data = file.read()
    except OSError:
        data = b""
    if hashlib.sha256(data).hexdigest() != last.digest:
        raise _changed_during_the_run(output)
    old, new, full = json.loads(data), iter(records), []
    if type(old) is not list or len(old) != last.records:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state_path(output))
        raise SinkError(f"the state file {state_path(output)} does not match {output}: the next run fetches "
                        "every source in full")
    for page in pages:
        if page.start is None:
            full.extend(itertools.islice(new, page.count))
        else:
            full.extend(old[page.start:page.start + page.count])
    return full


def _changed_during_the_run(output: str) -> SinkError:
    return SinkError(f"{output} changed during the run; the next run fetches every source in full")


def in_order(pages: List[Page]) -> int:
    """How many records the pages cover from the output's start, one after another; -1 if they skip
    or repeat any."""
    end = 0
    for page in pages:
        if page.start != end:
            return -1
        end += page.count
    return end


def _save(output: str, digest: str, records: int, pages: List[Page]) -> None:
    saved = {"version": VERSION, "sha256": digest, "records": records, "pages": [
        {k: v for k, v in dataclasses.asdict(page).items() if k not in ("start", "basis")} for page in pages]}
    # Never written through a symbolic link: whoever put one there could aim it at any file of ours.
    sink.write_bytes(state_path(output), json.dumps(saved, indent=1).encode("utf-8"), follow=False)
