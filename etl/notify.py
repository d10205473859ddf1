"""Notices to the --notify webhooks when runs start failing and when they recover: JSON POSTs, each
webhook served by a thread and a bounded queue of its own, so a slow or broken webhook holds up
neither the schedule nor another webhook; and no more than one notice of each kind per quiet period."""
import datetime
import queue
import re
import socket
import threading
import time
from typing import List, Optional, Tuple

import prefect
import requests
import urllib3
from prefect.engine.state import State

from etl.service import Watch, outcome
# One fetch's machinery, shared with the source: a session that follows no redirect, and a
# watchdog that shuts its sockets when the time for the whole exchange is up.
from etl.source import _Session as Session, _Watchdog as Watchdog, mask_text, mask_url, root_cause

log = prefect.utilities.logging.get_logger(__name__)

TIMEOUT = 5.0  # seconds for one attempt, from connecting to the last byte of the answer's headers
ATTEMPTS = 3
BACKOFF = 1.0  # seconds before the second attempt, doubled before each next one
# The longest one notice can take to one webhook; how long a normal exit waits for the last ones.
BOUND = ATTEMPTS * TIMEOUT + BACKOFF * (2 ** (ATTEMPTS - 1) - 1)
QUEUE = 10  # notices waiting for one webhook, at most; a new one pushes the oldest out
FAILING, RECOVERED = "failing", "recovered"
# Slack's markup: a source's words must not ping a channel or show a link ("<!channel>", "<url|text>").
_SLACK = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_MENTION = re.compile(r"@(?=(?:channel|here|all|everyone)\b)", re.IGNORECASE)  # Mattermost's, Discord's


class Notifier(Watch):
    """Tells the webhooks when the runs' state changes: "failing" on the first failed run after a
    success (or a failed first run), "recovered" on the first success after a failure.

    Flapping runs would send one on almost every run: a notice of a kind that went out less than
    `quiet` seconds ago is held. Once the quiet period is over, the first run whose state still
    differs from what the webhooks were last told sends it, with how many changes it sums up; on
    close(), so does the last run.
    """

    def __init__(self, urls: List[str], quiet: float = 0.0):
        self.quiet = quiet
        self.failing = False  # the last run failed
        self.told = RECOVERED  # what the last notice said; before any, that all is well
        self.sent = {FAILING: None, RECOVERED: None}  # when the last notice of each kind went out
        self.changes = 0  # changes of state since the last notice
        self.last: Optional[dict] = None  # the last run's summary
        self.last_success: Optional[str] = None
        self.host = socket.gethostname()
        self.webhooks = [Webhook(url) for url in urls]

    def finished(self, summary: dict, state: State) -> None:
        failed = "error" in summary
        if not failed:
            self.last_success = summary["finished"]
        self.changes += failed != self.failing
        self.failing, self.last = failed, summary
        kind = FAILING if failed else RECOVERED
        sent, now = self.sent[kind], _time(summary["finished"])
        if kind != self.told and (sent is None or now is None or (now - sent).total_seconds() >= self.quiet):
            self._tell(summary, now)

    def _tell(self, summary: dict, now: Optional[datetime.datetime]) -> None:
        notice = self.notice(summary)
        self.told, self.sent[notice["state"]], self.changes = notice["state"], now, 0
        for webhook in self.webhooks:
            webhook.put(notice)

    def notice(self, summary: dict) -> dict:
        """The JSON body: Slack's {"text": ...}, and the facts as fields of their own."""
        if "error" in summary:
            state = FAILING
            text = (f"prefectflow on {self.host}: runs are failing: {summary['error']} "
                    f"(last success: {self.last_success or 'none since the service started'})")
        else:
            state = RECOVERED
            text = f"prefectflow on {self.host}: runs recovered: {outcome(summary)}"
        changes = max(self.changes, 1)
        if changes > 1:
            text += f" (flapping: {changes} changes between failing and succeeding since the last notice)"
        return {"text": slack_text(text), "state": state, "error": summary.get("error"),
                "last_success": self.last_success, "urls": summary["urls"], "time": summary["started"],
                "changes": changes}

    def close(self) -> None:
        """Send what a quiet period holds, and wait for the notices still queued, at most as long as
        one delivery can take."""
        if self.last is not None and (FAILING if self.failing else RECOVERED) != self.told:
            self._tell(self.last, None)
        ends = time.monotonic() + BOUND
        for webhook in self.webhooks:
            webhook.close()
        for webhook in self.webhooks:
            webhook.thread.join(max(0.0, ends - time.monotonic()))
        if any(webhook.thread.is_alive() for webhook in self.webhooks):
            log.error("Gave up waiting %g s for --notify deliveries still in progress", BOUND)


