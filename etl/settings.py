"""The report's defaults and the limits every layer shares; the command line can change each."""
from pathlib import Path

# The public API: https://jsonplaceholder.typicode.com/guide/ (same data, the report's mirror)
API_URL = "https://jsonplaceholder.cypress.io/todos"
OUTPUT = "datos.json"
INTERVAL = 120.0  # seconds between scheduled runs
TIMEZONE = "UTC"  # the zone of the schedule
STALE_AFTER_INTERVALS = 3  # /healthz answers 503 once no run has succeeded for this many intervals
NOTIFY_QUIET_INTERVALS = 5  # at most one --notify notice of each kind (failing, recovered) per this many intervals
RETRIES = 10
RETRY_DELAY = 10.0  # seconds
TIMEOUT = 10.0  # seconds to connect, and at most between two reads of the body
DEADLINE = 600.0  # seconds for a whole response: 100 MiB at 1.4 Mbit/s
MAX_BYTES = 100 * 2**20
MAX_PAGES = 1000  # pages read from one source with --paginate
MAX_SECONDS = 366 * 24 * 3600  # longest duration an option takes: a year (1e300 s overflows timers and dates)
MAX_THREADS = 32  # default cap on threads that fetch several sources at once
SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "todos.json"
