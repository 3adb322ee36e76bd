"""The YAML configuration of ``trellis-agent run --config``: what it builds, and errors that name
the field and say what is wrong."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.unit.ike.sa_support import ca, issue
from trellis.agent.ike.config import CertificateAuth, DeadPeerAction, PskAuth
from trellis.agent.ike.constants import DhId, EncrId, IdType
from trellis.agent.ike.keylogfile import ESP_TABLE, IKEV2_TABLE, KeyLog
from trellis.agent.ike.selectors import format_selector
from trellis.agent.ikeconfig import ConfigError, load_static_config, parse_static_config
from trellis.controller.ca import write_private_key


@pytest.fixture
def files(tmp_path: Path) -> Path:
    credentials = issue("branch-a")
    (tmp_path / "site.pem").write_bytes(credentials.chain[0].public_bytes(serialization.Encoding.PEM))
    write_private_key(tmp_path / "site.key", credentials.key)
    (tmp_path / "ca.pem").write_bytes(ca().certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "secret").write_text("a pre-shared key read from a file\n")
    return tmp_path


FULL = """
listen: {address: 127.0.0.1, ike_port: 1500, nat_t_port: 14500}
retransmit: {timeout: 2s, base: 1.5, tries: 3}
keylog: keys
status_file: status.json
credentials:
  default: {certificate: site.pem, key: site.key}
peers:
  - name: hq
    address: 203.0.113.10
    auth: {certificate: default, ca: ca.pem}
    remote_id: "O=example.org, OU=site, CN=hq"
    ike: {proposals: [aes128gcm16-prfsha384-ecp384, chacha20poly1305-prfsha256-x25519], rekey: 2h}
    dpd: 10s
    dpd_action: clear
    children:
      - name: lan
        local_ts: [10.1.0.0/24, "10.1.5.0/24[tcp/443]"]
        remote_ts: 10.2.0.0/16
        esp: {proposals: [aes256gcm16-x25519], rekey: 30m, lifetime: 40m, jitter: 1m}
  - name: partner
    address: 198.51.100.7
    port: 4500
    auth: {psk_file: secret}
    local_id: "@branch-a.example.org"
    remote_id: gw.partner.example
    encapsulation: auto
    initiate: false
    children: [{name: net, local_ts: [10.1.0.0/24], remote_ts: [192.168.0.0/24]}]
