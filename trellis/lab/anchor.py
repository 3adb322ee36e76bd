"""The strongSwan<->strongSwan anchor: two standard sites joined by a strongSwan tunnel.

It is the reference every Trellis interop test and benchmark compares against: certificates from
the Trellis CA (ECDSA P-256, DN + URI SAN identity), IKE aes256gcm16-prfsha256-x25519, ESP
aes256gcm16, kernel-libipsec (ESP in UDP) on both sides.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from trellis.controller.ca import CertificateAuthority, make_csr
from trellis.lab.iperf import IperfResult, PingResult, iperf3_tcp, ping
from trellis.lab.strongswan import Charon, InstalledCredentials, start_charon
from trellis.lab.swanctl import AuthRound, Child, Connection, StartAction, SwanctlConfig
from trellis.lab.topology import Site, StandardTopology, standard_lab
from trellis.v1.identity import Identity

TRUST_DOMAIN = "trellis.test"
IKE_PROPOSAL = "aes256gcm16-prfsha256-x25519"
ESP_PROPOSAL = "aes256gcm16"
CONNECTION = "mesh"
CHILD = "lan"
CERT_TTL = dt.timedelta(hours=1)


def site_dn(trust_domain: str, site: str) -> str:
    """The strongSwan ID of a Trellis site certificate: its subject DN (as ca.site_subject makes it)."""
    return f"O={trust_domain}, OU=site, CN={site}"


def issue_site_certificate(
    ca: CertificateAuthority, site: str, *, now: dt.datetime | None = None, ttl: dt.timedelta = CERT_TTL
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A fresh P-256 key and a leaf for ``site`` issued from a CSR, as an agent would get it."""
    identity = Identity.site(ca.trust_domain, site)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue(make_csr(key, identity), identity, now=now or dt.datetime.now(dt.UTC), ttl=ttl)
    return cert, key


def site_to_site_connection(
    local: Site,
    remote: Site,
    credentials: InstalledCredentials,
    *,
    trust_domain: str = TRUST_DOMAIN,
    name: str = CONNECTION,
    child: str = CHILD,
    ike_proposals: tuple[str, ...] = (IKE_PROPOSAL,),
    esp_proposals: tuple[str, ...] = (ESP_PROPOSAL,),
    start_action: StartAction | None = None,
    remote_id: str | None = None,
) -> Connection:
    """The swanctl connection from ``local`` to ``remote``: certificate auth with DN identities,
    LAN-to-LAN traffic selectors. ``remote_id`` overrides the peer identity (default: its DN)."""
    if credentials.cert is None:
        raise ValueError("install a certificate first (Charon.install_credentials)")
    return Connection(
        name=name,
        local_addrs=(str(local.underlay_ip),),
        remote_addrs=(str(remote.underlay_ip),),
        local=AuthRound(auth="pubkey", id=site_dn(trust_domain, local.name), certs=(credentials.cert,)),
        remote=AuthRound(
            auth="pubkey",
            id=remote_id or site_dn(trust_domain, remote.name),
            cacerts=credentials.cacerts,
        ),
        children=(
            Child(
                name=child,
                local_ts=(str(local.lan),),
                remote_ts=(str(remote.lan),),
                esp_proposals=esp_proposals,
                start_action=start_action,
            ),
        ),
        proposals=ike_proposals,
    )


def start_strongswan_site(
    topology: StandardTopology,
    site: Site,
    peer: Site,
    ca: CertificateAuthority,
    *,
    log_keys: bool = False,
    name: str | None = None,
    remote_id: str | None = None,
) -> Charon:
    """Start charon (called ``name``, default the site's name) in ``site`` with a fresh certificate
    and the connection to ``peer`` loaded; ``remote_id`` overrides the identity expected of the peer."""
    charon = start_charon(topology.lab, site.netns, name=name or site.name, log_keys=log_keys)
    cert, key = issue_site_certificate(ca, site.name)
    credentials = charon.install_credentials(cacerts=[ca.certificate], cert=cert, key=key)
    connection = site_to_site_connection(
        site, peer, credentials, trust_domain=ca.trust_domain, remote_id=remote_id
    )
    charon.load(SwanctlConfig(connections=(connection,)))
    return charon


@dataclass(frozen=True, slots=True)
class StrongswanPair:
    topology: StandardTopology
    ca: CertificateAuthority
    initiator: Charon
    responder: Charon

    @property
    def sites(self) -> tuple[Site, Site]:
        return self.topology.sites[0], self.topology.sites[1]


@contextlib.contextmanager
def strongswan_pair(
    *,
    log_keys: bool = False,
    hosts_per_site: int = 1,
    initiate: bool = True,
    keep_workdir: bool | None = None,
) -> Iterator[StrongswanPair]:
    """Two standard sites with strongSwan in each; with ``initiate`` the CHILD SA ``lan`` is up
    (site1 initiates) when the block starts. Everything is deleted on exit."""
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=dt.datetime.now(dt.UTC))
    with standard_lab(sites=2, hosts_per_site=hosts_per_site, keep_workdir=keep_workdir) as topology:
        site1, site2 = topology.sites
        initiator = start_strongswan_site(topology, site1, site2, ca, log_keys=log_keys)
        responder = start_strongswan_site(topology, site2, site1, ca, log_keys=log_keys)
        if initiate:
            initiator.initiate(CHILD)
            initiator.wait_for_child_sa(CHILD)
            responder.wait_for_child_sa(CHILD)
        yield StrongswanPair(topology=topology, ca=ca, initiator=initiator, responder=responder)


@dataclass(frozen=True, slots=True)
class AnchorMeasurement:
    throughput: IperfResult
    rtt: PingResult


def measure_lan_to_lan(
    topology: StandardTopology, *, seconds: float = 10.0, ping_count: int = 20
) -> AnchorMeasurement:
    """iperf3 TCP (site1's first host -> site2's first host) and ping RTT between them, through
    whatever tunnel currently joins the two sites (strongSwan here, Trellis in bench/)."""
    site1, site2 = topology.sites[0], topology.sites[1]
    client, server = site1.hosts[0], site2.hosts[0]
    rtt = ping(client.netns, str(server.ip), count=ping_count, interval=0.05)
    throughput = iperf3_tcp(topology.lab, server.netns, client.netns, str(server.ip), seconds=seconds)
    return AnchorMeasurement(throughput=throughput, rtt=rtt)


def measure_strongswan_anchor(*, seconds: float = 10.0, ping_count: int = 20) -> AnchorMeasurement:
    """Set up a strongSwan<->strongSwan pair and measure LAN-to-LAN TCP throughput and RTT."""
    with strongswan_pair() as pair:
        return measure_lan_to_lan(pair.topology, seconds=seconds, ping_count=ping_count)
