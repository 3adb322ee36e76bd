"""Trellis against strongSwan 5.9 (kernel-libipsec) in network namespaces, both directions.

The Trellis side is ``trellis-agent run --config`` in site1 of the standard lab topology;
strongSwan runs in site2. Certificates come from the Trellis CA. Pass/fail is read from
``swanctl --list-sas`` and from the agent's own events file; tshark decrypts a captured
IKE_AUTH with the agent's key-log export.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from trellis.controller.ca import CertificateAuthority, make_csr, write_private_key
from trellis.lab.anchor import CHILD, CONNECTION, site_dn, site_to_site_connection
from trellis.lab.strongswan import Charon, start_charon
from trellis.lab.swanctl import AuthRound, Connection, IkeSecret, SwanctlConfig
from trellis.lab.topology import Site, StandardTopology
from trellis.lab.trellis_site import TrellisSite, agent_yaml, wait_until
from trellis.lab.tshark import decode, start_capture
from trellis.lab.vici_text import IkeSa
from trellis.v1.identity import Identity

pytestmark = pytest.mark.interop

TRUST_DOMAIN = "trellis.test"
AGENT = Path(sys.executable).parent / "trellis-agent"
PSK = "interop pre-shared key, long enough"
Key = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def new_key(kind: str) -> Key:
    return (
        ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    )


def issue(ca: CertificateAuthority, site: str, key: Key) -> x509.Certificate:
    identity = Identity.site(ca.trust_domain, site)
    return ca.issue(make_csr(key, identity), identity, now=dt.datetime.now(dt.UTC), ttl=dt.timedelta(hours=1))


@dataclass
class Interop:
    topology: StandardTopology
    ca: CertificateAuthority
    trellis: TrellisSite
    charon: Charon

    @property
    def site1(self) -> Site:
        return self.topology.sites[0]

    @property
    def site2(self) -> Site:
        return self.topology.sites[1]

    def diagnostics(self) -> str:
        return f"{self.trellis.diagnostics()}\n{self.charon.diagnostics()}"

    def strongswan_sa(self) -> IkeSa | None:
        established = [sa for sa in self.charon.list_sas() if sa.state == "ESTABLISHED"]
        return established[0] if len(established) == 1 else None

    def wait_consistent(
        self, timeout: float = 20.0, *, what: str = "one SA, the same on both sides"
    ) -> tuple[dict[str, Any], IkeSa]:
        """Wait until each side has exactly one established IKE SA with one installed CHILD SA,
        and they are the same SAs (SPIs), as swanctl and our status file tell."""

        def same() -> bool:
            ours, theirs = self.trellis.current_sa(), self.strongswan_sa()
            if ours is None or theirs is None or len(theirs.children) != 1 or len(ours["children"]) != 1:
                return False
            child, their_child = ours["children"][0], theirs.children[0]
            return (
                (int(ours["spi_i"], 16), int(ours["spi_r"], 16))
                == (theirs.initiator_spi, theirs.responder_spi)
                and their_child.state == "INSTALLED"
                and child["state"] == "installed"
                and int(child["inbound_spi"], 16) == their_child.spi_out
                and int(child["outbound_spi"], 16) == their_child.spi_in
            )

        wait_until(what, same, timeout, self.diagnostics)
        ours, theirs = self.trellis.current_sa(), self.strongswan_sa()
        assert ours is not None and theirs is not None
        return ours, theirs


def _strongswan_connection(
    setup: Interop, credentials_cert: str | None, cacerts: tuple[str, ...], **changes: Any
) -> Connection:
    from trellis.lab.strongswan import InstalledCredentials

    connection = site_to_site_connection(
        setup.site2,
        setup.site1,
        InstalledCredentials(cert=credentials_cert or "unused.pem", cacerts=cacerts),
        trust_domain=TRUST_DOMAIN,
    )
    child_changes = changes.pop("child", {})
    connection = replace(connection, children=(replace(connection.children[0], **child_changes),))
    return replace(connection, encap=True, mobike=False, **changes)


@pytest.fixture
def interop(topology: StandardTopology) -> Iterator[Callable[..., Interop]]:
    """Builds the pair: ``make(trellis_key=..., strongswan_key=..., trellis_initiates=..., ...)``."""
    if os.geteuid() != 0:
        pytest.skip("strongSwan in network namespaces needs root")
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=dt.datetime.now(dt.UTC))
    site1, site2 = topology.sites

    def make(
        *,
        trellis_key: str = "ecdsa",
        strongswan_key: str = "ecdsa",
        trellis_initiates: bool = True,
        psk: bool = False,
        strongswan_settings: dict[str, str] | None = None,
        strongswan_log_keys: bool = False,
        connection: dict[str, Any] | None = None,
        yaml: dict[str, Any] | None = None,
        start: bool = True,
    ) -> Interop:
        charon = start_charon(
            topology.lab,
            site2.netns,
            name="strongswan",
            log_keys=strongswan_log_keys,
            settings=strongswan_settings,
        )
        # IKE only: these tests are about the IKE engine; the data plane has tests of its own
        trellis = TrellisSite.in_lab(topology.lab, site1, dataplane="none")
        directory = trellis.directory
        key1 = new_key(trellis_key)
        (directory / "site.pem").write_bytes(
            issue(ca, site1.name, key1).public_bytes(serialization.Encoding.PEM)
        )
        write_private_key(directory / "site.key", key1)
        (directory / "ca.pem").write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
        setup = Interop(topology=topology, ca=ca, trellis=trellis, charon=charon)
        options = dict(connection or {})
        if psk:
            conn = _strongswan_connection(setup, None, (), **options)
            conn = replace(
                conn,
                local=AuthRound(auth="psk", id=f"{site2.name}.{TRUST_DOMAIN}"),
                remote=AuthRound(auth="psk", id=f"{site1.name}.{TRUST_DOMAIN}"),
            )
            secrets = (
                IkeSecret(
                    name="trellis",
                    secret=PSK,
                    ids=(f"{site1.name}.{TRUST_DOMAIN}", f"{site2.name}.{TRUST_DOMAIN}"),
                ),
            )
            charon.load(SwanctlConfig(connections=(conn,), secrets=secrets))
            auth = f'{{psk: "{PSK}"}}'
            ids = {"local_id": f"{site1.name}.{TRUST_DOMAIN}", "remote_id": f"{site2.name}.{TRUST_DOMAIN}"}
        else:
            key2 = new_key(strongswan_key)
            installed = charon.install_credentials(
                cacerts=[ca.certificate], cert=issue(ca, site2.name, key2), key=key2
            )
            conn = _strongswan_connection(setup, installed.cert, installed.cacerts, **options)
            charon.load(SwanctlConfig(connections=(conn,)))
            auth = "{certificate: default, ca: ca.pem}"
            ids = {"remote_id": Identity.site(TRUST_DOMAIN, site2.name).uri}
        settings: dict[str, Any] = {"auth": auth, "initiate": trellis_initiates, **ids, **(yaml or {})}
        trellis.write_config(agent_yaml(site1, site2, **settings))
        if start:
            trellis.start()
        return setup

    yield make


def test_trellis_initiates_with_ecdsa(interop: Callable[..., Interop]) -> None:
    setup = interop()
    ours, theirs = setup.wait_consistent()
    assert not theirs.initiator and ours["initiator"]
    assert (theirs.encr_alg, theirs.encr_keysize, theirs.prf_alg, theirs.dh_group) == (
        "AES_GCM_16",
        256,
        "PRF_HMAC_SHA2_256",
        "CURVE_25519",
    )
    assert theirs.remote_id == site_dn(TRUST_DOMAIN, "site1") and theirs.remote_port == 4500
    child = theirs.child(CHILD)
    assert (child.encr_alg, child.encr_keysize, child.encap) == ("AES_GCM_16", 256, True)
    assert child.local_ts == ("10.2.0.0/24",) and child.remote_ts == ("10.1.0.0/24",)
    up = setup.trellis.events("IkeSaUp")[0]
    assert up["peer_identity"] == f"spiffe://{TRUST_DOMAIN}/site/site2"
    assert up["remote"] == ["192.0.2.2", 4500] and up["suite"] == "aes256gcm16-prfsha256-x25519"


@pytest.mark.parametrize(("trellis_key", "strongswan_key"), [("ed25519", "ed25519"), ("ecdsa", "ed25519")])
@pytest.mark.parametrize(
    "trellis_initiates", [True, False], ids=["trellis-initiates", "strongswan-initiates"]
)
def test_certificates_both_directions(
    interop: Callable[..., Interop], trellis_key: str, strongswan_key: str, trellis_initiates: bool
) -> None:
    setup = interop(
        trellis_key=trellis_key, strongswan_key=strongswan_key, trellis_initiates=trellis_initiates
    )
    if not trellis_initiates:
        time.sleep(0.5)  # the agent binds its ports
        setup.charon.initiate(CHILD)
    ours, theirs = setup.wait_consistent()
    assert theirs.initiator == (not trellis_initiates)
    assert ours["peer_identity"] == f"spiffe://{TRUST_DOMAIN}/site/site2"
    assert theirs.remote_id == site_dn(TRUST_DOMAIN, "site1")


def test_psk(interop: Callable[..., Interop]) -> None:
    setup = interop(psk=True)
    ours, theirs = setup.wait_consistent()
    assert theirs.remote_id == "site1.trellis.test" and ours["remote_id"] == "site2.trellis.test"
    assert ours["peer_identity"] is None and ours["auth_expires"] is None


@pytest.mark.parametrize("who_refuses", ["strongswan", "trellis"])
def test_invalid_ke_payload_is_retried(interop: Callable[..., Interop], who_refuses: str) -> None:
    if who_refuses == "strongswan":
        # strongSwan (responder) only takes ECP-384; we send X25519 first and must retry.
        setup = interop(connection={"proposals": ("aes256gcm16-prfsha256-ecp384",)})
        expected = "ECP_384"
    else:
        # We (responder) only take ECP-256; strongSwan sends its first group (X25519) and retries.
        setup = interop(
            trellis_initiates=False,
            connection={"proposals": ("aes256gcm16-prfsha256-x25519-ecp256",)},
            yaml={"ike_proposals": ("aes256gcm16-prfsha256-ecp256",)},
        )
        time.sleep(0.5)
        setup.charon.initiate(CHILD)
        expected = "ECP_256"
    ours, theirs = setup.wait_consistent()
    assert theirs.dh_group == expected
    assert ours["suite"].endswith(expected.lower().replace("_", ""))
    # strongSwan logs the exchange: "IKE_SA_INIT response 0 [ N(INVAL_KE) ]" from one side or the other
    assert "N(INVAL_KE)" in setup.charon.log_text()


def test_rekeys_started_by_trellis_with_short_lifetimes(interop: Callable[..., Interop]) -> None:
    setup = interop(
        connection={"child": {"esp_proposals": ("aes256gcm16-x25519",)}},
        yaml={
            "esp_proposals": ("aes256gcm16-x25519",),
            "esp_lifetime": ", rekey: 6s, lifetime: 12s, jitter: 1s",
            "ike_lifetime": ", rekey: 14s, lifetime: 24s, jitter: 1s",
        },
    )
    first, _ = setup.wait_consistent()
    setup.trellis.wait_event("IkeSaRekeyed", timeout=25)
    setup.trellis.wait_event("ChildSaRekeyed", count=2, timeout=25)
    ours, theirs = setup.wait_consistent(what="the rekeyed SAs, the same on both sides")
    assert ours["spi_i"] != first["spi_i"]
    child = theirs.child(CHILD)
    assert child.raw.get("dh-group") == "CURVE_25519"  # the rekey carried KE payloads (PFS)
    # strongSwan deleted nothing on its own: every old SA went by our DELETEs
    deleted = setup.trellis.events("ChildSaDeleted")
    assert deleted and all(e["reason"] == "rekeyed" for e in deleted)


def test_rekeys_started_by_strongswan(interop: Callable[..., Interop]) -> None:
    setup = interop(
        connection={"child": {"esp_proposals": ("aes256gcm16-ecp256",)}},
        yaml={"esp_proposals": ("aes256gcm16-ecp256",)},
    )
    first, _ = setup.wait_consistent()
    setup.charon.swanctl("--rekey", "--child", CHILD)
    setup.trellis.wait_event("ChildSaRekeyed")
    ours, theirs = setup.wait_consistent(what="the CHILD SA rekeyed by strongSwan")
    assert theirs.child(CHILD).raw.get("dh-group") == "ECP_256"
    setup.charon.swanctl("--rekey", "--ike", CONNECTION)
    setup.trellis.wait_event("IkeSaRekeyed")
    ours, theirs = setup.wait_consistent(what="the IKE SA rekeyed by strongSwan")
    assert ours["spi_i"] != first["spi_i"] and not ours["initiator"]  # the rekey's initiator owns the new SA
    assert [e["reason"] for e in setup.trellis.events("IkeSaDown")] == ["rekeyed"]


def test_delete_from_each_side(interop: Callable[..., Interop]) -> None:
    setup = interop()
    setup.wait_consistent()
    setup.charon.terminate(child=CHILD)
    deleted = setup.trellis.wait_event("ChildSaDeleted")
    assert deleted["reason"] == "peer-deleted"
    setup.charon.terminate(ike=CONNECTION)
    down = setup.trellis.wait_event("IkeSaDown")
    assert down["reason"] == "peer-deleted"
    assert setup.charon.list_sas() == []
    # Now the other way: strongSwan brings it up again, and stopping the agent deletes it.
    setup.charon.initiate(CHILD)
    setup.wait_consistent()
    assert setup.trellis.process is not None
    assert setup.trellis.process.stop(grace=10) == 0
    wait_until("strongSwan to drop the SA", lambda: setup.charon.list_sas() == [], 10, setup.diagnostics)
    assert "received DELETE for IKE_SA" in setup.charon.log_text()


def test_peer_death_detected_both_ways(interop: Callable[..., Interop]) -> None:
    setup = interop(
        strongswan_settings={"retransmit_timeout": "1", "retransmit_tries": "2", "retransmit_base": "1.4"},
        connection={"dpd_delay": 2},
        yaml={"dpd": "2s"},
    )
    setup.wait_consistent()
    site1, site2 = setup.site1, setup.site2
    setup.topology.faults.drop_udp(site1.underlay_ip, site2.underlay_ip, both_directions=True)
    dead = setup.trellis.wait_event("PeerDead", timeout=20)
    assert dead["peer"] == "site2"
    wait_until(
        "strongSwan to declare us dead",
        lambda: not [sa for sa in setup.charon.list_sas() if sa.state == "ESTABLISHED"],
        30,
        setup.diagnostics,
    )
    assert "giving up after" in setup.charon.log_text()


def test_fragmented_ike_auth(interop: Callable[..., Interop]) -> None:
    """Both sides fragment IKE_AUTH (RFC 7383) below the certificate's size."""
    setup = interop(
        strongswan_settings={"fragment_size": "576"},
        connection={"fragmentation": "yes"},
        yaml={"extra": "fragment_size: 576"},
    )
    setup.wait_consistent()
    log = setup.charon.log_text()
    assert "received fragment #" in log and "splitting IKE message" in log


