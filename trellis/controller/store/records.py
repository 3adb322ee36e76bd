"""What the store gives back: immutable records, detached from any database session."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class SiteRecord:
    name: str
    created_at: dt.datetime
    labels: tuple[tuple[str, str], ...]  # sorted (key, value) pairs
    subnets: tuple[str, ...]
    revoked_at: dt.datetime | None
    revoke_reason: str
    endpoints: tuple[EndpointRecord, ...]
    agent_version: str
    applied_map_version: int
    last_seen: dt.datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    serial: str
    site: str
    issued_at: dt.datetime
    not_before: dt.datetime
    not_after: dt.datetime
    reason: str
    revoked: bool


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: dt.datetime
    actor: str
    action: str
    target: str
    outcome: str
    detail: str


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    version: int
    applied_at: dt.datetime
    applied_by: str
    comment: str
    sha256: str
    yaml: str
    rolled_back_from: int | None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """An audit line to write (the store assigns its id and time)."""

    actor: str
    action: str
    target: str
    outcome: str  # ok | refused
    detail: str = ""


@dataclass(frozen=True, slots=True)
class MapInputs:
    """Everything network maps are computed from, read in one transaction."""

    generation: int
    sites: tuple[SiteRecord, ...]
    revoked_serials: tuple[str, ...]  # of certificates not yet expired
    policy: PolicyRecord | None  # the running policy (None: none applied yet, default deny)
