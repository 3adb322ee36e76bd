"""The controller's store (SQLAlchemy Core; SQLite by default, PostgreSQL for replicas)."""

from trellis.controller.store.records import (
    AuditEvent,
    AuditRecord,
    CertificateRecord,
    EndpointRecord,
    MapInputs,
    PolicyRecord,
    SiteRecord,
)
from trellis.controller.store.store import (
    AsyncStore,
    PolicyConflict,
    SiteExists,
    SiteNotFound,
    SiteRevoked,
    Store,
    StoreError,
    TokenRefused,
    database_url,
)

__all__ = [
    "AsyncStore",
    "AuditEvent",
    "AuditRecord",
    "CertificateRecord",
    "EndpointRecord",
    "MapInputs",
    "PolicyConflict",
    "PolicyRecord",
    "SiteExists",
    "SiteNotFound",
    "SiteRecord",
    "SiteRevoked",
    "Store",
    "StoreError",
    "TokenRefused",
    "database_url",
]