"""


def test_full_configuration(files: Path) -> None:
    (files / "agent.yaml").write_text(FULL)
    config = load_static_config(files / "agent.yaml")
    assert config.bind_address == "127.0.0.1"
    assert (config.settings.ike_port, config.settings.nat_t_port) == (1500, 14500)
    assert config.settings.retransmit.tries == 3 and config.settings.retransmit.wait(2) == pytest.approx(3.0)
    assert config.keylog_dir == files / "keys" and config.status_file == files / "status.json"
    hq, partner = config.peers
    assert isinstance(hq.auth, CertificateAuth) and hq.auth.trust_anchors == (ca().certificate,)
    assert hq.local_id is None and hq.remote_id == "O=example.org, OU=site, CN=hq"
    assert [e for p in hq.ike_proposals for e in p.encryption] == [
        (EncrId.AES_GCM_16, 128),
        (EncrId.CHACHA20_POLY1305, 256),
    ]
    assert hq.ike_lifetime.rekey_after == 7200 and hq.ike_lifetime.expire_after == pytest.approx(7920)
    assert hq.dpd_delay == 10 and hq.dpd_action == DeadPeerAction.CLEAR and hq.force_encapsulation
    (lan,) = hq.children
    assert [format_selector(t) for t in lan.local_ts] == ["10.1.0.0/24", "10.1.5.0/24[6/443]"]
    assert [format_selector(t) for t in lan.remote_ts] == ["10.2.0.0/16"]
    assert lan.proposals[0].dh == (DhId.CURVE25519,)
    assert (lan.lifetime.rekey_after, lan.lifetime.expire_after, lan.lifetime.jitter) == (1800, 2400, 60)
    assert isinstance(partner.auth, PskAuth) and partner.auth.secret == b"a pre-shared key read from a file"
    assert "secret" not in repr(partner) and b"pre-shared" not in repr(partner).encode()
    assert partner.local_id is not None and partner.local_id.id_type == IdType.ID_FQDN
    assert partner.remote_port == 4500 and not partner.initiate and not partner.force_encapsulation
    assert (
        config.credentials["default"].chain[0].public_key() == config.credentials["default"].key.public_key()
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("dpd: 10s", "dpd: soon"), "peers[0].dpd: invalid duration 'soon'"),
        (("dpd: 10s", "dpd_interval: 10s"), "peers[0]: unknown field 'dpd_interval'"),
        (
            ("remote_ts: 10.2.0.0/16", "remote_ts: 10.2.0.0/33"),
            "peers[0].children[0].remote_ts: '10.2.0.0/33' is not an address",
        ),
        (
            ("aes256gcm16-x25519", "aes256cbc-x25519"),
            "peers[0].children[0].esp.proposals[0]: unknown or unsupported ESP algorithm 'aes256cbc'",
        ),
        (
            ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305-x25519"),
            "peers[0].ike.proposals[1]: IKE proposal",
        ),
        (("auth: {certificate: default, ca: ca.pem}", "auth: {certificate: default}"), "peers[0].auth: 'ca'"),
        (
            ("auth: {certificate: default, ca: ca.pem}", "auth: {certificate: other, ca: ca.pem}"),
            "peers[0].auth.certificate: no credential named 'other'",
        ),
        (
            ("auth: {psk_file: secret}", "auth: {psk: short}"),
            "peers[1].auth.psk: pre-shared key must be at least 16 bytes",
        ),
        (
            ("address: 198.51.100.7", "address: gateway.example"),
            "peers[1].address: 'gateway.example' does not appear",
        ),
        (("name: partner", "name: hq"), "peers[1].name: duplicate peer name 'hq'"),
        (("site.key", "missing.key"), "credentials.default.key: cannot read"),
        (("ike_port: 1500", "ike_port: 70000"), "listen.ike_port: expected a whole number from 1 to 65535"),
        (("encapsulation: auto", "encapsulation: sometimes"), "peers[1].encapsulation: expected 'forced'"),
        (("rekey: 30m, lifetime: 40m", "rekey: 30m, lifetime: 20m"), "peers[0].children[0].esp: lifetime"),
        (
            ('local_id: "@branch-a.example.org"', 'local_id: "CN=a, X=b"'),
            "peers[1].local_id: 'CN=a, X=b' is not a distinguished name",
        ),
    ],
)
def test_errors_name_the_field(files: Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in FULL
    with pytest.raises(ConfigError) as caught:
        parse_static_config(FULL.replace(old, new, 1), base=files)
    assert str(caught.value).startswith(message), str(caught.value)


def test_missing_peers_and_bad_yaml(files: Path) -> None:
    with pytest.raises(ConfigError, match="'peers' is required"):
        parse_static_config("listen: {address: 127.0.0.1}", base=files)
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_static_config("peers: [", base=files)
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_static_config("- 1", base=files)


def test_keylog_files_are_private(tmp_path: Path) -> None:
    log = KeyLog(tmp_path / "keys")
    (tmp_path / "keys" / IKEV2_TABLE).write_text("")
    (tmp_path / "keys" / IKEV2_TABLE).chmod(0o644)  # a wider mode left by someone is tightened
    log.ike_row(
        '0102030405060708,a1a2a3a4a5a6a7a8,00,11,"AES-GCM-256 with 16 octet ICV [RFC5282]",,,"NONE [RFC4306]"'
    )
    for name in (IKEV2_TABLE,):
        mode = stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode)
        assert mode == 0o600
    assert not (tmp_path / "keys" / ESP_TABLE).exists()
