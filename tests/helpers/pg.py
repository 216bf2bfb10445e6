"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl in a temp dir, nothing shared.

The cluster listens on 127.0.0.1 on a free port and on a unix socket in its own directory,
trusts local connections (a test cluster, reachable only from this machine) and runs with
fsync off. Tests run as root in CI and PostgreSQL refuses to run as root, so the cluster runs
as the `postgres` system user (Debian's package creates it) and its directory is chowned to it.

`PgCluster.start()` returns a running cluster; `create_database()` gives each test a fresh
database; `stop()` ends the server and removes the directory. Used by tests/conftest.py and
by bench/pg_bench.py.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

from tests.procs import free_port


class PostgresMissing(RuntimeError):
    """No initdb/pg_ctl on this machine (Debian: `apt-get install postgresql`, as .ci/run does)."""


def find_bin_dir() -> Path:
    """The directory holding initdb and pg_ctl: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent

    def version(path: str) -> tuple[int, ...]:
        m = re.search(r"/postgresql/([\d.]+)/", path)
        return tuple(int(x) for x in m.group(1).split(".")) if m else (0,)

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if not found:
        raise PostgresMissing("PostgreSQL's initdb was not found (on Debian: apt-get install postgresql)")
    return Path(found[-1]).parent


@dataclass
class PgCluster:
    """One running PostgreSQL server owned by the test session."""

    root: Path
    port: int
    bin_dir: Path
    user: str | None  # the OS user the server runs as (None: this process's user)
    _names: count = field(default_factory=lambda: count(1))

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    @classmethod
    def start(cls, *, settings: dict[str, str] | None = None) -> PgCluster:
        bin_dir = find_bin_dir()
        user = None
        if os.geteuid() == 0:  # postgres refuses to run as root
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresMissing("running as root needs the `postgres` system user to run the test cluster")
            user = "postgres"
        root = Path(tempfile.mkdtemp(prefix="fm-pg-"))
        (root / "sock").mkdir()
        if user is not None:
            info = pwd.getpwnam(user)
            for p in (root, root / "sock"):
                os.chown(p, info.pw_uid, info.pw_gid)
        cluster = cls(root=root, port=free_port(), bin_dir=bin_dir, user=user)
        try:
            cluster._run("initdb", "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                         "--locale=C", "--no-sync")
            options = {
                "listen_addresses": "127.0.0.1", "port": str(cluster.port),
                "unix_socket_directories": str(root / "sock"),
                # A throwaway cluster: durability is not what these tests measure.
                "fsync": "off", "full_page_writes": "off", "max_connections": "300",
                **(settings or {}),
            }
            opts = " ".join(f"-c {k}={v}" for k, v in options.items())
            cluster._run("pg_ctl", "-D", str(root / "data"), "-l", str(root / "server.log"), "-o", opts, "-w",
                         "-t", "60", "start")
        except BaseException:
            log_text = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            shutil.rmtree(root, ignore_errors=True)
            if log_text:
                raise RuntimeError(f"the test PostgreSQL did not start:\n{log_text[-3000:]}") from None
            raise
        return cluster

    def _run(self, tool: str, *args: str) -> None:
        try:
            subprocess.run([str(self.bin_dir / tool), *args], check=True, user=self.user, cwd=self.root,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"{tool} failed ({e.returncode}):\n{e.stdout}") from None

    def create_database(self, prefix: str = "t") -> str:
        """A fresh empty database; returns its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def sql(self, statement: str) -> None:
        """Run one statement as the superuser through psql (no Python driver needed here)."""
        self._run("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
                  "-U", "postgres", "-d", "postgres", "-c", statement)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
