"""A Trellis<->Trellis tunnel between the first two sites of a lab topology, negotiated by IKE:
``trellis-agent run --config`` in each site namespace (certificates from a fresh Trellis CA,
IKE aes256gcm16-prfsha256-x25519, ESP aes256gcm16, as the strongSwan anchor). Returns once both
sides carry the same CHILD SA. Used by bench/throughput.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from trellis.controller.ca import CertificateAuthority
from trellis.controller.policy import Inventory, Site, compile_view, parse_policy
from trellis.controller.policy.wire import view_to_proto
from trellis.lab.anchor import ESP_PROPOSAL, IKE_PROPOSAL, TRUST_DOMAIN
from trellis.lab.topology import StandardTopology
from trellis.lab.trellis_site import TrellisSite, agent_yaml, wait_until
from trellis.v1.identity import Identity

START_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class IkeTunnel:
    a: TrellisSite  # site 1, the initiator
    b: TrellisSite

    def diagnostics(self) -> str:
        return f"{self.a.diagnostics()}\n{self.b.diagnostics()}"


ALLOW_ALL = 'apiVersion: trellis/v1\nkind: Policy\nrules:\n  - {name: everyone, from: "*", to: "*"}\n'


def allow_all_views(topology: StandardTopology) -> dict[str, bytes]:
    """Each site's PolicyView under a policy that allows everything: the packet filter then
    checks every packet and lets it pass (its cost, nothing else)."""
    now = dt.datetime.now(dt.UTC)
    inventory = Inventory(
        Site.build(name=s.name, identity=Identity.site(TRUST_DOMAIN, s.name).uri, subnets=[str(s.lan)])
        for s in topology.sites
    )
    policy = parse_policy(ALLOW_ALL)
    return {
        s.name: view_to_proto(
            compile_view(policy, inventory, Identity.site(TRUST_DOMAIN, s.name).uri, now), policy_version=1
        ).SerializeToString()
        for s in topology.sites
    }


def start_ike_tunnel(
    topology: StandardTopology, *, tso: bool = False, gro: bool = True, policy: bool = False
) -> IkeTunnel:
    """``policy``: each agent enforces an allow-all policy view (measures the packet filter)."""
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=dt.datetime.now(dt.UTC))
    site1, site2 = topology.sites[0], topology.sites[1]
    views = allow_all_views(topology) if policy else {}
    sides = []
    for local, remote in ((site1, site2), (site2, site1)):
        side = TrellisSite.in_lab(topology.lab, local)
        side.install_credentials(ca)
        policy_line = ""
        if policy:
            (side.directory / "policy.pb").write_bytes(views[local.name])
            policy_line = "\npolicy_view: policy.pb"
        side.write_config(
            agent_yaml(
                local,
                remote,
                auth="{certificate: default, ca: ca.pem}",
                initiate=local is site1,
                remote_id=Identity.site(TRUST_DOMAIN, remote.name).uri,
                ike_proposals=(IKE_PROPOSAL,),
                esp_proposals=(ESP_PROPOSAL,),
                extra=f"dataplane: {{tun_name: trellis0, tso: {str(tso).lower()}, gro: {str(gro).lower()}}}"
                + policy_line,
            )
        )
        sides.append(side)
    a, b = sides
    b.start(log_level="info")
    wait_until("the responder", lambda: b.status() is not None, START_TIMEOUT, b.diagnostics)
    a.start(log_level="info")
    tunnel = IkeTunnel(a, b)

    def up() -> bool:
        ca_, cb = a.installed_child(), b.installed_child()
        return (
            ca_ is not None
            and cb is not None
            and "esp" in ca_
            and "esp" in cb
            and ca_["inbound_spi"] == cb["outbound_spi"]
        )

    wait_until("the IKE-negotiated CHILD SA", up, START_TIMEOUT, tunnel.diagnostics)
    return tunnel
