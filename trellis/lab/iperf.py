"""Throughput (iperf3) and latency (ping) between lab namespaces, parsed into numbers."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from trellis.lab.netns import Lab, Netns
from trellis.lab.process import LabError

IPERF3 = "iperf3"
IPERF_PORT = 5201
SERVER_START_TIMEOUT = 10.0
# Extra time for an iperf3 client beyond its test duration (connection set-up, result exchange).
CLIENT_SLACK = 20.0

_PING_COUNTS = re.compile(r"(?P<tx>\d+) packets transmitted, (?P<rx>\d+) received")
_PING_RTT = re.compile(r"= (?P<min>[\d.]+)/(?P<avg>[\d.]+)/(?P<max>[\d.]+)/(?P<mdev>[\d.]+) ms")


@dataclass(frozen=True, slots=True)
class IperfResult:
    """An iperf3 TCP test: goodput at the receiver, what the sender sent, TCP retransmits."""

    mbit_per_s: float
    sent_mbit_per_s: float
    retransmits: int
    seconds: float
    bytes_received: int
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PingResult:
    transmitted: int
    received: int
    rtt_min_ms: float | None
    rtt_avg_ms: float | None
    rtt_max_ms: float | None
    rtt_mdev_ms: float | None

    @property
    def loss(self) -> float:
        """Lost fraction, 0.0 to 1.0."""
        return 1.0 - self.received / self.transmitted if self.transmitted else 1.0


def iperf3_tcp(
    lab: Lab,
    server: Netns,
    client: Netns,
    server_ip: str,
    *,
    seconds: float = 10.0,
    parallel: int = 1,
    reverse: bool = False,
    port: int = IPERF_PORT,
    omit: float = 0.0,
) -> IperfResult:
    """Run an iperf3 TCP test from ``client`` to ``server_ip`` (an address of ``server``).

    ``reverse`` makes the server send. ``omit`` skips the first seconds (TCP slow start)."""
    tag = f"{server.role}-{client.role}-{port}-{time.monotonic_ns()}"
    srv = lab.start(
        server,
        [IPERF3, "-s", "-1", "--forceflush", "-B", server_ip, "-p", str(port)],
        name=f"iperf3-server-{tag}",
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while "Server listening" not in srv.output():
            if srv.poll() is not None or time.monotonic() >= deadline:
                raise LabError(f"iperf3 server did not start\n{srv.output_tail()}")
            time.sleep(0.05)
        argv = [IPERF3, "-c", server_ip, "-p", str(port), "-t", str(seconds), "-J", "-P", str(parallel)]
        if omit:
            argv += ["-O", str(omit)]
        if reverse:
            argv.append("-R")
        done = client.run(argv, check=False, timeout=seconds + omit + CLIENT_SLACK)
    finally:
        srv.stop()
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        detail = f"exit {done.returncode}: {done.stderr.strip()}"
        raise LabError(f"iperf3 client printed no JSON ({detail})\n{srv.output_tail()}") from None
    if "error" in report:
        raise LabError(f"iperf3 failed: {report['error']}\n{srv.output_tail()}")
    return parse_iperf3_json(report)


def parse_iperf3_json(report: dict[str, Any]) -> IperfResult:
    """The numbers of an ``iperf3 -J`` TCP report."""
    end = report["end"]
    received, sent = end["sum_received"], end["sum_sent"]
    return IperfResult(
        mbit_per_s=float(received["bits_per_second"]) / 1e6,
        sent_mbit_per_s=float(sent["bits_per_second"]) / 1e6,
        retransmits=int(sent.get("retransmits", 0)),
        seconds=float(received["seconds"]),
        bytes_received=int(received["bytes"]),
        raw=report,
    )


def ping(
    source: Netns,
    destination: str,
    *,
    count: int = 10,
    interval: float = 0.2,
    size: int = 56,
    deadline: float | None = None,
) -> PingResult:
    """``ping`` from ``source``; losses are reported in the result, not raised."""
    wait = deadline if deadline is not None else count * interval + 5
    argv = [
        "ping",
        "-n",
        "-q",
        "-c",
        str(count),
        "-i",
        str(interval),
        "-s",
        str(size),
        "-w",
        str(int(wait) + 1),
    ]
    done = source.run([*argv, destination], check=False, timeout=wait + 10)
    return parse_ping_output(done.stdout)


def parse_ping_output(text: str) -> PingResult:
    """The summary of iputils ``ping -q`` output."""
    counts = _PING_COUNTS.search(text)
    if not counts:
        raise LabError(f"no ping summary in output: {text.strip()[-300:]!r}")
    rtt = _PING_RTT.search(text)
    values = [float(rtt.group(k)) for k in ("min", "avg", "max", "mdev")] if rtt else [None] * 4
    return PingResult(
        transmitted=int(counts.group("tx")),
        received=int(counts.group("rx")),
        rtt_min_ms=values[0],
        rtt_avg_ms=values[1],
        rtt_max_ms=values[2],
        rtt_mdev_ms=values[3],
    )
