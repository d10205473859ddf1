"""A throwaway PostgreSQL cluster for the tests: initdb and pg_ctl from Debian's postgresql package,
run as the unprivileged `postgres` user when we are root, in a temporary folder it owns, listening
on 127.0.0.1 (a free port) and a unix socket folder, with scram password authentication. One per
pytest session (so one per xdist worker); stopped at the end, even when tests fail."""
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import pytest

USER = "etl"


def binaries():
    """The folder of the newest PostgreSQL's initdb and pg_ctl; None if there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A running cluster; urls of its databases, with or without the password."""

    def __init__(self, bin_dir, fsync=False):
        self.bin = bin_dir
        self.password = "p@ss:w/rd?" + secrets.token_hex(6)  # characters a URL must escape
        self.root = Path(tempfile.mkdtemp(prefix="prefectflow-pg-"))
        self.data, self.sockets = self.root / "data", self.root / "sockets"
        self.sockets.mkdir()
        (self.root / "pwfile").write_text(self.password + "\n")
        self.owner = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            self.owner = pwd.getpwnam("postgres")
            for path in (self.root, self.sockets, self.root / "pwfile"):
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        os.chmod(self.root, 0o711)  # the tests' clients reach the socket folder through it
        os.chmod(self.sockets, 0o777)
        self._run("initdb", "-D", self.data, "-U", USER, "--pwfile", self.root / "pwfile", "-E", "UTF8",
                  "--locale=C.UTF-8", "--auth=scram-sha-256", "--no-sync")
        (self.root / "pwfile").unlink()
        self.fsync = fsync
        self._start()
        self.count = 0

    def _run(self, program, *args):
        command = [str(self.bin / program), *map(str, args)]
        if self.owner:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, cwd="/", capture_output=True, text=True, timeout=120)
        if result.returncode:
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}")
        return result

    def _start(self):
        for _ in range(5):  # another process may take the free port before the server does
            self.port = _free_port()
            options = (f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
                       f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=100 -c log_line_prefix=%d:")
            try:
                self._run("pg_ctl", "-D", self.data, "-o", options, "-l", self.root / "server.log", "-w",
                          "-t", "120", "start")
                return
            except RuntimeError:
                if "could not bind" not in self.log():
                    raise
        raise RuntimeError(self.log())

    def log(self):
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self):
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database="postgres", password=True, host="127.0.0.1"):
        """A libpq URI of database; with password=False, the client needs PGPASSWORD or a pgpass file."""
        secret = ":" + urllib.parse.quote(self.password, safe="") if password else ""
        if host == "socket":
            return f"postgresql://{USER}{secret}@/{database}?host={urllib.parse.quote(str(self.sockets), safe='')}&port={self.port}"
        return f"postgresql://{USER}{secret}@{host}:{self.port}/{database}"

    def new_database(self):
        """The name of a new, empty database."""
        import psycopg

        self.count += 1
        name = f"test{self.count}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return name

    def sql(self, database, query, params=()):
        """The rows query returns (none for a statement), run in a session of its own."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as db:
            cursor = db.execute(query, params)
            return cursor.fetchall() if cursor.description else []


@pytest.fixture(scope="session")
def postgres_cluster():
    bin_dir = binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl are missing (apt-get install postgresql)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no `postgres` user to run PostgreSQL as")
    pytest.importorskip("psycopg")
    cluster = Cluster(bin_dir)
    try:
        yield cluster
    finally:
        cluster.stop()


class Database:
    """One new database of the session's cluster."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.name = cluster.new_database()
        self.url = cluster.url(self.name)
        self.url_without_password = cluster.url(self.name, password=False)
        self.password = cluster.password

    def sql(self, query, params=()):
        return self.cluster.sql(self.name, query, params)

    def rows(self, table="todos"):
        """The table's rows as records, by "ID"."""
        return [dict(zip(("UsuarioID", "ID", "Titulo", "Completado"), row)) for row in
                self.sql(f'SELECT "UsuarioID", "ID", "Titulo", "Completado" FROM "{table}" ORDER BY "ID"')]

    def env(self):
        """The environment a client needs for url_without_password."""
        return {"PGPASSWORD": self.password}


@pytest.fixture
def pg(postgres_cluster):
    """A new database in the session's PostgreSQL cluster."""
    return Database(postgres_cluster)
