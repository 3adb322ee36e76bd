"""Manual keying: the JSON form of SAs and data-plane settings, and generated SA pairs."""

from __future__ import annotations

import dataclasses
import ipaddress
import pickle

import pytest

from tests.unit.esp.esp_support import DropPort, pair, udp4
from trellis.agent.dataplane.backend import DataplaneBackend
from trellis.agent.dataplane.static import (
    ConfigError,
    dataplane_config,
    manual_tunnel,
    sa_from_json,
    sa_to_json,
)
from trellis.agent.dataplane.userspace import UserspaceConfig, UserspaceDataplane
from trellis.agent.esp import Cipher, Direction, InboundSa, Lifetime, OutboundSa, TrafficSelector


def test_sa_json_round_trip() -> None:
    out, inbound = pair(Cipher.CHACHA20_POLY1305, esn=True, lifetime=Lifetime(soft_bytes=10, hard_seconds=60))
    ranged = TrafficSelector(
        start=ipaddress.ip_address("10.2.0.5"),
        end=ipaddress.ip_address("10.2.0.9"),
        protocol=6,
        start_port=80,
        end_port=443,
    )
    for params in (out, inbound, dataclasses.replace(out, remote_ts=(ranged,), tag="web only")):
        assert sa_from_json(sa_to_json(params)) == params


def test_bad_sa_json_is_a_config_error() -> None:
    good = sa_to_json(pair()[0])
    for broken in ({k: v for k, v in good.items() if k != "key"}, {**good, "local_ts": [42]}):
        with pytest.raises(ConfigError):
            sa_from_json(broken)


def test_dataplane_settings() -> None:
    config = dataplane_config({"tun_name": "t0", "tso": False, "keylog_path": "/x/esp_sa"})
    assert (config.tun_name, config.tso, config.gro, str(config.keylog_path)) == (
        "t0",
        False,
        True,
        "/x/esp_sa",
    )
    assert config.tun_mtu == 1438
    assert UserspaceConfig(listen_address="2001:db8::1").tun_mtu == 1418
    with pytest.raises(ConfigError):
        dataplane_config({"tso": "yes"})


def test_manual_tunnel_pairs_match() -> None:
    a, b = manual_tunnel(
        ipaddress.ip_address("192.0.2.1"), ["10.1.0.0/24"], ipaddress.ip_address("192.0.2.2"), ["10.2.0.0/24"]
    )
    a_out = next(p for p in a if p.direction is Direction.OUTBOUND)
    b_in = next(p for p in b if p.direction is Direction.INBOUND)
    assert (a_out.spi, a_out.key) == (b_in.spi, b_in.key)
    packet = udp4("10.1.0.5", "10.2.0.7")
    assert InboundSa(b_in, 0.0).open_packet(OutboundSa(a_out, 0.0).seal_packet(packet, 0.0), 0.0) == packet
    assert len({p.spi for p in a + b}) == 2 and a_out.key != next(p.key for p in a if p is not a_out)


def test_filters_travel_to_workers_by_pickle() -> None:
    drop = DropPort(port=23)
    assert pickle.loads(pickle.dumps(drop)) == drop


def test_userspace_dataplane_is_a_backend() -> None:
    backend: DataplaneBackend = UserspaceDataplane(UserspaceConfig())  # checked by mypy
    assert backend.__class__.__name__ == "UserspaceDataplane"
