"""The agent's side of the control plane: enroll once, renew at half-life, keep the Sync stream.

The agent fails static: it starts from its last stored map and keeps working while its
certificate is valid, whether or not the controller answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from google.protobuf.timestamp_pb2 import Timestamp

from trellis import __version__
from trellis.agent.control.bootstrap import BootstrapError, fetch_pinned_ca
from trellis.agent.control.state import AgentIdentity, Settings, StateDir, generate_key
from trellis.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from trellis.v1.csr import make_csr
from trellis.v1.identity import Identity, IdentityError
from trellis.v1.token import JoinToken

log = logging.getLogger(__name__)

CONTROLLER_TLS_NAME = "trellis-controller"  # the name in the controller's certificate; trust is the CA
RPC_TIMEOUT = 15.0
BACKOFF_BASE = 0.5
DEFAULT_MAX_BACKOFF = 30.0
RENEW_JITTER = 0.1  # renew at half-life +/- 10% of the lifetime, so a fleet does not renew in lockstep
MIN_RENEW_RETRY = 1.0
MAX_MAP_BYTES = 16 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.ssl_target_name_override", CONTROLLER_TLS_NAME),
    ("grpc.max_receive_message_length", MAX_MAP_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

MapHandler = Callable[[common_pb2.NetworkMap], Awaitable[None]]


class ControlError(RuntimeError):
    """Enrollment or control-plane failure the operator must act on; the message says how."""


class ConnectionState(enum.StrEnum):
    STARTING = "starting"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # retrying with backoff; working from the last map
    REVOKED = "revoked"
    EXPIRED = "expired"
    STOPPED = "stopped"


FATAL_STATES = (ConnectionState.REVOKED, ConnectionState.EXPIRED)


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid address {address!r}: use HOST:PORT")
    return host.strip("[]"), int(port)


def default_enroll_address(controller: str) -> str:
    host, port = split_host_port(controller)
    return f"{host}:{port + 1}"


def renewal_time(certificate: x509.Certificate, rng: random.Random) -> dt.datetime:
    not_before = certificate.not_valid_before_utc
    lifetime = certificate.not_valid_after_utc - not_before
    return not_before + lifetime * (0.5 + rng.uniform(-RENEW_JITTER, RENEW_JITTER))


def backoff_delay(attempt: int, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter."""
    return rng.uniform(0, min(maximum, BACKOFF_BASE * 2 ** min(attempt, 30)))


def _timestamp(value: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _check_issued(identity: AgentIdentity, expected: Identity | None) -> Identity:
    """The certificate we got is for our key, from our CA, and (if we know it) our identity."""
    certificate = identity.certificate
    if certificate.public_key() != identity.key.public_key():
        raise ControlError("controller returned a certificate for another key")
    if not any(_issued_by(certificate, ca) for ca in identity.ca_bundle):
        raise ControlError("controller returned a certificate its CA bundle does not verify")
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        got = Identity.parse(uris[0])
    except (x509.ExtensionNotFound, IndexError, IdentityError):
        raise ControlError("controller returned a certificate without a Trellis identity") from None
    if expected is not None and got != expected:
        raise ControlError(f"controller returned a certificate for {got}, expected {expected}")
    return got


def _issued_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _identity_from(
    key: Any, certificate_der: bytes, ca_bundle_der: Sequence[bytes], expected: Identity | None
) -> tuple[AgentIdentity, Identity]:
    try:
        certificate = x509.load_der_x509_certificate(certificate_der)
        bundle = tuple(x509.load_der_x509_certificate(der) for der in ca_bundle_der)
    except ValueError:
        raise ControlError("controller returned a malformed certificate") from None
    if not bundle:
        raise ControlError("controller returned no CA bundle")
    identity = AgentIdentity(key=key, certificate=certificate, ca_bundle=bundle)
    return identity, _check_issued(identity, expected)


async def enroll(
    state: StateDir, *, controller: str, enroll_address: str, token_text: str
) -> tuple[AgentIdentity, Settings]:
    """Enroll with a join token: verify the controller by the token's CA pin, send a CSR for a key
    made here, store key and certificate (0600)."""
    token = JoinToken.parse(token_text)
    host, port = split_host_port(enroll_address)
    try:
        ca = await asyncio.to_thread(fetch_pinned_ca, host, port, token.ca_pin)
    except BootstrapError as e:
        raise ControlError(str(e)) from None
    key = generate_key()
    csr = make_csr(key, None).public_bytes(serialization.Encoding.DER)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.public_bytes(serialization.Encoding.PEM))
    async with grpc.aio.secure_channel(enroll_address, credentials, options=CHANNEL_OPTIONS) as channel:
        stub = agent_pb2_grpc.EnrollmentStub(channel)
        try:
            response = await stub.Enroll(
                agent_pb2.EnrollRequest(token=token.encode(), csr_der=csr), timeout=RPC_TIMEOUT
            )
        except grpc.aio.AioRpcError as e:
            raise ControlError(f"enrollment refused: {e.details()} ({e.code().name.lower()})") from None
    identity, who = _identity_from(key, response.certificate_der, response.ca_bundle_der, None)
    if who.uri != response.identity:
        raise ControlError(f"controller said {response.identity} but issued {who}")
    state.prepare()
    state.save_identity(identity)
    settings = Settings(controller=controller, enroll=enroll_address, site=who.name, identity=who.uri)
    state.save_settings(settings)
    log.info(
        "enrolled as %s, certificate %s valid until %s",
        who,
        identity.serial,
        identity.certificate.not_valid_after_utc,
    )
    return identity, settings


