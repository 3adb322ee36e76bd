"""Identities as they appear in certificates: SPIFFE-style URIs.

This is the one piece of logic both controller and agent need; it stays tiny and lives with the
contract. A site is ``spiffe://DOMAIN/site/NAME``; an administrator ``spiffe://DOMAIN/admin/NAME``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

# DNS-label-like names: short, lowercase, safe in URIs, file names and interface names.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


class IdentityKind(enum.StrEnum):
    SITE = "site"
    ADMIN = "admin"
    CONTROLLER = "controller"


class IdentityError(ValueError):
    """A name, trust domain or URI that is not a valid Trellis identity."""


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise IdentityError(
            f"invalid name {name!r}: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def check_trust_domain(domain: str) -> str:
    if not _DOMAIN.match(domain) or ".." in domain:
        raise IdentityError(f"invalid trust domain {domain!r}: use a lowercase DNS name such as example.org")
    return domain


@dataclass(frozen=True, slots=True)
class Identity:
    trust_domain: str
    kind: IdentityKind
    name: str

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        check_name(self.name)

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/{self.kind.value}/{self.name}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def site(cls, trust_domain: str, name: str) -> Identity:
        return cls(trust_domain, IdentityKind.SITE, name)

    @classmethod
    def parse(cls, uri: str) -> Identity:
        prefix = "spiffe://"
        if not uri.startswith(prefix):
            raise IdentityError(f"not a Trellis identity: {uri!r}")
        parts = uri[len(prefix) :].split("/")
        if len(parts) != 3:
            raise IdentityError(f"not a Trellis identity: {uri!r}")
        domain, kind, name = parts
        try:
            identity_kind = IdentityKind(kind)
        except ValueError:
            raise IdentityError(f"unknown identity kind {kind!r} in {uri!r}") from None
        return cls(domain, identity_kind, name)
