"""Notices to the --notify webhooks when runs start failing and when they recover: JSON POSTs made
by a thread of their own, so a slow or broken webhook never holds up the schedule."""
import queue
import socket
import threading
import time
from typing import List, Optional

import prefect
import requests
from prefect.engine.state import State

from etl.service import Watch, outcome
from etl.source import mask_url, root_cause

log = prefect.utilities.logging.get_logger(__name__)

TIMEOUT = 5.0  # seconds to connect, and at most between two reads of the answer
ATTEMPTS = 3
BACKOFF = 1.0  # seconds before the second attempt, doubled before each next one
# The longest one notice can take to one webhook; how long a normal exit waits for the last one.
BOUND = ATTEMPTS * TIMEOUT + BACKOFF * (2 ** (ATTEMPTS - 1) - 1)


class Notifier(Watch):
    """Posts a notice on the first failed run after a success (or a failed first run), and on the
    first success after a failure; never again for each further run in a row."""

    def __init__(self, urls: List[str]):
        self.urls = urls
        self.failing = False
        self.last_success: Optional[str] = None
        self.host = socket.gethostname()
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._deliver_all, name="notify", daemon=True)
        self.thread.start()

    def finished(self, summary: dict, state: State) -> None:
        failed = "error" in summary
        if not failed:
            self.last_success = summary["finished"]
        if failed != self.failing:
            self.queue.put(self.notice(summary))
        self.failing = failed

    def notice(self, summary: dict) -> dict:
        """The JSON body: Slack's {"text": ...}, and the facts as fields of their own."""
        if "error" in summary:
            state = "failing"
            text = (f"prefectflow on {self.host}: runs are failing: {summary['error']} "
                    f"(last success: {self.last_success or 'none since the service started'})")
        else:
            state = "recovered"
            text = f"prefectflow on {self.host}: runs recovered: {outcome(summary)}"
        return {"text": text, "state": state, "error": summary.get("error"), "last_success": self.last_success,
                "urls": summary["urls"], "time": summary["started"]}

    def close(self) -> None:
        """Wait for the notices still queued, at most as long as one delivery can take."""
        self.queue.put(None)
        self.thread.join(BOUND)
        if self.thread.is_alive():
            log.error("Gave up waiting %g s for --notify deliveries still in progress", BOUND)

    def _deliver_all(self) -> None:
        while (notice := self.queue.get()) is not None:
            for url in self.urls:
                self._deliver(url, notice)

    def _deliver(self, url: str, notice: dict) -> None:
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(BACKOFF * 2 ** (attempt - 1))
            try:
                # stream=True: the answer's body is never read, so it cannot hold the thread up.
                with requests.post(url, json=notice, timeout=TIMEOUT, stream=True) as response:
                    if response.ok:
                        return
                    why = f"HTTP {response.status_code} {response.reason}"
            except requests.RequestException as exc:
                why = root_cause(exc)
        log.error("Could not deliver the %r notice to --notify %s after %d attempts: %s",
                  notice["state"], mask_url(url), ATTEMPTS, why)
