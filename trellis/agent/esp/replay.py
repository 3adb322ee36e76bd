"""Anti-replay window (RFC 4303 section 3.4.3) with ESN inference (Appendix A).

Two steps per packet, because a forged packet must not move the window: ``check`` before the
ICV is verified (it also infers the high 32 bits of an ESN), ``accept`` after.
The window is a Python int used as a bitmap: bit i set means sequence number ``top - i`` has
been received.
"""

from __future__ import annotations

from trellis.agent.esp.constants import MAX_REPLAY_WINDOW, MIN_REPLAY_WINDOW
from trellis.agent.esp.errors import EspLocalError, ReplayedPacket

_LOW = 1 << 32


class ReplayWindow:
    def __init__(self, size: int, *, esn: bool) -> None:
        if not MIN_REPLAY_WINDOW <= size <= MAX_REPLAY_WINDOW:
            raise EspLocalError(f"replay window {size} outside {MIN_REPLAY_WINDOW}..{MAX_REPLAY_WINDOW}")
        self.size = size
        self.esn = esn
        self.top = 0  # highest authenticated sequence number; 0: nothing received yet
        self._bitmap = 0
        self._mask = (1 << size) - 1

    def infer(self, seq_low: int) -> int:
        """The full sequence number of a packet whose header carries ``seq_low``.

        Without ESN it is ``seq_low``. With ESN, RFC 4303 Appendix A2.2: a value near the
        bottom of the window belongs to the current or the previous 2^32 cycle, anything
        else to the current or the next one.
        """
        if not self.esn:
            return seq_low
        top_low, top_high = self.top & (_LOW - 1), self.top >> 32
        bottom = top_low - self.size + 1
        if bottom >= 0:  # Case A: the window lies within one cycle
            high = top_high if seq_low >= bottom else top_high + 1
        else:  # Case B: the window spans a cycle boundary
            high = top_high - 1 if seq_low >= bottom % _LOW else top_high
        return (high << 32) | seq_low if high >= 0 else -1

    def check(self, seq_low: int) -> int:
        """Return the full sequence number if the packet may be new; raise ReplayedPacket if not."""
        seq = self.infer(seq_low)
        if seq <= 0:
            raise ReplayedPacket("sequence number 0 is never sent")
        if seq > self.top:
            return seq
        offset = self.top - seq
        if offset >= self.size:
            raise ReplayedPacket(f"sequence number {seq} left of the window (top {self.top})")
        if self._bitmap >> offset & 1:
            raise ReplayedPacket(f"sequence number {seq} already received")
        return seq

    def accept(self, seq: int) -> None:
        """Record an authenticated packet (after ``check`` returned ``seq``)."""
        if seq > self.top:
            shift = seq - self.top
            self._bitmap = ((self._bitmap << shift) | 1) & self._mask if shift < self.size else 1
            self.top = seq
        else:
            self._bitmap |= 1 << (self.top - seq)
