"""The keys a shard has accepted, so a record sent twice is queued once.

A keyed record is (source id, sequence number). A restarted source sends again from its first
sequence number not yet accepted, and an inference actor that died after its Result was
accepted but before it acknowledged the batch leaves the batch to be inferred again: both
make copies of a key that was already accepted. Keys of one source are dense, so a bit per
sequence number (a growing bytearray per source) remembers a whole run in little memory:
a million batches cost 125 kB.
"""

from __future__ import annotations

from typing import Any


class SeenKeys:
    def __init__(self) -> None:
        self._bits: dict[Any, bytearray] = {}

    def __contains__(self, key: tuple[Any, int]) -> bool:
        source, seq = key
        bits = self._bits.get(source)
        byte, bit = divmod(int(seq), 8)
        return bits is not None and byte < len(bits) and bool(bits[byte] >> bit & 1)

    def add(self, key: tuple[Any, int]) -> None:
        source, seq = key
        if seq < 0:
            raise ValueError(f"key {key!r}: sequence numbers start at 0")
        bits = self._bits.setdefault(source, bytearray())
        byte, bit = divmod(int(seq), 8)
        if byte >= len(bits):
            bits.extend(bytes(max(byte + 1 - len(bits), len(bits))))  # grow geometrically
        bits[byte] |= 1 << bit

    def highest(self, source: Any) -> int:
        """The highest sequence number accepted from `source`, -1 if none."""
        bits = self._bits.get(source, b"")
        for byte in range(len(bits) - 1, -1, -1):
            if bits[byte]:
                return byte * 8 + bits[byte].bit_length() - 1
        return -1

    def first_missing(self, source: Any, step: int = 1, start: int = 0) -> int:
        """The smallest sequence number >= start, in steps of `step`, not accepted."""
        seq = start
        while (source, seq) in self:
            seq += step
        return seq