@dataclass
class ControlClient:
    """Renewal and the Sync stream for an enrolled agent."""

    state: StateDir
    settings: Settings
    identity: AgentIdentity
    endpoints: Sequence[common_pb2.Endpoint] = ()
    on_map: MapHandler | None = None
    on_identity: Callable[[AgentIdentity], None] | None = None  # after each renewal
    max_backoff: float = DEFAULT_MAX_BACKOFF
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    rng: random.Random = field(default_factory=random.Random)
    connection: ConnectionState = ConnectionState.STARTING
    last_error: str = ""
    network_map: common_pb2.NetworkMap | None = None
    map_received_at: dt.datetime | None = None
    _reconnect: asyncio.Event = field(default_factory=asyncio.Event)
    _fatal: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def me(self) -> Identity:
        return Identity.parse(self.settings.identity)

    # -- status --------------------------------------------------------------------------------

    def _set_state(self, connection: ConnectionState, error: str = "") -> None:
        if connection != self.connection or error != self.last_error:
            log.info("controller connection: %s%s", connection.value, f" ({error})" if error else "")
        self.connection = connection
        self.last_error = error
        if connection in FATAL_STATES:
            self._fatal.set()
        self.write_status()

    def write_status(self) -> None:
        certificate = self.identity.certificate
        self.state.write_status(
            {
                "pid": os.getpid(),
                "updated_at": self.clock().isoformat(),
                "connection": self.connection.value,
                "last_error": self.last_error,
                "controller": self.settings.controller,
                "identity": self.settings.identity,
                "certificate_serial": self.identity.serial,
                "certificate_not_after": certificate.not_valid_after_utc.isoformat(),
                "map_version": self.network_map.version if self.network_map else None,
                "map_received_at": self.map_received_at.isoformat() if self.map_received_at else None,
                "peers": len(self.network_map.peers) if self.network_map else 0,
            }
        )

    # -- the whole life of the client ----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> ConnectionState:
        """Work until ``stop`` is set or the identity becomes unusable (revoked, expired)."""
        cached = self.state.load_map()
        if cached is not None:
            log.info("starting from the stored map (version %d, %d peers)", cached.version, len(cached.peers))
            await self._apply(cached, stored=True)
        tasks = [asyncio.create_task(self._sync_loop(stop)), asyncio.create_task(self._renew_loop(stop))]
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(self._fatal.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks + waiters:
                task.cancel()
            for task in tasks + waiters:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.connection not in FATAL_STATES:
            self._set_state(ConnectionState.STOPPED)
        return self.connection

    # -- renewal -------------------------------------------------------------------------------

    async def _renew_loop(self, stop: asyncio.Event) -> None:
        failures = 0
        renew_at = renewal_time(self.identity.certificate, self.rng)
        while not stop.is_set():
            now = self.clock()
            if now >= self.identity.certificate.not_valid_after_utc:
                self._set_state(
                    ConnectionState.EXPIRED,
                    "certificate expired before it could be renewed: enroll again with a new token "
                    "(trellisctl token create SITE)",
                )
                return
            wait = (renew_at - now).total_seconds()
            if wait > 0:
                await _sleep_or_stop(stop, wait)
                continue
            try:
                await self.renew()
                failures = 0
                renew_at = renewal_time(self.identity.certificate, self.rng)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.PERMISSION_DENIED:
                    self._set_state(ConnectionState.REVOKED, f"renewal refused: {e.details()}")
                    return
                failures += 1
                self.last_error = f"renewal failed: {e.details()}"
                delay = max(MIN_RENEW_RETRY, backoff_delay(failures, self.max_backoff, self.rng))
                log.warning("%s; retrying in %.1fs", self.last_error, delay)
                renew_at = self.clock() + dt.timedelta(seconds=delay)

    async def renew(self) -> None:
        """A fresh key and CSR for our identity; on success the new key and certificate replace
        the old ones on disk and the Sync stream reconnects with them."""
        key = generate_key()
        csr = make_csr(key, self.me).public_bytes(serialization.Encoding.DER)
        async with self._channel() as channel:
            response = await agent_pb2_grpc.AgentServiceStub(channel).Renew(
                agent_pb2.RenewRequest(csr_der=csr), timeout=RPC_TIMEOUT
            )
        identity, _ = _identity_from(key, response.certificate_der, response.ca_bundle_der, self.me)
        self.state.save_identity(identity)
        self.identity = identity
        if self.on_identity is not None:
            self.on_identity(identity)
        log.info(
            "renewed certificate: %s valid until %s",
            identity.serial,
            identity.certificate.not_valid_after_utc,
        )
        self.write_status()
        self._reconnect.set()

    # -- the Sync stream -----------------------------------------------------------------------

    def _channel(self) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.identity.ca_pem,
            private_key=self.identity.key_pem,
            certificate_chain=self.identity.certificate_pem,
        )
        return grpc.aio.secure_channel(self.settings.controller, credentials, options=CHANNEL_OPTIONS)

    def _report(self) -> agent_pb2.AgentReport:
        return agent_pb2.AgentReport(
            agent_version=__version__,
            endpoints=self.endpoints,
            certificate_not_after=_timestamp(self.identity.certificate.not_valid_after_utc),
            applied_map_version=self.network_map.version if self.network_map else 0,
            certificate_serial=self.identity.serial,
        )

    async def _sync_loop(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            self._reconnect.clear()
            self._set_state(ConnectionState.CONNECTING, self.last_error)
            try:
                received = await self._sync_once()
                error = "stream closed by the controller"
            except grpc.aio.AioRpcError as e:
                received = False
                if e.code() == grpc.StatusCode.PERMISSION_DENIED:
                    self._set_state(ConnectionState.REVOKED, e.details() or "permission denied")
                    return
                error = f"{e.details()} ({e.code().name.lower()})"
            if self._reconnect.is_set():  # a renewed certificate: reconnect at once
                attempt = 0
                continue
            attempt = 0 if received else attempt + 1
            delay = backoff_delay(attempt, self.max_backoff, self.rng)
            self._set_state(ConnectionState.DISCONNECTED, error)
            await _sleep_or_event(stop, self._reconnect, delay)

    async def _sync_once(self) -> bool:
        """One stream, until it ends or a renewal asks for a reconnect; True if a map arrived."""
        received = False
        async with self._channel() as channel:
            call = agent_pb2_grpc.AgentServiceStub(channel).Sync()
            await call.write(self._report())
            reconnect = asyncio.create_task(self._reconnect.wait())
            try:
                while True:
                    read = asyncio.create_task(call.read())
                    done, _ = await asyncio.wait({read, reconnect}, return_when=asyncio.FIRST_COMPLETED)
                    if reconnect in done:
                        read.cancel()
                        call.cancel()
                        return received
                    message = read.result()
                    if not isinstance(message, common_pb2.NetworkMap):  # grpc.aio.EOF
                        return received
                    if not received:
                        self._set_state(ConnectionState.CONNECTED)
                    received = True
                    if await self._apply(message, stored=False):
                        await call.write(self._report())
            finally:
                reconnect.cancel()

    async def _apply(self, network_map: common_pb2.NetworkMap, *, stored: bool) -> bool:
        """Check a map is ours, keep it on disk, hand it on. False if refused."""
        me = self.me
        if network_map.trust_domain != me.trust_domain or network_map.self.identity != me.uri:
            self.last_error = f"ignored a map for {network_map.self.identity or 'nobody'}"
            log.error("%s", self.last_error)
            return False
        if not stored:
            self.state.save_map(network_map)
        self.network_map = network_map
        self.map_received_at = self.clock()
        log.info(
            "network map version %d: %d peers, %d revoked identities",
            network_map.version,
            len(network_map.peers),
            len(network_map.revoked_identities),
        )
        self.write_status()
        if self.on_map is not None:
            await self.on_map(network_map)
        return True


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _sleep_or_event(stop: asyncio.Event, event: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(event.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
