"""The loader's shared-memory handover (ring.py): batches arrive whole and in order, a batch the
loop holds is not overwritten while workers run ahead, and no worker outlives its loop."""

import multiprocessing
import os
import time

import numpy as np

from components.train import ring
from components.train.stream import TrainStream, batch_loader
from tests.unit.test_train_stream import numbered_snapshot, numbers


def test_two_workers_deliver_every_row_once_with_its_own_label(local_store):
    stream = TrainStream(local_store, numbered_snapshot(local_store, batches=3, rows=100), batch_size=16)
    rows = []
    for images, labels in batch_loader(stream, 2):
        assert [n % 10 for n in numbers(images)] == labels.tolist()  # numbered_snapshot's label is row % 10
        rows += numbers(images)
    assert sorted(rows) == sorted(n for images, _ in batch_loader(stream, 0) for n in numbers(images))
    assert len(set(rows)) == len(rows) == stream.rows


def test_a_held_batch_stays_as_it_was_while_the_workers_fill_the_other_slots(local_store):
    stream = TrainStream(local_store, numbered_snapshot(local_store, batches=3, rows=100), batch_size=8)
    held = 0
    for images, _ in batch_loader(stream, 1):
        before = images.copy()
        time.sleep(0.02)  # the worker fills every free slot meanwhile
        assert np.array_equal(images, before)
        held += 1
    assert held == stream.batches_per_epoch


def test_a_loop_that_stops_early_leaves_no_worker_behind(local_store):
    stream = TrainStream(local_store, numbered_snapshot(local_store, batches=3, rows=100), batch_size=8)
    batches = batch_loader(stream, 2)
    next(batches)
    time.sleep(0.2)  # both workers block on a full ring
    batches.close()
    assert multiprocessing.active_children() == []


def test_a_worker_waiting_for_a_slot_exits_when_its_loop_is_gone(monkeypatch):
    monkeypatch.setattr(ring, "PARENT_CHECK_SECONDS", 0.05)
    outcome = ring.FORK.SimpleQueue()  # written through at once: the loop ends with os._exit

    def worker(handover: ring.BatchRing) -> None:
        next_slot = handover.slot_for(0)
        for _ in range(ring.SLOTS + 1):  # the last one waits: nobody gives a slot back
            next_slot(1)
        outcome.put("got a slot that was never given back")

    def loop() -> None:  # makes the ring and a worker, then dies without giving anything back
        handover = ring.BatchRing(1, (1, 2, 2, 3))
        child = ring.FORK.Process(target=worker, args=(handover,))
        child.start()
        outcome.put(child.pid)
        os._exit(0)

    parent = ring.FORK.Process(target=loop)
    parent.start()
    parent.join()
    pid = outcome.get()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert outcome.empty()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # an exited child of a dead parent is reaped by init; until then a zombie
        return stat.read().split(")")[1].split()[0] != "Z"


def test_workers_live_across_epochs_and_make_the_epoch_they_are_told(local_store):
    stream = TrainStream(local_store, numbered_snapshot(local_store, batches=3, rows=100), batch_size=16)
    epochs, workers = {}, []
    for epoch in (1, 2, 1):
        stream.set_epoch(epoch)
        epochs.setdefault(epoch, []).append([numbers(images) for images, _ in batch_loader(stream, 2)])
        workers.append(sorted(p.pid for p in multiprocessing.active_children()))
        stream.set_epoch(epoch)
        assert sorted(sum(epochs[epoch][-1], [])) == sorted(n for x, _ in batch_loader(stream, 0) for n in numbers(x))
    assert len(workers[0]) == 2 and workers[0] == workers[1] == workers[2]  # forked once
    assert epochs[1][0] == epochs[1][1] != epochs[2][0]  # each epoch its own seeded order, repeatable
    stream.stop_workers()
    assert multiprocessing.active_children() == []


def test_an_epoch_left_half_read_does_not_hold_up_the_next(local_store):
    stream = TrainStream(local_store, numbered_snapshot(local_store, batches=3, rows=100), batch_size=8)
    abandoned = batch_loader(stream, 2)
    next(abandoned)  # kept, not closed: its workers hold slots the loop never gives back
    old = pids()
    assert sum(len(labels) for _, labels in batch_loader(stream, 2)) == stream.rows
    current = pids() - old
    abandoned.close()  # stops its own workers, not the current ones
    assert pids() == current and len(current) == 2
    assert sum(len(labels) for _, labels in batch_loader(stream, 2)) == stream.rows
    assert pids() == current


def pids() -> set[int]:
    return {p.pid for p in multiprocessing.active_children()}
