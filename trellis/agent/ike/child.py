"""One CHILD SA pair as its IKE SA keeps it: SPIs, keys, selectors, lifetimes and its state."""

from __future__ import annotations

from dataclasses import dataclass

from trellis.agent.ike.config import Address, ChildConfig
from trellis.agent.ike.crypto.keys import ChildSaKeys
from trellis.agent.ike.crypto.suites import EspSuite
from trellis.agent.ike.events import ChildSaParams
from trellis.agent.ike.payloads import TrafficSelector
from trellis.agent.ike.states import CHILD_EDGES, CHILD_INPUTS, ChildInput, ChildState, Machine

ESP_SPI_LENGTH = 4
MIN_ESP_SPI = 256  # SPIs 1..255 are reserved by IANA (RFC 4303 section 2.1)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerRekey:
    """The CHILD SA the peer created by rekeying this one while our own rekey was out
    (RFC 7296 section 2.8.1), with the nonces of its exchange."""

    child: ChildSa
    nonce_i: bytes
    nonce_r: bytes


class ChildSa:
    """A CHILD SA pair. ``initiated_by_us`` tells whose exchange created it, which decides which
    half of the key material protects which direction (RFC 7296 section 2.17)."""

    def __init__(
        self,
        *,
        config: ChildConfig,
        inbound_spi: bytes,
        outbound_spi: bytes,
        suite: EspSuite,
        keys: ChildSaKeys,
        initiated_by_us: bool,
        local_ts: tuple[TrafficSelector, ...],
        remote_ts: tuple[TrafficSelector, ...],
        created_at: float,
        rekey_at: float | None,
        expires_at: float,
    ) -> None:
        self.config = config
        self.inbound_spi = inbound_spi
        self.outbound_spi = outbound_spi
        self.suite = suite
        self.keys = keys
        self.initiated_by_us = initiated_by_us
        self.local_ts = local_ts
        self.remote_ts = remote_ts
        self.created_at = created_at
        self.rekey_at = rekey_at
        self.expires_at = expires_at
        self.machine: Machine[ChildState] = Machine(
            f"CHILD SA {config.name}", ChildState.INSTALLED, CHILD_EDGES
        )
        self.peer_rekey: PeerRekey | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def state(self) -> ChildState:
        return self.machine.state

    def accepts(self, what: ChildInput) -> bool:
        return what in CHILD_INPUTS[self.state]

    def params(self, *, local: Address, remote: Address, udp_encapsulation: bool) -> ChildSaParams:
        inbound_key, inbound_integ = self.keys.inbound(initiator=self.initiated_by_us)
        outbound_key, outbound_integ = self.keys.outbound(initiator=self.initiated_by_us)
        return ChildSaParams(
            name=self.name,
            inbound_spi=self.inbound_spi,
            outbound_spi=self.outbound_spi,
            suite=self.suite,
            inbound_key=inbound_key,
            outbound_key=outbound_key,
            inbound_integrity_key=inbound_integ,
            outbound_integrity_key=outbound_integ,
            local_ts=self.local_ts,
            remote_ts=self.remote_ts,
            local=local,
            remote=remote,
            udp_encapsulation=udp_encapsulation,
            created_at=self.created_at,
            rekey_at=self.rekey_at,
            expires_at=self.expires_at,
        )

    def __repr__(self) -> str:
        return (
            f"ChildSa({self.name}, {self.state.value}, in={self.inbound_spi.hex()}, "
            f"out={self.outbound_spi.hex()}, {self.suite})"
        )
