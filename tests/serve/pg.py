"""A throwaway PostgreSQL server for tests and benchmarks: ``initdb`` into a temporary folder,
a free port on 127.0.0.1, ``pg_ctl start``; :meth:`PostgresServer.stop` removes it all.

The binaries are found on PATH or under ``/usr/lib/postgresql/<version>/bin`` (Debian's
``postgresql`` package puts them there). PostgreSQL refuses to run as root: under root the
server runs as the ``postgres`` user (else ``nobody``), in a folder that user owns.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


def unavailable() -> str | None:
    """Why no test server can start here (None when one can)."""
    for name in ("initdb", "pg_ctl"):
        if find_binary(name) is None:
            return f"no {name} (Debian package `postgresql`)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (the `state` extra)"
    return None


def server_or_skip():
    """A new :class:`PostgresServer` for a test fixture; without the binaries the test is
    skipped, except under CI (``CI`` set), where it fails: ``.ci/run`` installs them."""
    import pytest

    why = unavailable()
    if why is not None:
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"{why}: CI must run the PostgreSQL tests")
        pytest.skip(why)
    return PostgresServer()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster on 127.0.0.1 (trust authentication, superuser ``llmrecall``)."""

    USER = "llmrecall"

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="llmrecall-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self.port = _free_port()
        self._names = itertools.count()
        self._run_as: str | None = None
        if os.geteuid() == 0:
            self._run_as = "postgres"
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                self._run_as = "nobody"
            entry = pwd.getpwnam(self._run_as)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._pg(find_binary("initdb"), "-D", str(self.data), "-U", self.USER, "--auth=trust",
                 "-E", "UTF8", "--no-locale", "--no-sync")
        self.start()

    def _pg(self, binary: str | None, *args: str) -> None:
        assert binary is not None
        subprocess.run([binary, *args], check=True, capture_output=True, user=self._run_as,
                       cwd=self.root)

    def start(self) -> None:
        """Start (or start again, on the same port and data)."""
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
                   "-c max_connections=200")
        self._pg(find_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w",
                 "-t", "60", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate``: as if killed, no shutdown checkpoint)."""
        self._pg(find_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{db}"

    def create_database(self) -> str:
        """A new empty database; returns its DSN."""
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def close(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)
