"""Data-plane backends: where SAs are installed and packets are moved.

Public API (what the IKE glue, the mesh reconciler and ``trellis-agent status`` use)::

    from trellis.agent.dataplane import UserspaceConfig, UserspaceDataplane
    from trellis.agent.esp import SaParams, Direction, Cipher, TrafficSelector, Lifetime

    async with UserspaceDataplane(config, on_ike=ike.datagram_received, on_event=mesh.sa_event) as dp:
        await dp.install_sa(inbound)        # install inbound first, then outbound
        await dp.install_sa(outbound)
        await dp.add_route(peer_lan)        # traffic to peer_lan enters the tunnel (or is dropped)
        dp.send_ike(message, (peer, 4500))  # IKE on the shared port 4500, marker added for you
        counters = await dp.counters()      # DataplaneCounters; .to_dict() for JSON
        await dp.remove_sa(spi, Direction.OUTBOUND)
        await dp.set_policy(view)           # enforce a trellis.v1.PolicyView in both workers (None:
                                            # no filter); a later view keeps the flows it allows

The policy filter's drops are counted per reason in ``counters.policy_reasons`` ("no-rule",
"expired", "flow-channel-full", malformations); the flow channel between the workers in
``counters.traffic``: flow_records_published / _imported / _refused / _dropped_full / _lost /
_malformed, flow_rechecks_allowed, policy_flows_outbound / _inbound, policy_flows_ended.

Rekeying (make before break): install the new inbound SA, then the new outbound SA (the newest
outbound SA covering a flow wins at once), then remove the old pair after a short grace period.
"""

from trellis.agent.dataplane.backend import (
    DataplaneBackend,
    DataplaneError,
    Endpoint,
    EventHandler,
    IkeHandler,
)
from trellis.agent.dataplane.counters import DataplaneCounters
from trellis.agent.dataplane.hooks import ALLOW, PacketFilter, Verdict
from trellis.agent.dataplane.userspace import UserspaceConfig, UserspaceDataplane

__all__ = [
    "ALLOW",
    "DataplaneBackend",
    "DataplaneCounters",
    "DataplaneError",
    "Endpoint",
    "EventHandler",
    "IkeHandler",
    "PacketFilter",
    "UserspaceConfig",
    "UserspaceDataplane",
    "Verdict",
]
