"""The report's three functions without Prefect, loading into a database the naive way: one
executemany of INSERTs in one transaction. The baseline for bench/database.py.

Usage: python bench/naive_db.py URL sqlite:///PATH | postgresql://...
"""
import sys

from naive import extract, transform

COLUMNS = '"UsuarioID", "ID", "Titulo", "Completado"'
CREATE = ('CREATE TABLE IF NOT EXISTS todos ("UsuarioID" bigint NOT NULL, "ID" bigint PRIMARY KEY, '
          '"Titulo" text NOT NULL, "Completado" boolean NOT NULL)')


def load(datos, output):
    if output.startswith("sqlite:///"):
        import sqlite3
        db, mark = sqlite3.connect(output[len("sqlite:///"):]), "?"
    else:
        import psycopg
        db, mark = psycopg.connect(output), "%s"
    with db:  # one transaction
        db.execute(CREATE)
        db.execute("DELETE FROM todos")
        db.cursor().executemany(f"INSERT INTO todos ({COLUMNS}) VALUES ({', '.join([mark] * 4)})",
                                [(d["UsuarioID"], d["ID"], d["Titulo"], d["Completado"]) for d in datos])
    db.close()


if __name__ == "__main__":
    load(transform(extract(sys.argv[1])), sys.argv[2])
