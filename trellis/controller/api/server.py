"""Assembling the controller's gRPC server: two TLS listeners over one set of services.

gRPC's Python server either requires a client certificate or never asks for one, so enrollment
(where the agent has no certificate yet) gets its own listener, by default on the next port.
Services that need a certificate find none on the enrollment listener and refuse the call.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from trellis.controller.api.admin import AdminServicer
from trellis.controller.api.agent import add_agent_services
from trellis.controller.api.boundary import ErrorBoundary
from trellis.controller.api.policy import PolicyAdminServicer
from trellis.controller.api.tls import ServerCertificates
from trellis.controller.hub import SessionEnd
from trellis.controller.service import ControllerService
from trellis.v1 import admin_pb2_grpc, policy_pb2_grpc

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # maps of thousands of sites fit; anything bigger is refused
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"invalid address {address!r}: use HOST:PORT (e.g. 0.0.0.0:7400 or [::1]:7400)")
    return host, int(port)


def next_port(address: str) -> str:
    host, port = split_host_port(address)
    return f"{host}:{port + 1 if port else 0}"


class ControllerServer:
    def __init__(self, service: ControllerService, *, listen: str, enroll_listen: str | None = None) -> None:
        self.service = service
        self.listen = listen
        self.enroll_listen = enroll_listen or next_port(listen)
        self.port = 0
        self.enroll_port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            *KEEPALIVE_OPTIONS,
        ]
        server = grpc.aio.server(interceptors=[ErrorBoundary()], options=options)
        add_agent_services(server, self.service)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(self.service), server)
        policy_pb2_grpc.add_PolicyAdminServicer_to_server(PolicyAdminServicer(self.service), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        certificates = ServerCertificates(self.service.authority, self.service.clock)
        self.port = server.add_secure_port(
            self.listen, certificates.credentials(require_client_certificate=True)
        )
        self.enroll_port = server.add_secure_port(
            self.enroll_listen, certificates.credentials(require_client_certificate=False)
        )
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        log.info("serving on port %d (agents, admin) and port %d (enrollment)", self.port, self.enroll_port)

    async def stop(self, grace: float = 2.0) -> None:
        if self._server is None:
            return
        self.service.hub.end_all(SessionEnd.SHUTDOWN)
        self.service.close()
        await self._server.stop(grace)
        self._server = None
