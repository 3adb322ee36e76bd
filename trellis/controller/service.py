"""The controller's operations, independent of gRPC: enrollment, renewal, sites, revocation, audit.

Every admin action, enrollment, renewal and revocation is audited, and so is every refusal.
Callers arrive already authenticated by the API boundary (``Caller``); identity never comes from a
request field.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from cryptography import x509

from trellis import __version__
from trellis.controller import ca as ca_module
from trellis.controller.ca import CertificateAuthority, CertificateRequestError, load_csr, serial_hex
from trellis.controller.errors import (
    AlreadyExists,
    ControllerError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from trellis.controller.hub import SessionEnd, SyncHub
from trellis.controller.maps import MapSnapshot
from trellis.controller.policies import NextChangeTimer, RunningPolicy
from trellis.controller.store import (
    AsyncStore,
    AuditEvent,
    AuditRecord,
    CertificateRecord,
    EndpointRecord,
    SiteExists,
    SiteNotFound,
    SiteRecord,
    SiteRevoked,
    Store,
    TokenRefused,
)
from trellis.v1.identity import Identity, IdentityError, IdentityKind, check_name
from trellis.v1.token import JoinToken, TokenFormatError

log = logging.getLogger(__name__)

DEFAULT_TOKEN_TTL = dt.timedelta(hours=1)
MIN_TOKEN_TTL = dt.timedelta(minutes=1)
MAX_TOKEN_TTL = dt.timedelta(days=7)
MAX_SUBNETS = 64
MAX_LABELS = 32
MAX_ENDPOINTS = 16
MAX_REASON_CHARS = 500
MAX_AGENT_VERSION_CHARS = 64
_LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: from the verified TLS client certificate, or the peer address if none."""

    identity: Identity | None
    serial: str
    not_after: dt.datetime | None
    peer: str

    @property
    def actor(self) -> str:
        return self.identity.uri if self.identity else f"peer:{self.peer}"


@dataclass(frozen=True, slots=True)
class Issued:
    site: str
    identity: Identity
    certificate: x509.Certificate
    ca_bundle_der: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class SiteView:
    site: SiteRecord
    certificates: tuple[CertificateRecord, ...]
    connected: bool


@dataclass(frozen=True, slots=True)
class Status:
    version: str
    trust_domain: str
    store: str
    ca_not_after: dt.datetime
    sites: int
    revoked_sites: int
    connected_agents: int
    generation: int
    cert_ttl: dt.timedelta


def normalize_subnets(subnets: Sequence[str]) -> list[str]:
    if not subnets:
        raise InvalidArgument("a site needs at least one --subnet")
    if len(subnets) > MAX_SUBNETS:
        raise InvalidArgument(f"at most {MAX_SUBNETS} subnets per site")
    result: list[str] = []
    for text in subnets:
        try:
            network = ipaddress.ip_network(text.strip(), strict=True)
        except ValueError as e:
            raise InvalidArgument(f"invalid subnet {text!r}: {e}") from None
        if str(network) not in result:
            result.append(str(network))
    return result


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels per site")
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise InvalidArgument(f"invalid label key {key!r}: lowercase letters, digits, '.', '_', '-', '/'")
        if not _LABEL_VALUE.match(value):
            raise InvalidArgument(
                f"invalid label value {value!r} for {key!r}: letters, digits, '.', '_', '-'"
            )
    return dict(sorted(labels.items()))


def check_token_ttl(ttl: dt.timedelta | None) -> dt.timedelta:
    if ttl is None:
        return DEFAULT_TOKEN_TTL
    if not MIN_TOKEN_TTL <= ttl <= MAX_TOKEN_TTL:
        raise InvalidArgument(f"token lifetime must be between {MIN_TOKEN_TTL} and {MAX_TOKEN_TTL}")
    return ttl


