"""Run the userspace data plane with manually keyed SAs, like ``ip xfrm state add``.

    python -m trellis.agent.dataplane.static CONFIG.json

For troubleshooting without IKE, for the integration tests and for bench/throughput.py. The
config (keep it 0600: it holds keys)::

    {
      "dataplane": {"tun_name": "trellis0", "listen_address": "192.0.2.1", "underlay_mtu": 1500,
                    "gro": true, "keylog_path": null},
      "routes": ["10.2.0.0/24"],
      "sas": [{"spi": "0x1000", "direction": "out", "cipher": "AES_GCM_16", "key": "<hex>",
               "local_ts": ["10.1.0.0/24"], "remote_ts": ["10.2.0.0/24"],
               "local_address": "192.0.2.1", "remote_address": "192.0.2.2"}],
      "status_path": "/run/trellis/dataplane.json",
      "status_interval": 1.0
    }

The status file (the counters snapshot as JSON, written atomically every ``status_interval``
seconds and at exit) appears once every SA is installed. IKE messages arriving on port 4500
are counted and logged (there is no IKE daemon here). SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from trellis.agent.dataplane.counters import DataplaneCounters
from trellis.agent.dataplane.userspace import UserspaceConfig, UserspaceDataplane
from trellis.agent.esp.constants import Cipher, Direction, Mode
from trellis.agent.esp.sa import Lifetime, LifetimeEvent, SaParams
from trellis.agent.esp.selectors import TrafficSelector

log = logging.getLogger("trellis.dataplane.static")

_DATAPLANE_FIELDS = {
    "tun_name": str,
    "listen_address": str,
    "listen_port": int,
    "underlay_mtu": int,
    "tso": bool,
    "gro": bool,
    "gro_verify_checksums": bool,
    "udp_gso": bool,
    "udp_gro": bool,
    "clamp_mss": bool,
}


class ConfigError(ValueError):
    pass


def selector_to_json(ts: TrafficSelector) -> str | dict[str, Any]:
    nets = ts.networks()
    if len(nets) == 1 and ts.protocol == 0 and (ts.start_port, ts.end_port) == (0, 0xFFFF):
        return str(nets[0])
    return {
        "start": str(ts.start),
        "end": str(ts.end),
        "protocol": ts.protocol,
        "ports": [ts.start_port, ts.end_port],
    }


def selector_from_json(value: Any) -> TrafficSelector:
    if isinstance(value, str):
        return TrafficSelector.from_network(value)
    if isinstance(value, dict):
        start_port, end_port = value.get("ports", (0, 0xFFFF))
        return TrafficSelector(
            start=ipaddress.ip_address(value["start"]),
            end=ipaddress.ip_address(value["end"]),
            protocol=int(value.get("protocol", 0)),
            start_port=int(start_port),
            end_port=int(end_port),
        )
    raise ConfigError(f"bad traffic selector {value!r}")


def sa_to_json(params: SaParams) -> dict[str, Any]:
    lifetime = {k: getattr(params.lifetime, k) for k in Lifetime.__dataclass_fields__}
    return {
        "spi": f"0x{params.spi:08x}",
        "direction": str(params.direction),
        "cipher": params.cipher.name,
        "key": params.key.hex(),
        "local_ts": [selector_to_json(ts) for ts in params.local_ts],
        "remote_ts": [selector_to_json(ts) for ts in params.remote_ts],
        "local_address": str(params.local_address),
        "remote_address": str(params.remote_address),
        "local_port": params.local_port,
        "remote_port": params.remote_port,
        "mode": str(params.mode),
        "esn": params.esn,
        "replay_window": params.replay_window,
        "lifetime": {k: v for k, v in lifetime.items() if v is not None},
        "tag": params.tag,
    }


def sa_from_json(value: dict[str, Any]) -> SaParams:
    try:
        return SaParams(
            spi=int(value["spi"], 0) if isinstance(value["spi"], str) else int(value["spi"]),
            direction=Direction(value["direction"]),
            cipher=Cipher[value["cipher"]],
            key=bytes.fromhex(value["key"]),
            local_ts=tuple(selector_from_json(v) for v in value["local_ts"]),
            remote_ts=tuple(selector_from_json(v) for v in value["remote_ts"]),
            local_address=ipaddress.ip_address(value["local_address"]),
            remote_address=ipaddress.ip_address(value["remote_address"]),
            local_port=int(value.get("local_port", 4500)),
            remote_port=int(value.get("remote_port", 4500)),
            mode=Mode(value.get("mode", "tunnel")),
            esn=bool(value.get("esn", False)),
            replay_window=int(value.get("replay_window", 1024)),
            lifetime=Lifetime(**value.get("lifetime", {})),
            tag=str(value.get("tag", "")),
        )
    except (KeyError, TypeError) as e:
        raise ConfigError(f"bad SA {value.get('spi')!r}: {e!r}") from e


def dataplane_config(value: dict[str, Any]) -> UserspaceConfig:
    kwargs: dict[str, Any] = {}
    for name, kind in _DATAPLANE_FIELDS.items():
        if name in value:
            if not isinstance(value[name], kind):
                raise ConfigError(f"dataplane.{name} must be {kind.__name__}")
            kwargs[name] = value[name]
    if value.get("keylog_path"):
        kwargs["keylog_path"] = Path(value["keylog_path"])
    if value.get("tun_addresses"):
        kwargs["tun_addresses"] = tuple(ipaddress.ip_interface(a) for a in value["tun_addresses"])
    return UserspaceConfig(**kwargs)


def write_status(path: Path, counters: DataplaneCounters, extra: dict[str, Any]) -> None:
    """Atomically replace ``path`` with the counters as JSON."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(counters.to_dict() | extra, indent=1))
    temporary.replace(path)


