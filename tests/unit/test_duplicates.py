"""Duplicate ids across a scan in bounded memory (components/ingest/duplicates.py)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from components._shared.dataset import id_hashes
from components.ingest import core as ingest_core
from components.ingest import duplicates
from components.ingest.config import IngestConfig
from components.ingest.core import ingest
from components.ingest.duplicates import DuplicateIds, Repeats
from tests.helpers import digits_table, write_batch


def _scan(found: DuplicateIds, objects: list[list[str]], chunk: int = 7) -> None:
    for obj, ids in enumerate(objects):
        for start in range(0, len(ids), chunk):
            found.add(id_hashes(ids[start : start + chunk]), obj, start)


def _expected(objects: list[list[str]], examples: int) -> dict[int, Repeats]:
    seen, repeats = set(), {}
    for obj, ids in enumerate(objects):
        for row, example_id in enumerate(ids):
            if example_id in seen:
                entry = repeats.setdefault(obj, Repeats())
                entry.count += 1
                entry.rows = entry.rows if len(entry.rows) == examples else entry.rows + [row]
            seen.add(example_id)
    return repeats


@pytest.mark.parametrize("memory_rows", [10**6, 50, 1], ids=["in-memory", "spilled", "spilled-every-add"])
def test_repeats_are_every_later_occurrence_in_scan_order(memory_rows):
    rng = np.random.default_rng(3)
    objects = [[f"id-{n}" for n in rng.integers(0, 300, size)] for size in (120, 0, 200, 90)]
    found = DuplicateIds(memory_rows=memory_rows)
    _scan(found, objects)
    try:
        expected = _expected(objects, examples=4)
        assert found.repeats(examples=4) == expected
        assert sum(r.count for r in expected.values()) > 100 and set(expected) == {0, 2, 3}  # object 1 is empty
    finally:
        found.close()


def test_spill_files_are_removed_on_close():
    found = DuplicateIds(memory_rows=5)
    _scan(found, [[f"a{i}" for i in range(40)]])
    spill_dir = Path(found._spill_dir.name)
    assert found.repeats(examples=5) == {} and any(spill_dir.iterdir())
    found.close()
    assert not spill_dir.exists()


def test_memory_stays_at_the_budget_whatever_the_row_count():
    """Peak traced memory for 200k rows under a 20k-row budget vs 20k rows: the id strings are
    never kept, and entries past the budget go to disk."""

    def peak(rows: int) -> int:
        found = DuplicateIds(memory_rows=20_000)
        hashes = np.random.default_rng(0).integers(0, 2**63, rows, dtype=np.uint64)
        tracemalloc.start()
        for start in range(0, rows, 2048):
            found.add(hashes[start : start + 2048], 0, start)
        found.repeats(examples=5)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        found.close()
        return top

    small, large = peak(20_000), peak(200_000)
    assert large < 1.5 * small, (small, large)


def test_ingest_names_repeats_across_spilled_partitions(local_store, monkeypatch):
    monkeypatch.setattr(duplicates, "MEMORY_ROWS", 16)
    monkeypatch.setattr(ingest_core, "READ_ROWS", 16)
    write_batch(local_store, digits_table(60, prefix="a"), "0000")
    write_batch(local_store, digits_table(30, offset=60, prefix="a"), "0001")  # ids a-0..a-29 again
    write_batch(local_store, digits_table(20, offset=90, prefix="a"), "0002")  # a-0..a-19 a third time
    spills = []
    real_spill = DuplicateIds._spill
    monkeypatch.setattr(DuplicateIds, "_spill", lambda self: spills.append(1) or real_spill(self))
    manifest_findings = {f.code + f.batch: f for f in _findings(local_store)}
    assert manifest_findings["DUPLICATE_ID0001"].count == 30
    assert manifest_findings["DUPLICATE_ID0001"].examples == [f"a-{i}" for i in range(5)]
    assert manifest_findings["DUPLICATE_ID0002"].count == 20
    assert len(spills) > 3  # the check ran on spilled partitions


def _findings(store):
    from components._shared.dataset import Finding
    from components._shared.snapshot import read_manifest

    manifest = read_manifest(store, ingest(store, IngestConfig()).fingerprint)
    return [Finding(**f) for f in manifest["findings"]]
