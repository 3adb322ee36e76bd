"""Enrollment (token-authenticated) and the agent service (certificate-authenticated)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization

from trellis.controller.api.boundary import caller_of
from trellis.controller.errors import ControllerError, PermissionDenied, Unauthenticated
from trellis.controller.hub import Session, SessionEnd
from trellis.controller.maps import timestamp
from trellis.controller.service import ControllerService, Issued
from trellis.controller.store import EndpointRecord
from trellis.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

ServicerContext = grpc.aio.ServicerContext[Any, Any]


def _certificate_der(issued: Issued) -> bytes:
    return issued.certificate.public_bytes(serialization.Encoding.DER)


class EnrollmentServicer(agent_pb2_grpc.EnrollmentServicer):
    def __init__(self, service: ControllerService) -> None:
        self.service = service

    async def Enroll(
        self, request: agent_pb2.EnrollRequest, context: ServicerContext
    ) -> agent_pb2.EnrollResponse:
        issued = await self.service.enroll(caller_of(context), request.token, request.csr_der)
        return agent_pb2.EnrollResponse(
            site=issued.site,
            identity=issued.identity.uri,
            certificate_der=_certificate_der(issued),
            ca_bundle_der=issued.ca_bundle_der,
        )


class AgentServicer:
    """The agent API: registered by add_agent_services (Sync sends pre-encoded maps)."""

    def __init__(self, service: ControllerService) -> None:
        self.service = service

    async def Renew(
        self, request: agent_pb2.RenewRequest, context: ServicerContext
    ) -> agent_pb2.RenewResponse:
        caller = caller_of(context)
        site = await self.service.authenticate_site(caller, "renew")
        issued = await self.service.renew(caller, site, request.csr_der)
        return agent_pb2.RenewResponse(
            certificate_der=_certificate_der(issued), ca_bundle_der=issued.ca_bundle_der
        )

    async def Sync(
        self, request_iterator: AsyncIterator[agent_pb2.AgentReport], context: ServicerContext
    ) -> AsyncIterator[bytes]:
        caller = caller_of(context)
        site = await self.service.authenticate_site(caller, "sync")
        if caller.not_after is None:  # authenticate_site guarantees a certificate
            raise Unauthenticated("a site certificate is required")
        hub = self.service.hub
        session = Session(
            site=site,
            serial=caller.serial,
            certificate_not_after=caller.not_after,
            connected_at=self.service.clock(),
        )
        reports = asyncio.create_task(self._read_reports(site, request_iterator, session))
        hub.open(session)
        log.info("agent %s connected from %s", site, caller.peer)
        try:
            last_sent: tuple[bytes, bytes] | None = None
            while True:
                session.wake.clear()
                if session.failure is not None:
                    raise session.failure
                if session.ended is SessionEnd.REVOKED:
                    raise PermissionDenied(f"site {site} is revoked")
                if session.ended is not None:
                    raise Unauthenticated(session.ended.value)
                snapshot = await hub.snapshot()
                if not snapshot.has_live_site(site):
                    raise PermissionDenied(f"site {site} is revoked")
                encoded = snapshot.encoded_map_for(site)
                # Compared without version, time and policy version: a change that leaves this
                # site's map as it was is not news to this agent.
                if (encoded.head, encoded.policy) != last_sent:
                    last_sent = (encoded.head, encoded.policy)
                    yield encoded.encode(
                        version=snapshot.generation,
                        generated_at=timestamp(self.service.clock()),
                        policy_version=snapshot.policy_version,
                    )
                await self._wait(session)
        finally:
            hub.close(session)
            reports.cancel()
            log.info("agent %s disconnected", site)

    async def _wait(self, session: Session) -> None:
        """Until something changed, or the caller's certificate expires (the stream ends then: a
        renewed certificate must reconnect)."""
        left = (session.certificate_not_after - self.service.clock()).total_seconds()
        if left <= 0:
            session.end(SessionEnd.CERTIFICATE_EXPIRED)
            return
        try:
            await asyncio.wait_for(session.wake.wait(), timeout=left)
        except TimeoutError:
            if self.service.clock() >= session.certificate_not_after:
                session.end(SessionEnd.CERTIFICATE_EXPIRED)

    async def _read_reports(
        self, site: str, reports: AsyncIterator[agent_pb2.AgentReport], session: Session
    ) -> None:
        try:
            async for report in reports:
                await self.service.record_report(
                    site,
                    endpoints=[EndpointRecord(address=e.address, port=e.port) for e in report.endpoints],
                    agent_version=report.agent_version,
                    applied_map_version=report.applied_map_version,
                )
        except ControllerError as e:
            session.fail(e)  # the stream loop raises it through the boundary


def add_agent_services(server: grpc.aio.Server, service: ControllerService) -> None:
    """Register Enrollment and AgentService. Sync's responses are NetworkMaps already encoded
    (trellis.controller.mapwire), so they pass through gRPC as bytes."""
    agent_pb2_grpc.add_EnrollmentServicer_to_server(EnrollmentServicer(service), server)
    servicer = AgentServicer(service)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Renew": grpc.unary_unary_rpc_method_handler(
            servicer.Renew,
            request_deserializer=agent_pb2.RenewRequest.FromString,
            response_serializer=agent_pb2.RenewResponse.SerializeToString,
        ),
        "Sync": grpc.stream_stream_rpc_method_handler(
            servicer.Sync,
            request_deserializer=agent_pb2.AgentReport.FromString,
            response_serializer=None,
        ),
    }
    name = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
