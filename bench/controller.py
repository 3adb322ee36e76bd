"""Controller benchmark: certificate issuance rate and revocation fan-out latency.

    python bench/controller.py [--seconds 10] [--concurrency 16] [--agents 500] [--revocations 10]

1. Issuance: Renew calls (CSR -> certificate over gRPC with mTLS, stored and audited) against a
   controller running as its own process, compared with the raw ECDSA P-256 signing rate of this
   machine measured in the same run (the anchor): the ratio says how much of the ceiling the whole
   path keeps.
2. Fan-out: AGENTS agents hold Sync streams; a site is revoked and we measure, per agent, the time
   from the RevokeSite call to the map that names the revoked identity. p50/p99 over all agents
   and revocations.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trellis.agent.control.client import CHANNEL_OPTIONS, enroll
from trellis.agent.control.state import AgentIdentity, StateDir
from trellis.controller.ca import CONTROLLER_TLS_NAME
from trellis.controller.credentials import AdminCredentials
from trellis.lab.ports import free_port_pair
from trellis.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    policy_pb2,
    policy_pb2_grpc,
)
from trellis.v1.csr import make_csr
from trellis.v1.identity import Identity

BIN = Path(sys.executable).parent


def raw_signing_rate(seconds: float) -> float:
    """ECDSA P-256 / SHA-256 signatures per second over a certificate-sized message."""
    key = ec.generate_private_key(ec.SECP256R1())
    message = os.urandom(400)
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            key.sign(message, ec.ECDSA(hashes.SHA256()))
        count += 100
    return count / seconds


class ControllerProcess:
    def __init__(self, directory: Path) -> None:
        self.data = directory / "controller"
        subprocess.run(
            [
                str(BIN / "trellis-controller"),
                "init",
                "--data-dir",
                str(self.data),
                "--trust-domain",
                "bench.example",
            ],
            check=True,
            capture_output=True,
        )
        self.port = free_port_pair()
        self.log = (directory / "controller.log").open("w")
        self.proc = subprocess.Popen(
            [
                str(BIN / "trellis-controller"),
                "serve",
                "--data-dir",
                str(self.data),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--log-level",
                "warning",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.1)
        self.admin = AdminCredentials.load(self.data / "admin.pem")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin_channel(self) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.admin.ca_pem,
            private_key=self.admin.key_pem,
            certificate_chain=self.admin.certificate_pem,
        )
        return grpc.aio.secure_channel(
            self.address, credentials, options=[("grpc.ssl_target_name_override", CONTROLLER_TLS_NAME)]
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def agent_channel(identity: AgentIdentity, address: str) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=identity.ca_pem,
        private_key=identity.key_pem,
        certificate_chain=identity.certificate_pem,
    )
    return grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)


async def add_and_enroll(
    controller: ControllerProcess,
    directory: Path,
    names: list[str],
    labels: Callable[[int], dict[str, str]] = lambda _: {},
) -> list[AgentIdentity]:
    async with controller.admin_channel() as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        tokens = []
        for i, name in enumerate(names):
            subnet = f"10.{i // 256}.{i % 256}.0/24"
            request = admin_pb2.AddSiteRequest(name=name, subnets=[subnet], labels=labels(i))
            response = await admin.AddSite(request)
            tokens.append(response.token.token)
    semaphore = asyncio.Semaphore(16)

    async def one(name: str, token: str) -> AgentIdentity:
        async with semaphore:
            identity, _ = await enroll(
                StateDir(directory / name),
                controller=controller.address,
                enroll_address=f"127.0.0.1:{controller.port + 1}",
                token_text=token,
            )
            return identity

    return list(await asyncio.gather(*(one(n, t) for n, t in zip(names, tokens, strict=True))))


async def issuance_rate(
    controller: ControllerProcess, identity: AgentIdentity, seconds: float, concurrency: int
) -> float:
    me = Identity.site("bench.example", "renewer")
    csrs = [
        make_csr(ec.generate_private_key(ec.SECP256R1()), me).public_bytes(serialization.Encoding.DER)
        for _ in range(64)
    ]
    issued = 0
    async with agent_channel(identity, controller.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        await stub.Renew(agent_pb2.RenewRequest(csr_der=csrs[0]))  # warm up the connection
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()

        async def worker(offset: int) -> None:
            nonlocal issued
            i = offset
            while time.perf_counter() < deadline:
                response = await stub.Renew(agent_pb2.RenewRequest(csr_der=csrs[i % len(csrs)]))
                if not response.certificate_der:
                    raise RuntimeError("empty certificate")
                issued += 1
                i += concurrency

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return issued / elapsed


class StreamFleet:
    """Many agents' Sync streams in one process, timing when each receives a map that satisfies
    the probe of the moment."""

    def __init__(self, controller: ControllerProcess, identities: list[AgentIdentity]) -> None:
        self._channels = [agent_channel(identity, controller.address) for identity in identities]
        self._connected: set[int] = set()
        self._all_connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._probe: Callable[[common_pb2.NetworkMap], bool] = lambda _: False
        self._arrivals: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._channels)

    async def open(self) -> None:
        self._tasks = [asyncio.create_task(self._stream(i, c)) for i, c in enumerate(self._channels)]
        await asyncio.wait_for(self._all_connected.wait(), 120)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for channel in self._channels:
            await channel.close()

    async def _stream(self, index: int, channel: grpc.aio.Channel) -> None:
        call = agent_pb2_grpc.AgentServiceStub(channel).Sync()
        await call.write(agent_pb2.AgentReport(agent_version="bench"))
        while True:
            try:
                message = await call.read()
            except grpc.aio.AioRpcError:
                return  # this agent was revoked
            if not isinstance(message, common_pb2.NetworkMap):
                return
            now = time.perf_counter()
            self._connected.add(index)
            if len(self._connected) == len(self._channels):
                self._all_connected.set()
            if index not in self._arrivals and self._probe(message):
                self._arrivals[index] = now

    async def measure(
        self,
        action: Callable[[], Awaitable[object]],
        probe: Callable[[common_pb2.NetworkMap], bool],
        *,
        listeners: int,
        ignore: frozenset[int] = frozenset(),
        timeout: float = 60.0,
    ) -> list[float]:
        """Seconds from the start of ``action`` until each stream saw a map passing ``probe``."""
        self._arrivals = {}
        self._probe = probe
        started = time.perf_counter()
        await action()
        deadline = started + timeout
        while time.perf_counter() < deadline and len(self._arrivals.keys() - ignore) < listeners:
            await asyncio.sleep(0.005)
        self._probe = lambda _: False
        return [t - started for i, t in self._arrivals.items() if i not in ignore]


async def apply_policy(controller: ControllerProcess, text: str) -> int:
    async with controller.admin_channel() as channel:
        response = await policy_pb2_grpc.PolicyAdminStub(channel).ApplyPolicy(
            policy_pb2.ApplyPolicyRequest(yaml=text)
        )
    if not response.applied:
        raise RuntimeError(f"policy refused: {response}")
    return int(response.version)


ALLOW_ALL = 'apiVersion: trellis/v1\nkind: Policy\nrules:\n  - {name: everyone, from: "*", to: "*"}\n'


def names_revoked(uri: str) -> Callable[[common_pb2.NetworkMap], bool]:
    return lambda network_map: uri in network_map.revoked_identities


async def fanout(
    fleet: StreamFleet, controller: ControllerProcess, names: list[str], victims: list[str]
) -> list[float]:
    """Per (agent, revocation) latency in seconds from RevokeSite to the map naming the victim."""
    latencies: list[float] = []
    async with controller.admin_channel() as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        for revoked_before, victim in enumerate(victims):
            await asyncio.sleep(0.5)
            uri = f"spiffe://bench.example/site/{victim}"

            async def revoke(name: str = victim) -> object:
                return await admin.RevokeSite(admin_pb2.RevokeSiteRequest(name=name, reason="bench"))

            latencies += await fleet.measure(
                revoke,
                names_revoked(uri),
                listeners=len(fleet) - revoked_before - 1,  # every stream but the revoked ones
                ignore=frozenset({names.index(victim)}),
            )
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def main_async(args: argparse.Namespace) -> None:
    directory = Path(tempfile.mkdtemp(prefix="trellis-bench-"))
    controller = ControllerProcess(directory)
    try:
        print(f"anchor: raw ECDSA P-256 signing for {args.seconds:.0f}s ...", flush=True)
        raw = raw_signing_rate(args.seconds)
        (renewer,) = await add_and_enroll(controller, directory, ["renewer"])
        print(f"issuance: Renew over gRPC, {args.concurrency} in flight, {args.seconds:.0f}s ...", flush=True)
        rate = await issuance_rate(controller, renewer, args.seconds, args.concurrency)
        print(f"  raw ECDSA P-256 signatures/s:      {raw:10.0f}")
        print(f"  certificates issued/s end to end:  {rate:10.1f}")
        print(f"  ratio (issued / raw signatures):   {rate / raw:10.4f}")

        names = [f"agent-{i:04d}" for i in range(args.agents)]
        started = time.perf_counter()
        identities = await add_and_enroll(controller, directory, names)
        print(
            f"fan-out: enrolled {len(identities)} agents in {time.perf_counter() - started:.1f}s", flush=True
        )
        victims = names[-args.revocations :]
        await apply_policy(controller, ALLOW_ALL)  # maps carry every peer: the heaviest case
        fleet = StreamFleet(controller, identities)
        await fleet.open()
        latencies = await fanout(fleet, controller, names, victims)
        await fleet.close()
        expected = sum(args.agents - 1 - i for i in range(args.revocations))
        print(f"  revocations: {args.revocations}, deliveries measured: {len(latencies)} of {expected}")
        print(f"  latency p50: {percentile(latencies, 0.5) * 1000:8.1f} ms")
        print(f"  latency p99: {percentile(latencies, 0.99) * 1000:8.1f} ms")
        mean = statistics.mean(latencies) * 1000
        print(f"  latency max: {max(latencies) * 1000:8.1f} ms   (mean {mean:.1f} ms)")
    finally:
        controller.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--revocations", type=int, default=10)
    args = parser.parse_args()
    print(f"controller benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z, {os.cpu_count()} CPUs")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
