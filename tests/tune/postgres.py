"""A throw-away PostgreSQL server on 127.0.0.1 for the multi-worker sampler tests.

``PostgresServer.start()`` runs ``initdb`` and ``pg_ctl start`` on a free port with a data
directory under a new temp dir (as an unprivileged user when the tests run as root:
PostgreSQL refuses to run as root), ``database()`` creates a fresh database and returns its
SQLAlchemy URL, ``stop()`` stops the server (immediate shutdown) and deletes the directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def find_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    found = shutil.which("pg_ctl")
    if found:
        dirs.insert(0, str(Path(found).parent))
    for d in dirs:
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="hgpso-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "hgpso"
        self._as: list[str] = []
        if os.geteuid() == 0:
            runas = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
            runuser = shutil.which("runuser")
            if runas is None or runuser is None:
                raise RuntimeError("running as root without runuser or an unprivileged user")
            pw = pwd.getpwnam(runas)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = [runuser, "-u", runas, "--"]

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = [*self._as, str(self.bindir / args[0]), *args[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stderr}{proc.stdout}{tail}")

    def start(self) -> PostgresServer:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8",
                  "--no-sync")  # fmt: skip
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                  "-t", "60", "-o", opts, "start")  # fmt: skip
        return self

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def database(self) -> str:
        """A new, empty database; its SQLAlchemy URL (psycopg2 driver)."""
        import psycopg2

        name = "t" + uuid.uuid4().hex[:12]
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user,
                                dbname="postgres")  # fmt: skip
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name}")  # a generated identifier, not input
        finally:
            conn.close()
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{name}"


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
