"""Schema migrations: the only way the database schema is created or changed.

Each migration is a frozen piece of history: it describes the DDL as of its version, never the
current tables of schema.py (which would make old migrations change meaning). They run in order,
each in its own transaction together with its row in schema_migrations. On PostgreSQL an advisory
lock keeps two replicas starting at once from migrating concurrently.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
    text,
)

from trellis.controller.store.schema import schema_migrations
from trellis.controller.store.types import UtcDateTime

# Arbitrary constant naming "Trellis schema migration" for pg_advisory_lock.
_PG_LOCK_KEY = 0x7472656C6C6973


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    upgrade: Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    md = MetaData()
    Table(
        "generation",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("value", BigInteger, nullable=False),
    )
    Table(
        "sites",
        md,
        Column("name", String(63), primary_key=True),
        Column("created_at", UtcDateTime, nullable=False),
        Column("labels", JSON, nullable=False),
        Column("subnets", JSON, nullable=False),
        Column("revoked_at", UtcDateTime, nullable=True),
        Column("revoke_reason", Text, nullable=False),
        Column("endpoints", JSON, nullable=False),
        Column("agent_version", String(64), nullable=False),
        Column("applied_map_version", BigInteger, nullable=False),
        Column("last_seen", UtcDateTime, nullable=True),
    )
    Table(
        "certificates",
        md,
        Column("serial", String(40), primary_key=True),
        Column("site", String(63), ForeignKey("sites.name"), nullable=False, index=True),
        Column("issued_at", UtcDateTime, nullable=False),
        Column("not_before", UtcDateTime, nullable=False),
        Column("not_after", UtcDateTime, nullable=False),
        Column("reason", String(16), nullable=False),
        Column("revoked", Boolean, nullable=False),
    )
    Table(
        "tokens",
        md,
        Column("secret_hash", LargeBinary(32), primary_key=True),
        Column("site", String(63), ForeignKey("sites.name"), nullable=False, index=True),
        Column("created_at", UtcDateTime, nullable=False),
        Column("expires_at", UtcDateTime, nullable=False),
        Column("used_at", UtcDateTime, nullable=True),
        Column("created_by", Text, nullable=False),
    )
    Table(
        "audit",
        md,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("at", UtcDateTime, nullable=False, index=True),
        Column("actor", Text, nullable=False),
        Column("action", String(64), nullable=False),
        Column("target", Text, nullable=False),
        Column("outcome", String(16), nullable=False),
        Column("detail", Text, nullable=False),
    )
    md.create_all(conn)
    conn.execute(text("INSERT INTO generation (id, value) VALUES (1, 0)"))


def _v2_policies(conn: Connection) -> None:
    md = MetaData()
    Table(
        "policies",
        md,
        Column(
            "version", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
        ),
        Column("applied_at", UtcDateTime, nullable=False),
        Column("applied_by", Text, nullable=False),
        Column("comment", Text, nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("yaml", Text, nullable=False),
        Column("rolled_back_from", BigInteger, nullable=True),
    )
    md.create_all(conn)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "sites, certificates, tokens, audit, generation", _v1_initial),
    Migration(2, "policy versions", _v2_policies),
)

HEAD = MIGRATIONS[-1].version


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer Trellis; refusing to touch it."""


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table("schema_migrations"):
        return 0
    versions = conn.execute(select(schema_migrations.c.version)).scalars().all()
    return max(versions, default=0)


def migrate(engine: Engine, *, now: Callable[[], dt.datetime], target: int = HEAD) -> list[int]:
    """Bring the database to ``target``; returns the versions applied (empty if already there)."""
    applied: list[int] = []
    with engine.connect() as lock_conn:
        if engine.dialect.name == "postgresql":
            lock_conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        try:
            with engine.begin() as conn:
                schema_migrations.create(conn, checkfirst=True)
            for migration in MIGRATIONS:
                if migration.version > target:
                    break
                with engine.begin() as conn:
                    version = current_version(conn)
                    if version >= migration.version:
                        continue
                    migration.upgrade(conn)
                    conn.execute(
                        schema_migrations.insert().values(
                            version=migration.version, description=migration.description, applied_at=now()
                        )
                    )
                    applied.append(migration.version)
            with engine.connect() as conn:
                version = current_version(conn)
            if version > HEAD:
                raise SchemaTooNew(
                    f"database schema is at version {version}, this Trellis knows up to {HEAD}: "
                    "upgrade Trellis"
                )
        finally:
            if engine.dialect.name == "postgresql":
                lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                lock_conn.commit()
    return applied
