"""A site at run time: the IKE engine and the data plane joined, so that negotiated CHILD SAs
carry LAN traffic.

Public API (what ``trellis-agent run --config`` uses, and what the mesh reconciler will use)::

    from trellis.agent.site import SiteRuntime, SiteFailed, EspPolicy

    runtime = SiteRuntime(engine, dataplane=factory, esp=EspPolicy(), pinned_routes=[...],
                          on_event=hook)          # factory(on_ike, on_event) -> DataplaneBackend,
                                                  # or None for IKE only
    await runtime.open("0.0.0.0")                 # data plane (UDP 4500, TUN), then UDP 500
    runtime.start()                               # initiate the configured peers
    await runtime.run(stop, on_tick=write_status) # until stop; SiteFailed if the data plane fails
    runtime.snapshot()                            # the status document (status.py)
    await runtime.set_policy(view)                # enforce a PolicyView (None: no filter); later
                                                  # views keep the flows they still allow
    await runtime.set_filter(policy_filter)       # or a packet filter hook of your own

The sans-IO part, ``TunnelTable`` (tunnels.py), decides what the data plane and the engine must
do about each event; ``SiteRuntime`` (runtime.py) only carries it out.
"""

from trellis.agent.site.runtime import DataplaneFactory, SiteFailed, SiteRuntime
from trellis.agent.site.tunnels import EspPolicy, TunnelTable

__all__ = ["DataplaneFactory", "EspPolicy", "SiteFailed", "SiteRuntime", "TunnelTable"]