async def run(config: dict[str, Any]) -> None:
    events: list[LifetimeEvent] = []
    ike: list[tuple[int, tuple[str, int]]] = []

    def on_ike(message: bytes, source: tuple[str, int]) -> None:
        log.info("IKE message of %d bytes from %s:%d (no IKE daemon here)", len(message), *source)
        ike.append((len(message), source))

    def on_event(event: LifetimeEvent) -> None:
        log.warning(
            "SA %#x %s: %s lifetime %s",
            event.spi,
            event.direction,
            "hard" if event.hard else "soft",
            event.trigger,
        )
        events.append(event)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    status_path = Path(config["status_path"]) if config.get("status_path") else None
    interval = float(config.get("status_interval", 1.0))
    sas = [sa_from_json(v) for v in config.get("sas", [])]
    async with UserspaceDataplane(
        dataplane_config(config.get("dataplane", {})), on_ike=on_ike, on_event=on_event
    ) as dataplane:
        for params in sas:
            await dataplane.install_sa(params)
        for prefix in config.get("routes", []):
            await dataplane.add_route(ipaddress.ip_network(prefix))

        async def report() -> None:
            if status_path is not None and not dataplane.failed:
                extra = {
                    "events": [
                        {
                            "spi": f"0x{e.spi:08x}",
                            "direction": str(e.direction),
                            "trigger": str(e.trigger),
                            "hard": e.hard,
                        }
                        for e in events
                    ],
                    "ike_messages": len(ike),
                    "failed": dataplane.failed,
                }
                write_status(status_path, await dataplane.counters(), extra)

        await report()
        log.info("%d SAs installed, routes %s", len(sas), config.get("routes", []))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if dataplane.failed:
                break
            await report()
        await report()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.config.stat().st_mode & 0o077:
        log.warning("%s is readable by others; it holds keys (chmod 600)", args.config)
    try:
        config = json.loads(args.config.read_text())
        asyncio.run(run(config))
    except (ConfigError, ValueError, OSError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())


def manual_tunnel(
    a_address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    a_subnets: list[str],
    b_address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    b_subnets: list[str],
    *,
    cipher: Cipher = Cipher.AES_GCM_16,
    key_bits: int = 256,
    esn: bool = False,
    lifetime: Lifetime | None = None,
) -> tuple[list[SaParams], list[SaParams]]:
    """Fresh random keys and SPIs for a tunnel between sites A and B: (A's SAs, B's SAs).

    Each site gets its outbound SA and the inbound SA that is the peer's outbound one."""
    from trellis.agent.esp.transforms import keymat_length

    length = keymat_length(cipher, key_bits)
    a_ts = tuple(TrafficSelector.from_network(s) for s in a_subnets)
    b_ts = tuple(TrafficSelector.from_network(s) for s in b_subnets)
    spi_ab, spi_ba = (int.from_bytes(os.urandom(4), "big") | 0x1000_0000 for _ in range(2))
    key_ab, key_ba = os.urandom(length), os.urandom(length)
    common: dict[str, Any] = {"cipher": cipher, "esn": esn, "lifetime": lifetime or Lifetime()}

    def sa(spi: int, key: bytes, direction: Direction, a_side: bool) -> SaParams:
        local, remote = (a_address, b_address) if a_side else (b_address, a_address)
        local_ts, remote_ts = (a_ts, b_ts) if a_side else (b_ts, a_ts)
        return SaParams(
            spi=spi,
            direction=direction,
            key=key,
            local_ts=local_ts,
            remote_ts=remote_ts,
            local_address=local,
            remote_address=remote,
            tag=f"manual {'a' if a_side else 'b'} {direction}",
            **common,
        )

    a_sas = [sa(spi_ab, key_ab, Direction.OUTBOUND, True), sa(spi_ba, key_ba, Direction.INBOUND, True)]
    b_sas = [sa(spi_ba, key_ba, Direction.OUTBOUND, False), sa(spi_ab, key_ab, Direction.INBOUND, False)]
    return a_sas, b_sas
