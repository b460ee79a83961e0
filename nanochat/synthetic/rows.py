"""
Generated rows: a read-only list whose row i is made on demand from its own seeded RNG.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence


class GeneratedRows(Sequence):
    """
    A read-only list of n generated rows; row i comes from its own RNG seeded by (name, i),
    so rows are random-access, identical across processes, and independent of n.
    """

    def __init__(self, name: str, n: int, make_row: Callable[[random.Random, int], dict]) -> None:
        self.name, self.n, self.make_row = name, n, make_row

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"row {i} out of range for {self.n} rows")
        # a str seed is hashed with SHA-512: stable across runs and machines, unlike hash()
        return self.make_row(random.Random(f"{self.name}-{i}"), i)
