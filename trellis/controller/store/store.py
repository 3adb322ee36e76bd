"""The controller's store: SQLAlchemy Core over embedded SQLite (WAL) or PostgreSQL.

Methods are synchronous and short; the asyncio side runs them on one dedicated thread
(``AsyncStore``), which also serialises SQLite writers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, Row, create_engine, event, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from trellis.controller.store import schema
from trellis.controller.store.migrations import migrate
from trellis.controller.store.records import (
    AuditEvent,
    AuditRecord,
    CertificateRecord,
    EndpointRecord,
    MapInputs,
    PolicyRecord,
    SiteRecord,
)

P = ParamSpec("P")
T = TypeVar("T")

MAX_AUDIT_PAGE = 1000
SQLITE_FILE = "trellis.db"


class StoreError(Exception):
    """Base of the store's domain errors (not database failures)."""


class SiteExists(StoreError):
    pass


class SiteNotFound(StoreError):
    pass


class SiteRevoked(StoreError):
    pass


class PolicyConflict(StoreError):
    """The running policy changed under the caller (another admin, another replica)."""


class TokenRefused(StoreError):
    """A join token that cannot be used; ``reason`` is safe to show and to audit."""

    def __init__(self, reason: str, site: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.site = site


def database_url(url: str | None, data_dir: Path) -> str:
    """The SQLAlchemy URL for ``--db``: SQLite in the data dir by default; postgresql:// uses psycopg 3."""
    if url is None:
        return f"sqlite:///{(data_dir / SQLITE_FILE).resolve()}"
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(
            f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql://"
        )
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # the store is small; losing an issued cert is not
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _site(row: Row[Any]) -> SiteRecord:
    return SiteRecord(
        name=row.name,
        created_at=row.created_at,
        labels=tuple(sorted(dict(row.labels).items())),
        subnets=tuple(row.subnets),
        revoked_at=row.revoked_at,
        revoke_reason=row.revoke_reason,
        endpoints=tuple(EndpointRecord(address=e["address"], port=int(e["port"])) for e in row.endpoints),
        agent_version=row.agent_version,
        applied_map_version=row.applied_map_version,
        last_seen=row.last_seen,
    )


def _policy(row: Row[Any]) -> PolicyRecord:
    return PolicyRecord(
        version=int(row.version),
        applied_at=row.applied_at,
        applied_by=row.applied_by,
        comment=row.comment,
        sha256=row.sha256,
        yaml=row.yaml,
        rolled_back_from=int(row.rolled_back_from) if row.rolled_back_from is not None else None,
    )


def _certificate(row: Row[Any]) -> CertificateRecord:
    return CertificateRecord(
        serial=row.serial,
        site=row.site,
        issued_at=row.issued_at,
        not_before=row.not_before,
        not_after=row.not_after,
        reason=row.reason,
        revoked=row.revoked,
    )


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, now: Callable[[], dt.datetime]) -> Store:
        """Connect and migrate to the newest schema."""
        backend = make_url(url).get_backend_name()
        if backend == "sqlite":
            engine = create_engine(url, connect_args={"check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        migrate(engine, now=now)
        return cls(engine)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @staticmethod
    def _bump_generation(conn: Connection) -> None:
        conn.execute(
            update(schema.generation)
            .where(schema.generation.c.id == 1)
            .values(value=schema.generation.c.value + 1)
        )

    # -- sites ---------------------------------------------------------------------------------

    def add_site(
        self, name: str, subnets: Sequence[str], labels: dict[str, str], *, now: dt.datetime
    ) -> SiteRecord:
        try:
            with self._tx() as conn:
                conn.execute(
                    schema.sites.insert().values(
                        name=name,
                        created_at=now,
                        labels=dict(labels),
                        subnets=list(subnets),
                        revoked_at=None,
                        revoke_reason="",
                        endpoints=[],
                        agent_version="",
                        applied_map_version=0,
                        last_seen=None,
                    )
                )
                self._bump_generation(conn)
        except IntegrityError:
            raise SiteExists(f"site {name!r} already exists") from None
        site = self.get_site(name)
        if site is None:  # pragma: no cover - just inserted in a committed transaction
            raise SiteNotFound(name)
        return site

    def get_site(self, name: str) -> SiteRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(schema.sites).where(schema.sites.c.name == name)).first()
        return _site(row) if row else None

    def list_sites(self) -> list[SiteRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(schema.sites).order_by(schema.sites.c.name)).all()
        return [_site(r) for r in rows]

    def revoke_site(self, name: str, reason: str, *, now: dt.datetime) -> tuple[SiteRecord, list[str]]:
        """Mark the site and every certificate it holds revoked; returns the site and the serials."""
        with self._tx() as conn:
            row = conn.execute(
                select(schema.sites).where(schema.sites.c.name == name).with_for_update()
            ).first()
            if row is None:
                raise SiteNotFound(f"no site {name!r}")
            if row.revoked_at is not None:
                raise SiteRevoked(f"site {name!r} was already revoked at {row.revoked_at.isoformat()}")
            conn.execute(
                update(schema.sites)
                .where(schema.sites.c.name == name)
                .values(revoked_at=now, revoke_reason=reason)
            )
            conn.execute(
                update(schema.certificates).where(schema.certificates.c.site == name).values(revoked=True)
            )
            serials = conn.execute(
                select(schema.certificates.c.serial).where(schema.certificates.c.site == name)
            )
            revoked = sorted(serials.scalars())
            self._bump_generation(conn)
        site = self.get_site(name)
        if site is None:  # pragma: no cover
            raise SiteNotFound(name)
        return site, revoked

    def record_report(
        self,
        name: str,
        *,
        endpoints: Sequence[EndpointRecord],
        agent_version: str,
        applied_map_version: int,
        now: dt.datetime,
    ) -> bool:
        """Store what an agent reported; True when its endpoints changed (other maps must follow)."""
        new_endpoints = [{"address": e.address, "port": e.port} for e in endpoints]
        with self._tx() as conn:
            row = conn.execute(select(schema.sites.c.endpoints).where(schema.sites.c.name == name)).first()
            if row is None:
                raise SiteNotFound(f"no site {name!r}")
            changed = list(row.endpoints) != new_endpoints
            conn.execute(
                update(schema.sites)
                .where(schema.sites.c.name == name)
                .values(
                    endpoints=new_endpoints,
                    agent_version=agent_version,
                    applied_map_version=applied_map_version,
                    last_seen=now,
                )
            )
            if changed:
                self._bump_generation(conn)
        return changed

    # -- tokens --------------------------------------------------------------------------------

    def add_token(
        self,
        site: str,
        secret_hash: bytes,
        *,
        created_at: dt.datetime,
        expires_at: dt.datetime,
        created_by: str,
    ) -> None:
        with self._tx() as conn:
            row = conn.execute(select(schema.sites.c.revoked_at).where(schema.sites.c.name == site)).first()
            if row is None:
                raise SiteNotFound(f"no site {site!r}")
            if row.revoked_at is not None:
                raise SiteRevoked(f"site {site!r} is revoked: it cannot enroll again")
            conn.execute(
                schema.tokens.insert().values(
                    secret_hash=secret_hash,
                    site=site,
                    created_at=created_at,
                    expires_at=expires_at,
                    used_at=None,
                    created_by=created_by,
                )
            )

    def consume_token(self, secret_hash: bytes, *, now: dt.datetime) -> str:
        """Use a token once: returns its site, or raises TokenRefused saying why."""
        t = schema.tokens
        with self._tx() as conn:
            row = conn.execute(select(t).where(t.c.secret_hash == secret_hash)).first()
            if row is None:
                raise TokenRefused("unknown join token")
            if row.used_at is not None:
                raise TokenRefused(f"join token already used at {row.used_at.isoformat()}", row.site)
            if row.expires_at <= now:
                raise TokenRefused(f"join token expired at {row.expires_at.isoformat()}", row.site)
            site = conn.execute(
                select(schema.sites.c.revoked_at).where(schema.sites.c.name == row.site)
            ).one()
            if site.revoked_at is not None:
                raise TokenRefused(f"site {row.site!r} is revoked", row.site)
            # The guard on used_at makes the claim atomic even if two enrollments race.
            claimed = conn.execute(
                update(t).where(t.c.secret_hash == secret_hash, t.c.used_at.is_(None)).values(used_at=now)
            )
            if claimed.rowcount != 1:
                raise TokenRefused("join token already used", row.site)
            return str(row.site)

    # -- certificates --------------------------------------------------------------------------

    def add_certificate(
        self,
        site: str,
        serial: str,
        *,
        issued_at: dt.datetime,
        not_before: dt.datetime,
        not_after: dt.datetime,
        reason: str,
        audit: AuditEvent,
    ) -> None:
        """Record an issued certificate together with its audit line (one commit on the hot path)."""
        with self._tx() as conn:
            self._insert_audit(conn, audit, at=issued_at)
            conn.execute(
                schema.certificates.insert().values(
                    serial=serial,
                    site=site,
                    issued_at=issued_at,
                    not_before=not_before,
                    not_after=not_after,
                    reason=reason,
                    revoked=False,
                )
            )

    def get_certificate(self, serial: str) -> CertificateRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(schema.certificates).where(schema.certificates.c.serial == serial)
            ).first()
        return _certificate(row) if row else None

    def certificate_standing(self, serial: str) -> tuple[CertificateRecord, bool] | None:
        """A certificate and whether its site is revoked, in one read (every agent call asks)."""
        c, s = schema.certificates, schema.sites
        query = select(c, s.c.revoked_at).join(s, s.c.name == c.c.site).where(c.c.serial == serial)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return (_certificate(row), row.revoked_at is not None) if row else None

    def certificates_of(self, site: str, *, limit: int = 10) -> list[CertificateRecord]:
        c = schema.certificates
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(c).where(c.c.site == site).order_by(c.c.issued_at.desc()).limit(limit)
            ).all()
        return [_certificate(r) for r in rows]

    # -- maps ----------------------------------------------------------------------------------

    def generation(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(schema.generation.c.value).where(schema.generation.c.id == 1)
                ).scalar_one()
            )

    def map_inputs(self, *, now: dt.datetime) -> MapInputs:
        c = schema.certificates
        with self._tx() as conn:
            gen = conn.execute(
                select(schema.generation.c.value).where(schema.generation.c.id == 1)
            ).scalar_one()
            sites = conn.execute(select(schema.sites).order_by(schema.sites.c.name)).all()
            serials = conn.execute(
                select(c.c.serial).where(c.c.revoked.is_(True), c.c.not_after > now).order_by(c.c.serial)
            ).scalars()
            policy = conn.execute(
                select(schema.policies).order_by(schema.policies.c.version.desc()).limit(1)
            ).first()
            return MapInputs(
                generation=int(gen),
                sites=tuple(_site(s) for s in sites),
                revoked_serials=tuple(serials),
                policy=_policy(policy) if policy else None,
            )

    # -- policies ------------------------------------------------------------------------------

    def add_policy(
        self,
        *,
        yaml: str,
        sha256: str,
        applied_by: str,
        comment: str,
        rolled_back_from: int | None,
        expected_version: int | None,
        now: dt.datetime,
        audit: AuditEvent,
    ) -> PolicyRecord:
        """Make ``yaml`` the running policy as the next version (with its audit line, in one
        transaction). ``expected_version`` guards against two admins applying at once."""
        p = schema.policies
        try:
            with self._tx() as conn:
                current = conn.execute(select(func.max(p.c.version))).scalar_one()
                current = int(current or 0)
                if expected_version is not None and expected_version != current:
                    raise PolicyConflict(
                        f"the running policy is version {current}, not {expected_version}: "
                        "review and apply again"
                    )
                record = PolicyRecord(
                    version=current + 1,
                    applied_at=now,
                    applied_by=applied_by,
                    comment=comment,
                    sha256=sha256,
                    yaml=yaml,
                    rolled_back_from=rolled_back_from,
                )
                conn.execute(
                    p.insert().values(
                        version=record.version,
                        applied_at=now,
                        applied_by=applied_by,
                        comment=comment,
                        sha256=sha256,
                        yaml=yaml,
                        rolled_back_from=rolled_back_from,
                    )
                )
                self._insert_audit(conn, audit, at=now)
                self._bump_generation(conn)
        except IntegrityError:  # another replica took the same version number first
            raise PolicyConflict(
                "another policy was applied at the same moment: review and apply again"
            ) from None
        return record

    def get_policy(self, version: int | None = None) -> PolicyRecord | None:
        """A policy version, or the running one."""
        p = schema.policies
        query = (
            select(p).order_by(p.c.version.desc()).limit(1)
            if version is None
            else select(p).where(p.c.version == version)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _policy(row) if row else None

    def list_policies(self, *, limit: int = 50, before_version: int = 0) -> list[PolicyRecord]:
        p = schema.policies
        query = select(p).order_by(p.c.version.desc()).limit(max(1, min(limit, MAX_AUDIT_PAGE)))
        if before_version:
            query = query.where(p.c.version < before_version)
        with self.engine.connect() as conn:
            return [_policy(r) for r in conn.execute(query).all()]

    # -- audit ---------------------------------------------------------------------------------

    @staticmethod
    def _insert_audit(conn: Connection, event: AuditEvent, *, at: dt.datetime) -> None:
        conn.execute(
            schema.audit.insert().values(
                at=at,
                actor=event.actor,
                action=event.action,
                target=event.target,
                outcome=event.outcome,
                detail=event.detail,
            )
        )

    def append_audit(self, event: AuditEvent, *, at: dt.datetime) -> None:
        with self._tx() as conn:
            self._insert_audit(conn, event, at=at)

    def list_audit(self, *, limit: int = 100, before_id: int = 0) -> list[AuditRecord]:
        a = schema.audit
        query = select(a).order_by(a.c.id.desc()).limit(max(1, min(limit, MAX_AUDIT_PAGE)))
        if before_id:
            query = query.where(a.c.id < before_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            AuditRecord(
                id=r.id,
                at=r.at,
                actor=r.actor,
                action=r.action,
                target=r.target,
                outcome=r.outcome,
                detail=r.detail,
            )
            for r in rows
        ]

    def count_audit(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(schema.audit)).scalar_one())


class AsyncStore:
    """Runs Store methods on one dedicated thread so the event loop never blocks on the database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trellis-store")

    async def call(self, method: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: method(self.store, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()
