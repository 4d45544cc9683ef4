"""Shared-memory slots through which DataLoader workers hand batches to the training loop.

Through a worker's pipe, a batch is pickled, written, read in chunks and unpickled: 22 ms for 32
images of 224x224x3 (0.7 ms an image, more than decoding it), most of it paid by the training
process (docs/benchmarks.md). Instead each worker owns SLOTS batch-sized slots in one shared
anonymous mapping, made before the workers are forked (they inherit it: no copy), and fills them
in turn: it decodes a batch straight into its next slot and sends only the slot's number and the
labels. The loop reads the images where they are. A slot is given back when the loop takes its
next batch, so a batch is valid until then (copy it to keep it). Workers must be forked (FORK),
not spawned: a spawned process would get a pickled copy, not the mapping.

A worker takes a slot only when one is free (a semaphore per worker counts them). The loop reads
each worker's batches in the order it made them and gives back the oldest first, so the slot a
worker fills next is always the one given back longest ago. Two slots suffice to never deadlock;
SLOTS = the DataLoader's prefetch (2 per worker) + the batch in use, so a worker never waits for a
slot while its prefetch has room.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
from collections.abc import Callable, Iterator

import numpy as np

FORK = multiprocessing.get_context("fork")
SLOTS = 3  # per worker: the DataLoader's default prefetch_factor (2) + the batch the loop holds
PARENT_CHECK_SECONDS = 5.0  # a worker waiting for a slot checks this often that the loop still runs


class BatchRing:
    """``workers`` x SLOTS uint8 slots of ``batch_shape`` (batch_size, H, W, C) in shared memory,
    for one DataLoader of ``workers`` forked workers, kept across epochs; and the plan of the epoch
    they make next. Between epochs every slot is free (the loop has given every batch back)."""

    def __init__(self, workers: int, batch_shape: tuple[int, ...]):
        self.workers, self.batch_shape = workers, tuple(batch_shape)
        shape = (workers, SLOTS, *batch_shape)
        self.memory = np.frombuffer(mmap.mmap(-1, int(np.prod(shape))), np.uint8).reshape(shape)  # MAP_SHARED
        self.plan = np.frombuffer(mmap.mmap(-1, 16), np.int64)  # (epoch, skip_batches): what workers make next
        self.free = [FORK.Semaphore(SLOTS) for _ in range(workers)]
        self.taken = [0] * workers  # slots a worker has filled (its own copy of this list, after the fork)
        self.parent = os.getpid()

    def slot_for(self, worker: int) -> Callable[[int], np.ndarray]:
        """In a worker: a function giving the next slot to fill with ``n`` images, once it is free."""

        def next_slot(n: int) -> np.ndarray:
            while not self.free[worker].acquire(timeout=PARENT_CHECK_SECONDS):
                if os.getppid() != self.parent:  # the loop is gone: nobody will give a slot back
                    raise SystemExit(1)
            slot = self.taken[worker] % SLOTS
            self.taken[worker] += 1
            return self.memory[worker, slot, :n]

        return next_slot

    def last_slot(self, worker: int) -> int:
        return (self.taken[worker] - 1) % SLOTS

    def images(self, worker: int, slot: int, n: int) -> np.ndarray:
        """In the loop: the ``n`` images a worker put in ``slot``."""
        return self.memory[worker, slot, :n]

    def give_back(self, worker: int) -> None:
        """In the loop: the oldest slot of ``worker`` in use is free again."""
        self.free[worker].release()

    def unblock(self) -> None:
        """In the loop, when it stops reading mid-epoch and the workers are to go: lets every waiting
        worker through, so it sees the DataLoader's shutdown instead of being killed after its timeout."""
        for free in self.free:
            for _ in range(SLOTS):
                free.release()


def ring_batches(
    ring: BatchRing, worker: int, batches: Iterator[tuple[np.ndarray, np.ndarray]]
) -> Iterator[tuple[int, int, np.ndarray]]:
    """In a worker: ``batches`` made into ``ring.slot_for(worker)``'s slots, as (worker, slot, labels)."""
    for _, labels in batches:
        yield worker, ring.last_slot(worker), labels
