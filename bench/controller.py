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
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trellis.agent.control.client import CHANNEL_OPTIONS, enroll
from trellis.agent.control.state import AgentIdentity, StateDir
from trellis.controller.ca import CONTROLLER_TLS_NAME
from trellis.controller.credentials import AdminCredentials
from trellis.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, common_pb2
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


def free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free ports")


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
    controller: ControllerProcess, directory: Path, names: list[str]
) -> list[AgentIdentity]:
    async with controller.admin_channel() as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        tokens = []
        for i, name in enumerate(names):
            subnet = f"10.{i // 256}.{i % 256}.0/24"
            response = await admin.AddSite(admin_pb2.AddSiteRequest(name=name, subnets=[subnet]))
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


async def fanout(
    controller: ControllerProcess, identities: list[AgentIdentity], names: list[str], victims: list[str]
) -> list[float]:
    """Per (agent, revocation) latency in seconds from RevokeSite to the map naming the victim."""
    arrivals: dict[str, dict[int, float]] = {v: {} for v in victims}
    victim_of_uri = {f"spiffe://bench.example/site/{v}": v for v in victims}
    connected: set[int] = set()
    all_connected = asyncio.Event()
    channels = [agent_channel(identity, controller.address) for identity in identities]

    async def stream(index: int, channel: grpc.aio.Channel) -> None:
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
            connected.add(index)
            if len(connected) == len(channels):
                all_connected.set()
            for uri in message.revoked_identities:
                victim = victim_of_uri.get(uri)
                if victim is not None:
                    arrivals[victim].setdefault(index, now)

    tasks = [asyncio.create_task(stream(i, c)) for i, c in enumerate(channels)]
    await asyncio.wait_for(all_connected.wait(), 120)
    latencies: list[float] = []
    async with controller.admin_channel() as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        for revoked_before, victim in enumerate(victims):
            await asyncio.sleep(0.5)
            listeners = len(channels) - revoked_before - 1  # every stream but the revoked ones
            started = time.perf_counter()
            await admin.RevokeSite(admin_pb2.RevokeSiteRequest(name=victim, reason="bench"))
            deadline = time.perf_counter() + 30
            victim_index = names.index(victim)
            while (
                time.perf_counter() < deadline and len(arrivals[victim].keys() - {victim_index}) < listeners
            ):
                await asyncio.sleep(0.005)
            latencies += [t - started for i, t in arrivals[victim].items() if i != victim_index]
    for task in tasks:
        task.cancel()
    for channel in channels:
        await channel.close()
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
        latencies = await fanout(controller, identities, names, victims)
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
