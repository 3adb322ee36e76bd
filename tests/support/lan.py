"""LAN-to-LAN checks through a tunnel in the lab: a TCP transfer both ways verified by SHA-256,
a long ping that must not lose a packet, ESP frames captured and injected from the wan namespace,
and tshark reading our ESP with our key log."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass

from trellis.lab.netns import Netns
from trellis.lab.process import wait_until
from trellis.lab.topology import LanHost, StandardTopology
from trellis.lab.tshark import Capture, decode

TRANSFER_BYTES = 4 << 20
TRANSFER_PORT = 9000

# Server and client exchange deterministic pseudo-random streams and compare SHA-256 digests of
# what arrived with what the other side sent.
TRANSFER = textwrap.dedent(
    """
    import hashlib, random, socket, sys
    role, address, size, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    def stream(seed):
        return random.Random(seed).randbytes(size)
    def receive_exactly(conn, n):
        digest, got = hashlib.sha256(), 0
        while got < n:
            chunk = conn.recv(min(1 << 16, n - got))
            if not chunk:
                break
            digest.update(chunk)
            got += len(chunk)
        return got, digest.hexdigest()
    if role == "server":
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        listener = socket.create_server((address, port), family=family)
        print("listening", flush=True)
        conn, _ = listener.accept()
        got, digest = receive_exactly(conn, size)
        ok = got == size and digest == hashlib.sha256(stream(1)).hexdigest()
        conn.sendall(stream(2))
        conn.close()
        print("server received", got, "OK" if ok else "MISMATCH", flush=True)
    else:
        conn = socket.create_connection((address, port), timeout=60)
        conn.sendall(stream(1))
        got, digest = receive_exactly(conn, size)
        ok = got == size and digest == hashlib.sha256(stream(2)).hexdigest()
        print("client received", got, "OK" if ok else "MISMATCH", flush=True)
    """
)


def transfer(
    topology: StandardTopology,
    client: LanHost | Netns,
    server: LanHost | Netns,
    *,
    server_ip: str | None = None,
    size: int = TRANSFER_BYTES,
    name: str = "tcp",
) -> tuple[str, str]:
    """``size`` bytes each way between two hosts (``server_ip``: the server's address, by default
    a LAN host's own); returns the server's and the client's verdict lines ("... received N OK")."""
    argv = [sys.executable, "-c", TRANSFER]
    server_ns = server.netns if isinstance(server, LanHost) else server
    client_ns = client.netns if isinstance(client, LanHost) else client
    if server_ip is None:
        if not isinstance(server, LanHost):
            raise ValueError("give server_ip for a namespace that is not a LAN host")
        server_ip = str(server.ip)
    srv = topology.lab.start(
        server_ns, [*argv, "server", server_ip, str(size), str(TRANSFER_PORT)], name=f"{name}-server"
    )
    wait_until("the TCP server", lambda: "listening" in srv.output() or srv.poll() is not None, timeout=10)
    done = client_ns.run([*argv, "client", server_ip, str(size), str(TRANSFER_PORT)], timeout=120)
    srv.wait(30)
    return srv.output().strip().splitlines()[-1], done.stdout.strip()


@dataclass(frozen=True, slots=True)
class PingRun:
    sent: int
    received: int
    output: str


def long_ping(source: Netns, destination: str, *, count: int, interval: float = 0.05) -> PingRun:
    """``count`` echo requests ``interval`` seconds apart, each waited for up to 2 s."""
    done = source.run(
        ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", destination],
        check=False,
        timeout=count * interval + 30,
    )
    sent = received = 0
    for line in done.stdout.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            sent = int(parts[0].split()[0])
            received = int(parts[1].split()[0])
    return PingRun(sent=sent, received=received, output=done.stdout)


def tshark_sees_inside(capture: Capture, rows: list[str]) -> tuple[set[tuple[str, str, str]], int, int]:
    """Decode ``capture`` with the esp_sa ``rows``: the (inner src, inner dst, ICMP type) seen,
    the number of ESP packets, and how many of them Wireshark found an ICV it verified."""
    preferences = {
        "esp.enable_encryption_decode": "TRUE",
        "esp.enable_authentication_check": "TRUE",
        "uat:esp_sa": rows,
    }
    pcap = capture.stop()
    pings = decode(
        pcap, fields=["ip.src", "ip.dst", "icmp.type"], display_filter="esp && icmp", preferences=preferences
    )
    seen = {(p.values("ip.src")[-1], p.values("ip.dst")[-1], p.first("icmp.type") or "") for p in pings}
    esp = decode(pcap, fields=["esp.spi"], display_filter="esp", preferences=preferences)
    good = decode(pcap, fields=["esp.spi"], display_filter="esp.icv_good == 1", preferences=preferences)
    return seen, len(esp), len(good)


# Run in the wan namespace: wait on the bridge port towards a site for one ESP-in-UDP datagram
# addressed to it, then send that frame again (a replay), a copy with a sequence number 1000
# ahead (within the window, but the ICV covers it: authentication fails) and a copy with an SPI
# nobody installed.
INJECT = textwrap.dedent(
    """
    import socket, struct, sys
    port, destination = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind((port, 0))
    s.settimeout(20)
    print("sniffing", flush=True)
    while True:
        frame = s.recv(65535)
        if frame[12:14] != b"\\x08\\x00" or len(frame) > 1514:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 15) * 4
        if ip[9] != 17 or socket.inet_ntoa(ip[16:20]) != destination:
            continue
        udp = ip[ihl:]
        if struct.unpack(">H", udp[2:4])[0] != 4500 or len(udp) < 8 + 40 or udp[8:12] == bytes(4):
            continue
        break
    esp = 14 + ihl + 8
    def variant(offset, value):
        # No UDP checksum (allowed over IPv4): what the capture shows may be only the partial
        # sum of checksum offload, which the receiver would refuse.
        copy = bytearray(frame)
        copy[14 + ihl + 6 : 14 + ihl + 8] = bytes(2)
        copy[offset : offset + 4] = value
        return bytes(copy)
    seq = int.from_bytes(frame[esp + 4 : esp + 8], "big")
    s.send(variant(esp + 4, seq.to_bytes(4, "big")))  # the same ESP packet again
    s.send(variant(esp + 4, (seq + 1000).to_bytes(4, "big")))
    s.send(variant(esp, bytes(a ^ 0x5A for a in frame[esp : esp + 4])))
    print("injected spi", frame[esp : esp + 4].hex(), flush=True)
    """
)
