"""The site configuration (the static IKE file plus the dataplane and state_dir sections) and
the command line around it: every error names its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from trellis.agent.ikeconfig import ConfigError
from trellis.agent.main import main
from trellis.agent.site.config import Backend, parse_site_config, pinned_routes

PEER = """
peers:
  - name: hq
    address: 192.0.2.9
    auth: {psk: "a pre-shared key, long enough"}
    local_id: branch.example
    remote_id: hq.example
    children:
      - {name: lan, local_ts: [10.1.0.0/24], remote_ts: [10.2.0.0/24, 192.0.2.0/24, 10.3.0.0/16]}
"""


def test_defaults_and_every_field(tmp_path: Path) -> None:
    config = parse_site_config(PEER, base=tmp_path)
    assert config.dataplane.backend is Backend.USERSPACE and config.state_dir is None
    assert config.dataplane.tun_name == "trellis0" and config.dataplane.fail_closed
    text = (
        PEER
        + """
state_dir: state
dataplane:
  backend: none
  tun_name: tr-site.1
  underlay_mtu: 9000
  tun_addresses: 10.1.0.1/32
  gro: false
  tso: true
  clamp_mss: false
  fail_closed: false
  replay_window: 4096
  rekey_bytes: 1000
  life_bytes: 2000
  rekey_packets: 10
  life_packets: 20
"""
    )
    config = parse_site_config(text, base=tmp_path)
    settings = config.dataplane
    assert config.state_dir == tmp_path / "state"
    assert (settings.backend, settings.tun_name, settings.underlay_mtu) == (Backend.NONE, "tr-site.1", 9000)
    assert [str(a) for a in settings.tun_addresses] == ["10.1.0.1/32"]
    assert (settings.gro, settings.tso, settings.clamp_mss, settings.fail_closed) == (
        False,
        True,
        False,
        False,
    )
    esp = settings.esp
    assert (esp.replay_window, esp.rekey_bytes, esp.life_bytes, esp.rekey_packets, esp.life_packets) == (
        4096,
        1000,
        2000,
        10,
        20,
    )
    lifetime = esp.lifetime(expires_in=100.0)
    assert (lifetime.soft_packets, lifetime.hard_packets) == (10, 20)
    assert lifetime.hard_seconds == pytest.approx(100.0 + esp.expiry_grace)
    assert config.ike.peers[0].name == "hq"  # the rest went to the IKE loader


def test_pinned_routes_leave_out_the_peers_own_address(tmp_path: Path) -> None:
    config = parse_site_config(PEER, base=tmp_path)
    assert [str(p) for p in pinned_routes(config.ike.peers)] == ["10.2.0.0/24", "10.3.0.0/16"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("dataplane: {backend: kernel}", "dataplane.backend: expected 'userspace' or 'none'"),
        ("dataplane: {tun_name: 'much too long a name'}", "dataplane.tun_name: expected an interface name"),
        ("dataplane: {underlay_mtu: 100}", "dataplane.underlay_mtu: expected a whole number from 576"),
        ("dataplane: {gro: 'yes'}", "dataplane.gro: expected true or false"),
        ("dataplane: {tun_addresses: [10.1.0.1/33]}", "dataplane.tun_addresses[0]:"),
        ("dataplane: {replay_window: 8}", "dataplane.replay_window: expected a whole number from 32"),
        (
            "dataplane: {rekey_packets: 10, life_packets: 5}",
            "dataplane.rekey_packets: must not exceed life_packets",
        ),
        ("dataplane: {rekey_bytes: 0}", "dataplane.rekey_bytes: expected a whole number from 1"),
        ("dataplane: {colour: blue}", "dataplane: unknown field 'colour'"),
        ("dataplane: [userspace]", "dataplane: expected a mapping"),
        ("state_dir: [a, b]", "state_dir: expected a directory name"),
    ],
)
def test_errors_name_the_field(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_site_config(PEER + section + "\n", base=tmp_path)


def test_userspace_data_plane_needs_esp_in_udp(tmp_path: Path) -> None:
    plain = PEER.replace("remote_id: hq.example", "remote_id: hq.example\n    encapsulation: auto")
    with pytest.raises(ConfigError, match=r"peers\[0\]\.encapsulation: the userspace data plane"):
        parse_site_config(plain, base=tmp_path)
    assert (
        parse_site_config(plain + "dataplane: {backend: none}\n", base=tmp_path).dataplane.backend
        is Backend.NONE
    )


def test_the_command_line_reports_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(PEER + "dataplane: {tun_name: 'much too long a name'}\n")
    assert main(["run", "--config", str(path)]) == 2
    assert "trellis-agent: error: dataplane.tun_name: expected an interface name" in capsys.readouterr().err
    path.write_text(PEER.replace("remote_id: hq.example", "remote_id: hq.example\n    encapsulation: auto"))
    assert main(["run", "--config", str(path), "--dataplane", "userspace"]) == 2
    assert "peers[0].encapsulation" in capsys.readouterr().err
    assert main(["status", "--state-dir", str(tmp_path)]) == 2
    assert "holds no agent state" in capsys.readouterr().err
    path.write_text(PEER)
    assert main(["status", "--config", str(path)]) == 2
    assert "names neither state_dir nor status_file" in capsys.readouterr().err
