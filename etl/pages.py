"""Reading a source page by page: RFC 8288 Link headers, conditional requests from the last run's
validators, and walks that keep the pages already read when a page fails."""
from __future__ import annotations  # keeps the TypedDicts out of what Dask pickles

import dataclasses
import re
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import prefect

from etl import database
from etl.database import Table
from etl.errors import PayloadError, SourceError, UrlError
from etl.headers import Headers, mask_values, same_origin
from etl.records import validate
from etl.settings import MAX_PAGES, MAX_THREADS
from etl.source import check_url, fetch_json, mask_text, mask_url
from etl.state import Fetched, Page, read_last, sendable

log = prefect.utilities.logging.get_logger(__name__)

_TARGET = re.compile(r"\s*<([^>]*)>")
_PARAM = re.compile(r"""\s*;\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^\s;,]*))?""")
_REST = re.compile(r"[^,]*,")  # what a malformed link leaves before the next one


def links(header: str) -> Iterator[Tuple[str, Dict[str, str]]]:
    """Each link of a Link header (RFC 8288): its target as written, and its parameters (names in
    lower case, the first of each kept)."""
    position = 0
    while match := _TARGET.match(header, position):
        target, params, position = match.group(1).strip(), {}, match.end()
        while param := _PARAM.match(header, position):
            value = param.group(2) or ""
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params.setdefault(param.group(1).lower(), value)
            position = param.end()
        yield target, params
        if not (rest := _REST.match(header, position)):
            return
        position = rest.end()


def next_link(header: Optional[str], base: str) -> Optional[str]:
    """The target of the Link header's rel="next", resolved against base; None if there is none."""
    for target, params in links(header or ""):
        if "next" in params.get("rel", "").lower().split():
            return urllib.parse.urljoin(base, target)
    return None


@dataclass
class Options:
    """How every page is read: the same limits for each, and the headers sent with each."""

    timeout: float
    deadline: float
    max_bytes: int
    paginate: bool = False
    max_pages: int = MAX_PAGES
    headers: Optional[Headers] = None


@dataclass
class Walk:
    """One source read a page at a time: the pages read so far, and the next one to read."""

    source: str
    known: Dict[str, Page]  # the last run's pages of this source, by URL, while the output holds them
    next_url: Optional[str] = None
    todos: list = field(default_factory=list)
    pages: List[Page] = field(default_factory=list)

    def step(self, options: Options) -> None:
        """Read the next page. The walk changes only once the page is read whole, so a failed page
        is read again from here, not from the first page."""
        url = self.next_url
        known = self.known.get(url)
        headers = options.headers.resolve() if options.headers else {}

        def masked(link: str) -> str:  # a page's URL is the source's word: it can echo a header value
            return mask_values(mask_url(link), headers.values())
        if headers and not same_origin(url, self.source):
            prefect.context.get("logger", log).info(
                "GET %s: without --header and --header-env, another origin than --url %s",
                masked(url), mask_url(self.source))
        payload, response = fetch_json(url, options.timeout, options.deadline, options.max_bytes, headers,
                                       origin=self.source, conditions=known.conditions() if known else None)
        link = response.headers.get("Link")
        etag, modified = (sendable(response.headers.get(h)) for h in ("ETag", "Last-Modified"))

        def linked() -> Optional[str]:  # the next page, if it can be fetched; with --paginate, it must
            try:
                target = next_link(link, response.url)
                if target:
                    check_url(target)
                return target
            except (ValueError, UrlError) as exc:
                if not options.paginate:
                    return None
                raise SourceError(f"{masked(url)} links to a next page that cannot be fetched: "
                                  f"{mask_text(str(exc), values=headers.values())}") from None
        if response.status_code == 304:
            if known is None:
                raise SourceError(f"{masked(url)} answered HTTP 304 Not Modified to a request that was "
                                  "not conditional")
            # A 304 need not repeat the Link header: without one, the next page is the one it had.
            page = dataclasses.replace(
                known, etag=etag or known.etag, last_modified=modified or known.last_modified,
                next=linked() if link is not None else known.next)
            todos = []
        else:
            try:
                todos = validate(payload, allow_empty=True)
            except PayloadError as exc:
                raise PayloadError(f"{masked(url)}: {exc}") from None
            page = Page(self.source, url, etag, modified, linked(), len(todos))
        following = page.next if options.paginate else None
        if following in {p.url for p in self.pages} | {url}:
            raise PayloadError(f"{mask_url(self.source)}: page {masked(url)} links back to "
                               f"{masked(following)}: the pages go round in a loop")
        if following and len(self.pages) + 1 >= options.max_pages:
            raise PayloadError(f"{mask_url(self.source)} has more than --max-pages {options.max_pages} pages")
        self.pages.append(page)
        if self.todos:
            self.todos.extend(todos)
        else:
            self.todos = todos
        self.next_url = following
        if options.paginate and following is None:
            prefect.context.get("logger", log).info(
                "Read %s: %d page%s (%d unchanged)", mask_url(self.source), len(self.pages),
                "" if len(self.pages) == 1 else "s", sum(p.start is not None for p in self.pages))

    def fetched(self, allow_empty: bool) -> Fetched:
        """What the walk read, handed over; PayloadError if it is empty and that is not allowed."""
        if not allow_empty and not any(page.count for page in self.pages):
            raise PayloadError(f"{mask_url(self.source)}: source returned an empty list "
                               "(--allow-empty accepts it)")
        todos, self.todos = self.todos, []
        return Fetched(todos, self.pages)


@dataclass
class Progress:
    """Every source's walk, and how many runs of the task failed: handed from one run to the next
    (Prefect's LOOP), so that a retry goes on from the page that failed."""

    walks: List[Walk]
    failed: int = 0

    def advance(self, options: Options) -> bool:
        """Read the next page of every walk not done yet, several at once in threads; whether any
        walk has pages left."""
        left = [walk for walk in self.walks if walk.next_url]
        try:
            if len(left) == 1:
                left[0].step(options)
            elif left:
                with ThreadPoolExecutor(min(len(left), MAX_THREADS)) as pool:
                    list(pool.map(lambda walk: walk.step(options), left))
        except Exception:
            self.failed += 1
            raise
        return any(walk.next_url for walk in self.walks)

    def attempts(self, succeeded: bool) -> int:
        """How many runs of the task there were, this one included."""
        return self.failed + succeeded


def start(urls: List[str], output: Optional[str], failed: int = 0, table: Optional[Table] = None) -> Progress:
    """A walk for each source, after `failed` failed runs; with output, the walks ask whether each
    page changed since the run that wrote output (if output still holds what that run wrote; for
    a database, what it loaded into table)."""
    if output and database.is_database(output):
        last = database.read_last(output, table or Table())
    else:
        last = read_last(output) if output else None
    return Progress([Walk(url, last.pages.get(url, {}) if last else {}, url) for url in urls], failed)
