"""Loopback ports for controllers started by tests, demos and benchmarks."""

from __future__ import annotations

import socket

MAX_ATTEMPTS = 50


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port p such that p and p+1 were free a moment ago (a controller takes both: the agent
    API and the enrollment listener)."""
    for _ in range(MAX_ATTEMPTS):
        with socket.socket() as first:
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind((host, port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no two consecutive free ports on {host}")
