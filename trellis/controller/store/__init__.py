"""The controller's store (SQLAlchemy Core; SQLite by default, PostgreSQL for replicas)."""

from trellis.controller.store.records import (
    AuditRecord,
    CertificateRecord,
    EndpointRecord,
    MapInputs,
    SiteRecord,
)
from trellis.controller.store.store import (
    AsyncStore,
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
    "AuditRecord",
    "CertificateRecord",
    "EndpointRecord",
    "MapInputs",
    "SiteExists",
    "SiteNotFound",
    "SiteRecord",
    "SiteRevoked",
    "Store",
    "StoreError",
    "TokenRefused",
    "database_url",
]