class ControllerService:
    def __init__(
        self,
        *,
        authority: CertificateAuthority,
        store: AsyncStore,
        clock: Callable[[], dt.datetime],
        cert_ttl: dt.timedelta = ca_module.DEFAULT_LEAF_TTL,
    ) -> None:
        if not ca_module.MIN_LEAF_TTL <= cert_ttl <= ca_module.MAX_LEAF_TTL:
            raise ValueError(
                f"certificate lifetime must be between {ca_module.MIN_LEAF_TTL} and {ca_module.MAX_LEAF_TTL}"
            )
        self.authority = authority
        self.store = store
        self.clock = clock
        self.cert_ttl = cert_ttl
        self.hub = SyncHub(load_snapshot=self._load_snapshot, read_generation=self._read_generation)
        self.policy = RunningPolicy(authority.trust_domain)
        # When a rule's time window opens or closes, the maps are recomputed without any change
        # in the store.
        self._next_change = NextChangeTimer(clock, self.hub.invalidate)
        self._policy_rebuild: asyncio.Task[None] | None = None
        self._policy_rebuild_again = False

    @property
    def trust_domain(self) -> str:
        return self.authority.trust_domain

    # -- audit ---------------------------------------------------------------------------------

    async def audit(self, actor: str, action: str, target: str, outcome: str, detail: str = "") -> None:
        event = AuditEvent(actor=actor, action=action, target=target, outcome=outcome, detail=detail)
        await self.store.call(Store.append_audit, event, at=self.clock())

    @contextlib.asynccontextmanager
    async def refusals_audited(self, caller: Caller, action: str, target: str) -> AsyncIterator[None]:
        """Audit a refusal raised inside the block, with its reason, and let it propagate."""
        try:
            yield
        except ControllerError as e:
            await self.audit(caller.actor, action, target, "refused", str(e))
            raise

    # -- identities of callers -----------------------------------------------------------------

    async def authenticate_site(self, caller: Caller, action: str) -> str:
        """The site name of a caller presenting a site certificate that is known and not revoked."""
        identity = caller.identity
        async with self.refusals_audited(caller, action, identity.uri if identity else ""):
            if identity is None:
                raise Unauthenticated("a site certificate is required")
            if identity.trust_domain != self.trust_domain:
                raise Unauthenticated(f"certificate is from trust domain {identity.trust_domain}")
            if identity.kind is not IdentityKind.SITE:
                raise PermissionDenied(f"{identity.kind.value} certificates may not call the agent API")
            standing = await self.store.call(Store.certificate_standing, caller.serial)
            if standing is None or standing[0].site != identity.name:
                raise Unauthenticated("unknown certificate")
            record, site_revoked = standing
            if site_revoked:
                raise PermissionDenied(f"site {record.site} is revoked")
            if record.revoked:
                raise PermissionDenied(f"certificate {caller.serial} is revoked")
        return identity.name

    async def authenticate_admin(self, caller: Caller, action: str) -> Identity:
        identity = caller.identity
        async with self.refusals_audited(caller, action, ""):
            if identity is None:
                raise Unauthenticated("an admin certificate is required")
            if identity.trust_domain != self.trust_domain:
                raise Unauthenticated(f"certificate is from trust domain {identity.trust_domain}")
            if identity.kind is not IdentityKind.ADMIN:
                raise PermissionDenied(f"{identity.kind.value} certificates may not call the admin API")
        return identity

    # -- enrollment and renewal ----------------------------------------------------------------

    async def enroll(self, caller: Caller, token_text: str, csr_der: bytes) -> Issued:
        """Exchange a join token and a CSR for a certificate. The CSR is checked before the token is
        claimed, so a malformed request does not burn the token."""
        target = ""
        try:
            try:
                token = JoinToken.parse(token_text)
            except TokenFormatError as e:
                raise InvalidArgument(str(e)) from None
            target = f"token:{token.token_id}"
            if token.ca_pin != self.authority.spki_sha256:
                raise Unauthenticated("join token was issued by a different controller (CA pin mismatch)")
            try:
                csr = load_csr(csr_der)
            except CertificateRequestError as e:
                raise InvalidArgument(str(e)) from None
            now = self.clock()
            try:
                site = await self.store.call(Store.consume_token, token.secret_hash, now=now)
            except TokenRefused as e:
                target = f"{e.site or '?'} ({target})"
                raise Unauthenticated(e.reason) from None
            target = site
            issued = await self._issue(
                caller, site, csr, now=now, reason="enroll", detail=f"via token {token.token_id}"
            )
        except ControllerError as e:
            await self.audit(caller.actor, "enroll", target, "refused", str(e))
            raise
        return issued

    async def renew(self, caller: Caller, site: str, csr_der: bytes) -> Issued:
        identity = Identity.site(self.trust_domain, site)
        async with self.refusals_audited(caller, "renew", identity.uri):
            try:
                csr = load_csr(csr_der)
                asked = ca_module.requested_identity(csr)
            except CertificateRequestError as e:
                raise InvalidArgument(str(e)) from None
            if asked is None:
                raise InvalidArgument("renewal CSR must name the identity it renews (URI SAN)")
            if asked != identity:
                raise PermissionDenied(f"caller {identity} may not renew {asked}")
            return await self._issue(caller, site, csr, now=self.clock(), reason="renew", detail="")

    async def _issue(
        self,
        caller: Caller,
        site: str,
        csr: x509.CertificateSigningRequest,
        *,
        now: dt.datetime,
        reason: str,
        detail: str,
    ) -> Issued:
        """Sign, then record the certificate and its audit line in one transaction."""
        identity = Identity.site(self.trust_domain, site)
        try:
            certificate = self.authority.issue(csr, identity, now=now, ttl=self.cert_ttl)
        except CertificateRequestError as e:
            raise InvalidArgument(str(e)) from None
        await self.store.call(
            Store.add_certificate,
            site,
            serial_hex(certificate),
            issued_at=now,
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            reason=reason,
            audit=AuditEvent(
                actor=caller.actor,
                action=reason,
                target=site,
                outcome="ok",
                detail=f"serial {serial_hex(certificate)} {detail}".strip(),
            ),
        )
        return Issued(
            site=site,
            identity=identity,
            certificate=certificate,
            ca_bundle_der=tuple(self.authority.bundle_der),
        )

    # -- admin operations ----------------------------------------------------------------------

    async def add_site(
        self,
        caller: Caller,
        name: str,
        subnets: Sequence[str],
        labels: dict[str, str],
        token_ttl: dt.timedelta | None,
    ) -> tuple[SiteRecord, JoinToken, dt.datetime]:
        async with self.refusals_audited(caller, "site.add", name):
            try:
                check_name(name)
            except IdentityError as e:
                raise InvalidArgument(str(e)) from None
            clean_subnets = normalize_subnets(subnets)
            clean_labels = check_labels(labels)
            ttl = check_token_ttl(token_ttl)
            now = self.clock()
            try:
                site = await self.store.call(Store.add_site, name, clean_subnets, clean_labels, now=now)
            except SiteExists as e:
                raise AlreadyExists(str(e)) from None
            token, expires = await self._new_token(caller, name, ttl, now)
        await self.audit(
            caller.actor,
            "site.add",
            name,
            "ok",
            f"subnets {','.join(site.subnets)}; token {token.token_id} until {expires.isoformat()}",
        )
        await self.hub.refresh()
        return site, token, expires

    async def _new_token(
        self, caller: Caller, site: str, ttl: dt.timedelta, now: dt.datetime
    ) -> tuple[JoinToken, dt.datetime]:
        token = JoinToken.generate(self.authority.spki_sha256)
        expires = now + ttl
        try:
            await self.store.call(
                Store.add_token,
                site,
                token.secret_hash,
                created_at=now,
                expires_at=expires,
                created_by=caller.actor,
            )
        except SiteNotFound as e:
            raise NotFound(str(e)) from None
        except SiteRevoked as e:
            raise FailedPrecondition(str(e)) from None
        return token, expires

    async def create_token(
        self, caller: Caller, site: str, token_ttl: dt.timedelta | None
    ) -> tuple[JoinToken, dt.datetime]:
        async with self.refusals_audited(caller, "token.create", site):
            token, expires = await self._new_token(caller, site, check_token_ttl(token_ttl), self.clock())
        await self.audit(
            caller.actor, "token.create", site, "ok", f"token {token.token_id} until {expires.isoformat()}"
        )
        return token, expires

    async def revoke_site(self, caller: Caller, name: str, reason: str) -> SiteRecord:
        async with self.refusals_audited(caller, "site.revoke", name):
            if len(reason) > MAX_REASON_CHARS:
                raise InvalidArgument(f"reason longer than {MAX_REASON_CHARS} characters")
            try:
                site, serials = await self.store.call(Store.revoke_site, name, reason, now=self.clock())
            except SiteNotFound as e:
                raise NotFound(str(e)) from None
            except SiteRevoked as e:
                raise FailedPrecondition(str(e)) from None
        closed = self.hub.end_site(name, SessionEnd.REVOKED)
        await self.hub.refresh()
        log.info("revoked site %s (%d certificates, %d streams closed)", name, len(serials), closed)
        await self.audit(
            caller.actor,
            "site.revoke",
            name,
            "ok",
            f"reason: {reason or '-'}; serials {','.join(serials) or '-'}; streams closed {closed}",
        )
        return site

    async def get_site(self, caller: Caller, name: str) -> SiteView:
        async with self.refusals_audited(caller, "site.show", name):
            site = await self.store.call(Store.get_site, name)
            if site is None:
                raise NotFound(f"no site {name!r}")
        await self.audit(caller.actor, "site.show", name, "ok")
        certificates = await self.store.call(Store.certificates_of, name)
        return SiteView(site=site, certificates=tuple(certificates), connected=self.hub.is_connected(name))

    # Reads are audited too: who looked at the inventory is part of the record.

    async def list_sites(self, caller: Caller) -> list[SiteView]:
        await self.audit(caller.actor, "site.list", "", "ok")
        sites = await self.store.call(Store.list_sites)
        return [SiteView(site=s, certificates=(), connected=self.hub.is_connected(s.name)) for s in sites]

    async def list_audit(self, caller: Caller, *, limit: int, before_id: int) -> list[AuditRecord]:
        await self.audit(caller.actor, "audit.list", "", "ok")
        return await self.store.call(Store.list_audit, limit=limit or 100, before_id=before_id)

    async def status(self, caller: Caller) -> Status:
        await self.audit(caller.actor, "status", "", "ok")
        sites = await self.store.call(Store.list_sites)
        return Status(
            version=__version__,
            trust_domain=self.trust_domain,
            store=self.store.store.backend,
            ca_not_after=self.authority.certificate.not_valid_after_utc,
            sites=len(sites),
            revoked_sites=sum(1 for s in sites if s.revoked),
            connected_agents=self.hub.connected_sites,
            generation=await self._read_generation(),
            cert_ttl=self.cert_ttl,
        )

    # -- what agents report --------------------------------------------------------------------

    async def record_report(
        self, site: str, *, endpoints: Sequence[EndpointRecord], agent_version: str, applied_map_version: int
    ) -> None:
        if len(endpoints) > MAX_ENDPOINTS:
            raise InvalidArgument(f"at most {MAX_ENDPOINTS} endpoints")
        for endpoint in endpoints:
            try:
                ipaddress.ip_address(endpoint.address)
            except ValueError:
                raise InvalidArgument(f"endpoint address {endpoint.address!r} is not an IP address") from None
            if not 0 < endpoint.port < 65536:
                raise InvalidArgument(f"endpoint port {endpoint.port} out of range")
        changed = await self.store.call(
            Store.record_report,
            site,
            endpoints=list(endpoints),
            agent_version=agent_version[:MAX_AGENT_VERSION_CHARS],
            applied_map_version=applied_map_version,
            now=self.clock(),
        )
        if changed:
            await self.hub.refresh()

    # -- maps ----------------------------------------------------------------------------------

    async def _read_generation(self) -> int:
        return await self.store.call(Store.generation)

    async def _load_snapshot(self) -> MapSnapshot:
        now = self.clock()
        inputs = await self.store.call(Store.map_inputs, now=now)
        if not self.policy.ready:  # no map goes out before the policy is compiled once
            self.policy.adopt(await asyncio.to_thread(self.policy.build, inputs, now), inputs)
        elif self.policy.stale(inputs):
            # Maps go out now with the views compiled so far; the new ones follow when the rebuild
            # is done. (Revoked sites are masked out of the views at once, without a rebuild.)
            self._rebuild_policy_soon()
        self.policy.mask(inputs)
        self.policy.advance(now)
        self._next_change.schedule(self.policy.next_change())
        return MapSnapshot(
            inputs=inputs,
            trust_domain=self.trust_domain,
            ca_bundle_der=tuple(self.authority.bundle_der),
            policy=self.policy,
        )

    def _rebuild_policy_soon(self) -> None:
        if self._policy_rebuild is not None and not self._policy_rebuild.done():
            self._policy_rebuild_again = True
            return
        self._policy_rebuild = asyncio.create_task(self._rebuild_policy(), name="policy-rebuild")

    async def _rebuild_policy(self) -> None:
        """Compile the policy for the current sites on a worker thread, then push the views."""
        while True:
            self._policy_rebuild_again = False
            now = self.clock()
            inputs = await self.store.call(Store.map_inputs, now=now)
            if self.policy.stale(inputs):
                compiler = await asyncio.to_thread(self.policy.build, inputs, now)
                if self.policy.adopt(compiler, inputs):
                    self.hub.invalidate()
            if not self._policy_rebuild_again:
                return

    def close(self) -> None:
        self._next_change.cancel()
        if self._policy_rebuild is not None:
            self._policy_rebuild.cancel()
