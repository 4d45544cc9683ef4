"""Duplicate example ids across a whole scan, in bounded memory.

A set of id strings costs ~90 bytes per row (5 GB for 60 M rows): it would make the pod size
grow with the dataset. Instead every row adds its 64-bit id hash and where it was read (source
object, row), 16 bytes, and up to ``memory_rows`` of them stay in memory; past that they spill to
the temp dir, one file per top PARTITION_BITS of the hash, and the check loads one partition at a
time. Equal ids have equal hashes (two different ids share one with probability ~n^2 / 2^65: 1e-4
at 60 M rows); the repeats' ids are read back from their objects, so a report names real ids.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MEMORY_ROWS = 4_000_000  # 64 MB of (hash, locator) pairs before spilling to disk
PARTITION_BITS = 8  # 256 partitions: 60 M rows -> ~4 MB per partition at the final check
_ROW_BITS = 32  # locator = object index << 32 | row within the object
_ENTRY = np.dtype([("hash", "<u8"), ("locator", "<u8")])


@dataclasses.dataclass
class Repeats:
    """Rows of one source object whose ids appeared earlier in the scan (the earliest occurrence
    is not a repeat): how many, and the first few rows."""

    count: int = 0
    rows: list[int] = dataclasses.field(default_factory=list)


class DuplicateIds:
    def __init__(self, memory_rows: int | None = None):
        self.memory_rows = memory_rows or MEMORY_ROWS
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._spill_dir: tempfile.TemporaryDirectory | None = None

    def add(self, hashes: np.ndarray, obj: int, first_row: int) -> None:
        """Rows first_row.. of source object ``obj`` (in scan order) have these id hashes."""
        entries = np.empty(len(hashes), _ENTRY)
        entries["hash"] = hashes
        entries["locator"] = (np.uint64(obj) << np.uint64(_ROW_BITS)) + np.arange(
            first_row, first_row + len(hashes), dtype=np.uint64
        )
        self._pending.append(entries)
        self._pending_rows += len(entries)
        if self._pending_rows >= self.memory_rows:
            self._spill()

    def repeats(self, examples: int) -> dict[int, Repeats]:
        """Per source object: its repeats and the first ``examples`` of them, in row order. Memory
        stays at one partition whatever the number of repeats."""
        found: dict[int, Repeats] = {}
        for part in self._parts():
            locators = np.sort(_repeats_in(part))  # by object, then row
            objects, rows = locators >> np.uint64(_ROW_BITS), locators & np.uint64((1 << _ROW_BITS) - 1)
            unique, starts, counts = np.unique(objects, return_index=True, return_counts=True)
            for obj, start, count in zip(unique.tolist(), starts.tolist(), counts.tolist()):
                entry = found.setdefault(obj, Repeats())
                entry.count += count
                entry.rows = sorted(entry.rows + rows[start : start + min(count, examples)].tolist())[:examples]
        return dict(sorted(found.items()))

    def close(self) -> None:
        if self._spill_dir is not None:
            self._spill_dir.cleanup()
            self._spill_dir = None

    def _parts(self) -> Iterator[np.ndarray]:
        if self._spill_dir is None:  # everything fit in memory
            yield np.concatenate(self._pending) if self._pending else np.empty(0, _ENTRY)
            return
        self._spill()
        for path in sorted(Path(self._spill_dir.name).iterdir()):
            yield np.fromfile(path, _ENTRY)

    def _spill(self) -> None:
        if self._spill_dir is None:
            self._spill_dir = tempfile.TemporaryDirectory(prefix="ctp-duplicate-ids-")
        if not self._pending:
            return
        entries = np.concatenate(self._pending)
        self._pending, self._pending_rows = [], 0
        partition = (entries["hash"] >> np.uint64(64 - PARTITION_BITS)).astype(np.int64)
        order = np.argsort(partition, kind="stable")
        bounds = np.searchsorted(partition[order], np.arange((1 << PARTITION_BITS) + 1))
        for part in np.flatnonzero(np.diff(bounds)):
            with open(Path(self._spill_dir.name) / f"{part:03d}.bin", "ab") as handle:
                entries[order[bounds[part] : bounds[part + 1]]].tofile(handle)


def _repeats_in(entries: np.ndarray) -> np.ndarray:
    """Locators of the entries whose hash an earlier (smaller) locator already has."""
    ordered = entries[np.lexsort((entries["locator"], entries["hash"]))]
    again = np.flatnonzero(ordered["hash"][1:] == ordered["hash"][:-1]) + 1
    return ordered["locator"][again]
