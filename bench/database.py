"""Loading into a database, side by side in one run: alternating runs, medians of wall time and peak
RSS of the client process (the database server's own work is in the wall time, not in the RSS).

1. prefectflow.py --once into PostgreSQL (COPY, one transaction) against naive_db.py (executemany
   INSERTs in one transaction) and against prefectflow.py writing datos.json; into an empty table,
   and replacing a table that holds as many other rows.
2. prefectflow.py --once into SQLite against naive_db.py.

The PostgreSQL is a throwaway cluster like the tests' (tests/pgcluster.py), with fsync on, as the
JSON writer fsyncs too. Usage: .venv/bin/python bench/database.py [--repeat N] [--size N] [--parts ...]
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import OURS, PY, ROOT, compare, measure, row  # noqa: E402
from conftest import Source, ok  # noqa: E402
from generate import todos  # noqa: E402
from pgcluster import Cluster, binaries  # noqa: E402
from stamp import stamp  # noqa: E402

NAIVE = [PY, str(ROOT / "bench" / "naive_db.py")]


def header(base, other):
    print(f"| | {base} wall | {other} wall | ratio | {base} RSS | {other} RSS | ratio |")
    print("|---|---|---|---|---|---|---|")


def postgres(source, tmp, size, repeat, cluster, parts):
    url = source.add("/todos", ok(json.dumps(todos(size)).encode()))
    other = source.add("/other", ok(json.dumps([dict(t, userId=t["userId"] + 1) for t in todos(size)]).encode()))
    cluster.sql("postgres", "CREATE DATABASE bench")
    output = cluster.url("bench", password=False)
    os.environ["PGPASSWORD"] = cluster.password

    def empty():
        cluster.sql("bench", "DROP TABLE IF EXISTS todos; DROP TABLE IF EXISTS prefectflow_state")

    def full():  # a table of `size` other rows, as the run before would have left it
        empty()
        measure(OURS + ["--url", other, "--output", output, "--no-conditional"])

    ours_pg = OURS + ["--url", url, "--output", output, "--no-conditional"]
    commands = {"datos.json": OURS + ["--url", url, "--output", str(tmp / "ours.json")],
                "ours": ours_pg, "naive": NAIVE + [url, output]}
    print(f"\n1. {size:,} records into PostgreSQL {cluster.version}: prefectflow.py against naive_db.py "
          "(executemany) and against writing datos.json\n")
    for label, before in [(label, before) for part, label, before in (
            ("empty", "into an empty table", empty), ("replacing", f"replacing {size:,} other rows", full))
            if part in parts]:
        result = compare(commands, repeat, {"datos.json": lambda: (tmp / "ours.json").unlink(missing_ok=True),
                                            "ours": before, "naive": before})
        rows = cluster.sql("bench", 'SELECT count(*), sum("UsuarioID") FROM todos')
        assert rows == [(size, sum(t["userId"] for t in todos(size)))], rows
        print(f"{label}:\n")
        header("naive", "ours")
        row("PostgreSQL, naive executemany vs ours (COPY)", result, "naive", "ours")
        header("datos.json", "PostgreSQL")
        row("ours: datos.json vs PostgreSQL", result, "datos.json", "ours")
        print()


def sqlite(source, tmp, size, repeat):
    url = source.add("/todos", ok(json.dumps(todos(size)).encode()))
    ours, naive = tmp / "ours.db", tmp / "naive.db"
    print(f"\n2. {size:,} records into SQLite: prefectflow.py against naive_db.py (executemany)\n")
    commands = {"naive": NAIVE + [url, f"sqlite:///{naive}"],
                "ours": OURS + ["--url", url, "--output", f"sqlite:///{ours}", "--no-conditional"],
                "datos.json": OURS + ["--url", url, "--output", str(tmp / "ours.json")]}
    result = compare(commands, repeat, {name: lambda: [p.unlink(missing_ok=True) for p in (ours, naive, tmp / "ours.json")]
                                        for name in commands})
    header("naive", "ours")
    row("SQLite, naive executemany vs ours", result, "naive", "ours")
    header("datos.json", "SQLite")
    row("ours: datos.json vs SQLite", result, "datos.json", "ours")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--parts", default="empty,replacing,sqlite",
                        help="which to measure, of empty,replacing (PostgreSQL) and sqlite")
    args = parser.parse_args()
    print(f"{stamp()}; medians of {args.repeat} alternating runs")
    source = Source()
    cluster = Cluster(binaries(), fsync=True)
    try:
        cluster.version = cluster.sql("postgres", "SHOW server_version")[0][0].split()[0]
        with tempfile.TemporaryDirectory() as tmp:
            parts = args.parts.split(",")
            if {"empty", "replacing"} & set(parts):
                postgres(source, Path(tmp), args.size, args.repeat, cluster, parts)
            if "sqlite" in parts:
                sqlite(source, Path(tmp), args.size, args.repeat)
    finally:
        cluster.stop()
        source.close()


if __name__ == "__main__":
    main()
