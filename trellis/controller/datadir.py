"""The controller's data directory: CA, admin credentials, settings and (by default) the SQLite store.

DIR/ca.key          CA private key (0600)
DIR/ca.pem          CA certificate
DIR/admin.pem       first admin credentials (0600)
DIR/controller.json trust domain and creation time
DIR/trellis.db      SQLite store, unless --db points elsewhere
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from trellis.controller.ca import CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority
from trellis.controller.credentials import AdminCredentials

SETTINGS_FILE = "controller.json"
ADMIN_CREDENTIALS_FILE = "admin.pem"


class DataDirError(RuntimeError):
    """The data directory is missing, incomplete, or unsafe; the message says what to do."""


@dataclass(frozen=True, slots=True)
class DataDir:
    path: Path

    @property
    def admin_credentials(self) -> Path:
        return self.path / ADMIN_CREDENTIALS_FILE

    def initialize(self, trust_domain: str, *, admin_name: str, now: dt.datetime) -> CertificateAuthority:
        if (self.path / CA_KEY_FILE).exists():
            raise DataDirError(f"{self.path} already holds a controller CA; refusing to overwrite it")
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        authority = CertificateAuthority.create(trust_domain, now=now)
        authority.save(self.path)
        AdminCredentials.issue(authority, admin_name, now=now).save(self.admin_credentials)
        settings = {"trust_domain": trust_domain, "created_at": now.isoformat()}
        (self.path / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        return authority

    def load_authority(self) -> CertificateAuthority:
        key = self.path / CA_KEY_FILE
        if not key.exists() or not (self.path / CA_CERT_FILE).exists():
            raise DataDirError(
                f"no controller CA in {self.path}: run 'trellis-controller init --data-dir {self.path} "
                "--trust-domain DOMAIN' first"
            )
        mode = key.stat().st_mode & 0o777
        if mode & 0o077:
            raise DataDirError(f"{key} is readable by others (mode {mode:o}): chmod 600 {key}")
        return CertificateAuthority.load(self.path)
