"""Outbound SA lookup: longest prefix of the destination, then the full traffic selectors.

Each outbound SA is indexed under the prefixes that cover its remote selectors. A packet's
destination is looked up from the longest prefix to the shortest; at each length the candidate
SAs are checked against the whole flow (source in the local selectors, protocol, ports). Among
SAs with the same prefix the newest wins, so that a rekeyed SA takes over as soon as it is
installed (make before break) while the old one drains.

A flow cache keyed by the raw header bytes avoids parsing on the fast path; any change to the
table clears it.
"""

from __future__ import annotations

from collections.abc import Iterator

from trellis.agent.esp.sa import OutboundSa
from trellis.agent.esp.selectors import Flow, fast_flow_key, parse_flow
from trellis.agent.esp.transforms import Buffer

FLOW_CACHE_LIMIT = 8192
_ADDRESS_BITS = {4: 32, 6: 128}


class OutboundTable:
    def __init__(self) -> None:
        # version -> prefix length -> network (as int) -> SAs, newest first
        self._prefixes: dict[int, dict[int, dict[int, list[OutboundSa]]]] = {4: {}, 6: {}}
        self._lengths: dict[int, list[int]] = {4: [], 6: []}
        self._sas: dict[int, OutboundSa] = {}
        self._flow_cache: dict[Flow, OutboundSa | None] = {}
        self._fast_cache: dict[bytes, OutboundSa | None] = {}

    def __iter__(self) -> Iterator[OutboundSa]:
        return iter(list(self._sas.values()))

    def __len__(self) -> int:
        return len(self._sas)

    def get(self, spi: int) -> OutboundSa | None:
        return self._sas.get(spi)

    def add(self, sa: OutboundSa) -> None:
        if sa.spi in self._sas:
            self.remove(sa.spi)
        self._sas[sa.spi] = sa
        for ts in sa.params.remote_ts:
            for net in ts.networks():
                by_network = self._prefixes[net.version].setdefault(net.prefixlen, {})
                sas = by_network.setdefault(int(net.network_address), [])
                if sa not in sas:
                    sas.insert(0, sa)
        self._reindex()

    def remove(self, spi: int) -> OutboundSa | None:
        sa = self._sas.pop(spi, None)
        if sa is None:
            return None
        for by_length in self._prefixes.values():
            for by_network in by_length.values():
                for network, sas in list(by_network.items()):
                    if sa in sas:
                        sas.remove(sa)
                    if not sas:
                        del by_network[network]
            for length in [length for length, nets in by_length.items() if not nets]:
                del by_length[length]
        self._reindex()
        return sa

    def _reindex(self) -> None:
        for version, by_length in self._prefixes.items():
            self._lengths[version] = sorted(by_length, reverse=True)
        self._flow_cache.clear()
        self._fast_cache.clear()

    def lookup_packet(self, packet: Buffer) -> OutboundSa | None:
        """The SA for an inner packet; None if no SA covers it. Raises EspPeerError
        (MalformedPacket) if it is no IP packet."""
        key = fast_flow_key(packet)
        if key is not None:
            try:
                return self._fast_cache[key]
            except KeyError:
                pass
        sa = self.lookup(parse_flow(packet))
        if key is not None:
            if len(self._fast_cache) >= FLOW_CACHE_LIMIT:
                self._fast_cache.clear()
            self._fast_cache[key] = sa
        return sa

    def lookup(self, flow: Flow) -> OutboundSa | None:
        try:
            return self._flow_cache[flow]
        except KeyError:
            pass
        sa = self._search(flow)
        if len(self._flow_cache) >= FLOW_CACHE_LIMIT:
            self._flow_cache.clear()
        self._flow_cache[flow] = sa
        return sa

    def _search(self, flow: Flow) -> OutboundSa | None:
        bits = _ADDRESS_BITS[flow.version]
        by_length = self._prefixes[flow.version]
        for length in self._lengths[flow.version]:
            network = flow.dst >> (bits - length) << (bits - length) if length else 0
            for sa in by_length[length].get(network, ()):
                if not sa.expired and sa.selectors.covers(flow, outbound=True):
                    return sa
        return None

    def forget_expired(self) -> list[OutboundSa]:
        """Remove SAs past their hard lifetime; return them."""
        dead = [sa for sa in self._sas.values() if sa.expired]
        for sa in dead:
            self.remove(sa.spi)
        return dead
