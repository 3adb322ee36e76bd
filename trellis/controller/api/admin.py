"""The admin service (trellisctl). Every method requires an admin certificate."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc

from trellis.controller.api.boundary import caller_of
from trellis.controller.maps import site_identity, timestamp
from trellis.controller.service import Caller, ControllerService, SiteView
from trellis.controller.store import AuditRecord
from trellis.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from trellis.v1.token import JoinToken

ServicerContext = grpc.aio.ServicerContext[Any, Any]


def _ttl(seconds: int) -> dt.timedelta | None:
    return dt.timedelta(seconds=seconds) if seconds else None


def site_message(view: SiteView, trust_domain: str) -> admin_pb2.Site:
    site = view.site
    message = admin_pb2.Site(
        name=site.name,
        identity=site_identity(trust_domain, site.name),
        labels=dict(site.labels),
        subnets=list(site.subnets),
        endpoints=[common_pb2.Endpoint(address=e.address, port=e.port) for e in site.endpoints],
        created_at=timestamp(site.created_at),
        revoked=site.revoked,
        revoke_reason=site.revoke_reason,
        connected=view.connected,
        agent_version=site.agent_version,
        applied_map_version=site.applied_map_version,
        certificates=[
            admin_pb2.Certificate(
                serial=c.serial,
                not_before=timestamp(c.not_before),
                not_after=timestamp(c.not_after),
                revoked=c.revoked,
            )
            for c in view.certificates
        ],
    )
    if site.revoked_at:
        message.revoked_at.CopyFrom(timestamp(site.revoked_at))
    if site.last_seen:
        message.last_seen.CopyFrom(timestamp(site.last_seen))
    return message


def token_message(site: str, token: JoinToken, expires: dt.datetime) -> admin_pb2.JoinToken:
    return admin_pb2.JoinToken(site=site, token=token.encode(), expires_at=timestamp(expires))


def audit_message(entry: AuditRecord) -> admin_pb2.AuditEntry:
    return admin_pb2.AuditEntry(
        id=entry.id,
        at=timestamp(entry.at),
        actor=entry.actor,
        action=entry.action,
        target=entry.target,
        outcome=entry.outcome,
        detail=entry.detail,
    )


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, service: ControllerService) -> None:
        self.service = service

    async def _admin(self, context: ServicerContext, action: str) -> Caller:
        caller = caller_of(context)
        await self.service.authenticate_admin(caller, action)
        return caller

    async def AddSite(
        self, request: admin_pb2.AddSiteRequest, context: ServicerContext
    ) -> admin_pb2.AddSiteResponse:
        caller = await self._admin(context, "site.add")
        site, token, expires = await self.service.add_site(
            caller, request.name, list(request.subnets), dict(request.labels), _ttl(request.token_ttl_seconds)
        )
        view = SiteView(site=site, certificates=(), connected=False)
        return admin_pb2.AddSiteResponse(
            site=site_message(view, self.service.trust_domain), token=token_message(site.name, token, expires)
        )

    async def ListSites(
        self, request: admin_pb2.ListSitesRequest, context: ServicerContext
    ) -> admin_pb2.ListSitesResponse:
        caller = await self._admin(context, "site.list")
        views = await self.service.list_sites(caller)
        return admin_pb2.ListSitesResponse(sites=[site_message(v, self.service.trust_domain) for v in views])

    async def GetSite(self, request: admin_pb2.GetSiteRequest, context: ServicerContext) -> admin_pb2.Site:
        caller = await self._admin(context, "site.show")
        return site_message(await self.service.get_site(caller, request.name), self.service.trust_domain)

    async def RevokeSite(
        self, request: admin_pb2.RevokeSiteRequest, context: ServicerContext
    ) -> admin_pb2.Site:
        caller = await self._admin(context, "site.revoke")
        site = await self.service.revoke_site(caller, request.name, request.reason)
        return site_message(SiteView(site=site, certificates=(), connected=False), self.service.trust_domain)

    async def CreateToken(
        self, request: admin_pb2.CreateTokenRequest, context: ServicerContext
    ) -> admin_pb2.JoinToken:
        caller = await self._admin(context, "token.create")
        token, expires = await self.service.create_token(
            caller, request.site, _ttl(request.token_ttl_seconds)
        )
        return token_message(request.site, token, expires)

    async def ListAudit(
        self, request: admin_pb2.ListAuditRequest, context: ServicerContext
    ) -> admin_pb2.ListAuditResponse:
        caller = await self._admin(context, "audit.list")
        entries = await self.service.list_audit(caller, limit=request.limit, before_id=request.before_id)
        return admin_pb2.ListAuditResponse(entries=[audit_message(e) for e in entries])

    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: ServicerContext
    ) -> admin_pb2.ControllerStatus:
        caller = await self._admin(context, "status")
        status = await self.service.status(caller)
        return admin_pb2.ControllerStatus(
            version=status.version,
            trust_domain=status.trust_domain,
            store=status.store,
            ca_not_after=timestamp(status.ca_not_after),
            sites=status.sites,
            revoked_sites=status.revoked_sites,
            connected_agents=status.connected_agents,
            map_generation=status.generation,
            cert_ttl_seconds=int(status.cert_ttl.total_seconds()),
        )
