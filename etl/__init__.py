"""The machinery behind prefectflow.py, one module per concern.

settings  the report's defaults and the limits every layer shares
errors    the failures we explain in one line
source    fetching a source over HTTP, under limits; masking secrets in URLs
headers   the headers given on the command line, kept from other hosts and never shown
pages     a source read page by page (Link headers), with conditional requests
state     the state file beside the output: validators and the digest of what was written
records   todos and records: validation, renaming, the JSON writer's encoding
sink      the output file's atomic replace, and history lines
database  database outputs: the table, its shape, replace or merge, one transaction with the state
sqlite    SQLite: its connection, write lock, catalog and bulk insert
postgres  PostgreSQL (psycopg 3): its connection, advisory locks, catalog and COPY
service   one run and its summary, the schedule loop, what it tells its watches, signals
status    what the service knows of its runs, and its health
metrics   the Prometheus metrics of the runs
notify    the --notify messages on failing and recovered runs
web       the --listen server: /healthz, /metrics, the status page
page      the status page's HTML
cli       options, usage rules, logging, executors and watches
demo      the loopback server behind --demo
diagram   the flow drawn by Graphviz

Imports run one way: cli and service -> (prefectflow.py's flow and tasks) -> source, records, sink,
database (which imports sqlite or postgres for the output's scheme, when it is used).
Nothing here imports prefectflow.py.
"""
