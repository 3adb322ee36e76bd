"""A throwaway PostgreSQL server for tests: a real server, started from the installed binaries.

If TRELLIS_TEST_POSTGRES_URL is set (a server someone else runs), that is used instead. The
cluster lives in a temporary directory, listens only on a Unix socket, and is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _pg_bin(name: str) -> str:
    for directory in PG_BIN_DIRS:
        candidate = directory / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"PostgreSQL binary {name!r} not found: install the postgresql package (scripts/setup)"
        )
    return found


def _as_postgres(args: list[str]) -> list[str]:
    # The server refuses to run as root.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a SQLAlchemy URL of a server database we may create databases in."""
    external = os.environ.get("TRELLIS_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    base = Path(tempfile.mkdtemp(prefix="trellis-pg-"))
    data, sockets = base / "data", base / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
    try:
        subprocess.run(
            _as_postgres(
                [_pg_bin("initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
        )
        options = f"-k {sockets} -c listen_addresses='' -c fsync=off -p 5432"
        subprocess.run(
            _as_postgres(
                [_pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", str(base / "log"), "start"]
            ),
            check=True,
            capture_output=True,
        )
        try:
            yield f"postgresql+psycopg://postgres@/postgres?host={sockets}&port=5432"
        finally:
            subprocess.run(
                _as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                check=False,
                capture_output=True,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """Create an empty database on the server; yield its URL; drop it afterwards."""
    name = f"trellis_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = admin.url.set(database=name).render_as_string(hide_password=False)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
