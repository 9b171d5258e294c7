"""The night's audit sample: a seeded random sample of the items routed without a person (pure).

The review queue holds only doubtful items, so their labels say nothing about what was routed automatically. Each
night also sends a uniform sample of the auto-routed items to people: ``share`` of them, at least ``minimum``, at
most ``maximum`` (all of them on a night with fewer). Their labels estimate the accuracy of what nobody looked at,
without bias (:mod:`monitoring.performance`).

Streaming and seeded: every item gets a uniform draw from a hash of the night's seed and its key, and the sample
is the items with the smallest draws, kept in a heap of ``maximum`` while the night's parts stream past. So the
sample does not depend on the order or the batching of the parts (a resumed night draws the same one), and
memory stays bounded however large the night.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa


@dataclass(frozen=True)
class AuditPolicy:
    share: float = 0.02
    minimum: int = 20
    maximum: int = 200

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"the audit share must be in [0, 1], got {self.share}")
        if self.minimum < 0 or self.maximum < self.minimum:
            raise ValueError(f"need 0 <= minimum <= maximum, got {self.minimum} and {self.maximum}")

    def size(self, auto_routed: int) -> int:
        """How many of ``auto_routed`` items are audited."""
        return min(auto_routed, self.maximum, max(self.minimum, math.ceil(self.share * auto_routed)))


def draw(seed: str, key: str) -> int:
    """The item's place in the night's random order (64 bits of SHA-256 of the seed and the key)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "big")


class AuditSampler:
    """Feed it the night's auto-routed rows part by part (:meth:`add`); :meth:`table` is the sample, in key order."""

    def __init__(self, policy: AuditPolicy, seed: str) -> None:
        self.policy = policy
        self.seed = seed
        self.seen = 0
        self._heap: list[tuple[int, str, dict[str, Any]]] = []  # (-draw, key, row): the largest draw on top

    def add(self, rows: pa.Table) -> None:
        self.seen += rows.num_rows
        if self.policy.maximum == 0:
            return
        keys = rows.column("key").to_pylist()
        for i, key in enumerate(keys):
            d = draw(self.seed, key)
            if len(self._heap) < self.policy.maximum:
                heapq.heappush(self._heap, (-d, key, rows.slice(i, 1).to_pylist()[0]))
            elif -self._heap[0][0] > d:
                heapq.heapreplace(self._heap, (-d, key, rows.slice(i, 1).to_pylist()[0]))

    def table(self, schema: pa.Schema) -> pa.Table:
        n = self.policy.size(self.seen)
        chosen = sorted(self._heap, key=lambda t: (-t[0], t[1]))[:n]
        rows = sorted((row for _, _, row in chosen), key=lambda r: r["key"])
        return pa.Table.from_pylist(rows, schema=schema)
