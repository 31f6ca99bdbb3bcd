"""A throwaway PostgreSQL 15 cluster for tests (Debian's server binaries, run as postgres).

Session-scoped: ``initdb`` once into a temp dir owned by ``postgres``, ``pg_ctl start`` on a
free loopback port with the socket in the same dir, ``stop -m fast`` at teardown. Tests
get a fresh database each with :meth:`PostgresCluster.create_database`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.support.net import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def postgres_available() -> bool:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return (PG_BIN / "initdb").exists() and os.geteuid() == 0


@dataclass
class PostgresCluster:
    directory: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def create_database(self, prefix: str = "t") -> str:
        """Create an empty database; return its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        finally:
            await conn.close()
        return self.url(name)

    async def drop_database(self, url: str) -> None:
        """Drop a database made by create_database (its connections are closed first)."""
        name = url.rsplit("/", 1)[1]
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def _run_as_postgres(*args: str) -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=120,
    )


@contextlib.contextmanager
def postgres_cluster(*, durable: bool = False) -> Iterator[PostgresCluster]:
    """Start a cluster; stop it and remove its files afterwards. Tests run it without
    fsync (faster, and a crash of a test cluster loses nothing of value); benchmarks
    pass `durable=True` to measure what a real deployment pays."""
    directory = Path(tempfile.mkdtemp(prefix="gc-pg-"))
    pg = pwd.getpwnam("postgres")
    os.chown(directory, pg.pw_uid, pg.pw_gid)
    data = directory / "data"
    port = free_port()
    started = False
    try:
        _run_as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        options = f"-k {directory} -p {port} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        _run_as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(directory / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        started = True
        yield PostgresCluster(directory, port)
    finally:
        if started:
            with contextlib.suppress(subprocess.SubprocessError):
                _run_as_postgres(
                    str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"
                )
        shutil.rmtree(directory, ignore_errors=True)
