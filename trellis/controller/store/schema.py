"""The current shape of the database, as queries see it.

The schema is created and upgraded only by migrations (migrations.py); a test checks that the
migrated database matches these definitions.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

from trellis.controller.store.types import UtcDateTime

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

# A single row whose value grows on every change that alters some agent's network map. Replicas
# sharing one PostgreSQL database watch it to learn of each other's changes.
generation = Table(
    "generation",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("value", BigInteger, nullable=False),
)

sites = Table(
    "sites",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("labels", JSON, nullable=False),
    Column("subnets", JSON, nullable=False),
    Column("revoked_at", UtcDateTime, nullable=True),
    Column("revoke_reason", Text, nullable=False),
    # What the agent last reported of itself.
    Column("endpoints", JSON, nullable=False),
    Column("agent_version", String(64), nullable=False),
    Column("applied_map_version", BigInteger, nullable=False),
    Column("last_seen", UtcDateTime, nullable=True),
)

certificates = Table(
    "certificates",
    metadata,
    Column("serial", String(40), primary_key=True),
    Column("site", String(63), ForeignKey("sites.name"), nullable=False, index=True),
    Column("issued_at", UtcDateTime, nullable=False),
    Column("not_before", UtcDateTime, nullable=False),
    Column("not_after", UtcDateTime, nullable=False),
    Column("reason", String(16), nullable=False),  # enroll | renew
    Column("revoked", Boolean, nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("secret_hash", LargeBinary(32), primary_key=True),
    Column("site", String(63), ForeignKey("sites.name"), nullable=False, index=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("used_at", UtcDateTime, nullable=True),
    Column("created_by", Text, nullable=False),
)

# Every policy ever applied; the running one is the highest version.
policies = Table(
    "policies",
    metadata,
    Column("version", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("applied_at", UtcDateTime, nullable=False),
    Column("applied_by", Text, nullable=False),
    Column("comment", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("yaml", Text, nullable=False),
    Column("rolled_back_from", BigInteger, nullable=True),
)

audit = Table(
    "audit",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", UtcDateTime, nullable=False, index=True),
    Column("actor", Text, nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", Text, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text, nullable=False),
)