def slack_text(text: str) -> str:
    """text as Slack shows it as it is: &, < and > escaped; @channel and the like made inert."""
    return _MENTION.sub("@\u200b", re.sub("[&<>]", lambda found: _SLACK[found[0]], text))


def _time(iso: str) -> Optional[datetime.datetime]:
    try:
        return datetime.datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return None


class Webhook:
    """One --notify URL: its notices, queued (at most QUEUE) and posted in order by a thread of its
    own, so that it can delay no other webhook."""

    def __init__(self, url: str):
        self.url = url
        self.queue: queue.Queue = queue.Queue(QUEUE)
        self.closing = False
        self.thread = threading.Thread(target=self._deliver_all, name="notify", daemon=True)
        self.thread.start()

    def put(self, notice: dict) -> None:
        """Queue a notice; when QUEUE are waiting, the oldest is dropped."""
        while True:
            try:
                return self.queue.put_nowait(notice)
            except queue.Full:
                try:
                    dropped = self.queue.get_nowait()
                except queue.Empty:
                    continue
                log.error("Dropped the %r notice of %s to --notify %s: %d newer ones are waiting",
                          dropped["state"], dropped["time"], mask_url(self.url), QUEUE)

    def close(self) -> None:
        """Deliver what is queued, then end the thread."""
        self.closing = True
        try:
            self.queue.put_nowait(None)  # wakes the thread if it waits; if the queue is full, it does not
        except queue.Full:
            pass

    def _deliver_all(self) -> None:
        while not (self.closing and self.queue.empty()):
            notice = self.queue.get()
            if notice is None:
                return
            try:
                deliver(self.url, notice)
            except Exception as exc:  # a bug: this notice is lost, the next ones are not
                log.error("Could not deliver the %r notice to --notify %s: %s: %s", notice["state"],
                          mask_url(self.url), type(exc).__name__, mask_text(str(exc), self.url))


def deliver(url: str, notice: dict) -> None:
    """POST notice to url, up to ATTEMPTS times; log once, masked, if it could not."""
    for attempt in range(1, ATTEMPTS + 1):
        why, again = _post(url, notice)
        if why is None:
            return
        if not again or attempt == ATTEMPTS:
            break
        time.sleep(BACKOFF * 2 ** (attempt - 1))
    tries = f"after {attempt} attempts" if attempt > 1 else "at the first attempt"
    log.error("Could not deliver the %r notice to --notify %s %s: %s", notice["state"], mask_url(url), tries, why)


def _post(url: str, notice: dict) -> Tuple[Optional[str], bool]:
    """One attempt: None if the webhook took the notice, else why not and whether to try again.
    The answer's body is never read, and no redirect is followed: the notice goes where it is told."""
    watchdog = Watchdog(TIMEOUT)
    try:
        with watchdog, Session(watchdog) as session:
            with session.post(url, json=notice, timeout=(TIMEOUT, TIMEOUT), stream=True) as response:
                code, reason = response.status_code, mask_text(response.reason or "", url)
        if watchdog.expired:  # headers cut short by the watchdog end as if they were whole
            return f"no whole answer within {TIMEOUT:g} s", True
        if 200 <= code < 300:
            return None, False
        if 300 <= code < 400:
            return f"HTTP {code} {reason}: redirects are not followed; give --notify the final URL", False
        return f"HTTP {code} {reason}", True
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        if watchdog.expired:
            return f"no whole answer within {TIMEOUT:g} s", True
        return mask_text(root_cause(exc), url), True