def test_tshark_decrypts_ike_auth_with_our_key_log(interop: Callable[..., Interop]) -> None:
    setup = interop(start=False, strongswan_log_keys=True)
    topo = setup.topology
    capture = start_capture(topo.lab, topo.wan, topo.wan_bridge, capture_filter="udp")
    setup.trellis.start()
    _ours, _theirs = setup.wait_consistent()
    pcap = capture.stop()
    keys = setup.trellis.directory / "keys"
    for name in ("ikev2_decryption_table", "esp_sa"):
        assert (keys / name).stat().st_mode & 0o777 == 0o600
    ike_rows = (keys / "ikev2_decryption_table").read_text().splitlines()
    assert len(ike_rows) == 1

    fields = [
        "isakmp.exchangetype",
        "isakmp.id.type",
        "x509ce.uniformResourceIdentifier",
        "isakmp.ts.start_ipv4",
    ]
    sealed = decode(pcap, fields=fields, display_filter="isakmp.exchangetype == 35")
    assert len(sealed) == 2 and not any(p.has("isakmp.id.type") for p in sealed)
    opened = decode(
        pcap,
        fields=fields,
        display_filter="isakmp.exchangetype == 35",
        preferences={"uat:ikev2_decryption_table": ike_rows},
    )
    assert len(opened) == 2
    assert all("9" in p.values("isakmp.id.type") for p in opened)  # ID_DER_ASN1_DN both ways
    uris = {uri for p in opened for uri in p.values("x509ce.uniformResourceIdentifier")}
    assert uris == {f"spiffe://{TRUST_DOMAIN}/site/site1", f"spiffe://{TRUST_DOMAIN}/site/site2"}
    assert {"10.1.0.0", "10.2.0.0"} <= {a for p in opened for a in p.values("isakmp.ts.start_ipv4")}

    # Our ESP rows carry the very keys strongSwan derived (read from its own log).
    ours_esp = sorted(
        (int(cells[3].strip('"'), 16), bytes.fromhex(cells[5].strip('"')[2:]))
        for cells in (row.split(",") for row in (keys / "esp_sa").read_text().splitlines())
    )
    theirs_esp = sorted((row.spi, row.encryption_key) for row in setup.charon.esp_sas())
    assert ours_esp == theirs_esp


def test_strongswan_drops_if_our_certificate_is_not_trusted(interop: Callable[..., Interop]) -> None:
    """An authentication failure as strongSwan sees it, and as our events report it."""
    other = CertificateAuthority.create(TRUST_DOMAIN, now=dt.datetime.now(dt.UTC))
    setup = interop(start=False)
    key = new_key("ecdsa")
    (setup.trellis.directory / "site.pem").write_bytes(
        issue(other, "site1", key).public_bytes(serialization.Encoding.PEM)
    )
    write_private_key(setup.trellis.directory / "site.key", key)
    setup.trellis.start()
    failed = setup.trellis.wait_event("AuthenticationFailed")
    assert failed["by_peer"] is True
    assert not [sa for sa in setup.charon.list_sas() if sa.state == "ESTABLISHED"]
    if setup.trellis.process is not None:
        setup.trellis.process.stop(sig=signal.SIGTERM)


def test_wrong_identity_is_refused_by_us(interop: Callable[..., Interop]) -> None:
    setup = interop(yaml={"remote_id": Identity.site(TRUST_DOMAIN, "site9").uri})
    failed = setup.trellis.wait_event("AuthenticationFailed")
    assert failed["by_peer"] is False and failed["reason"].startswith("not the expected identity")
    wait_until(
        "strongSwan to drop the SA after our AUTHENTICATION_FAILED notice",
        lambda: not [sa for sa in setup.charon.list_sas() if sa.state == "ESTABLISHED"],
        10,
        setup.diagnostics,
    )
