"""The training split as a stream: memory is bounded by the shuffle window, not by the dataset.

Each epoch puts the row groups in a seeded order (the same on every rank) and, conceptually
concatenated, they form one sequence of training rows. Rank r takes the contiguous rows
[r*q, (r+1)*q) with q = rows // world_size: every rank runs the same number of steps (DDP hangs
on unequal counts), at most world_size-1 rows sit out an epoch, and a rank reads only the row
groups its range overlaps. The rank's batches are cut into contiguous shares, one per DataLoader
worker, so no row is read twice. A share is shuffled one window of ``shuffle_rows`` at a time
(a block shuffle, seeded by seed, epoch, rank, worker and window): memory holds one window plus
the row group being read, and a resumed epoch skips whole windows without reading them. A window
mixes only the row groups it spans (ingest writes up to 2048 rows of one source batch per group);
each optimizer step averages world_size x workers windows. Keep ``shuffle_rows`` at several row
groups; on the bundled sample it covers a rank's whole epoch, so the shuffle is global there.

The DataLoader takes one batch from each of its W workers in turn, so loader batch k is batch
k // W of share k % W (shares differ by at most one batch, the larger ones first). That is how
``set_epoch(epoch, skip_batches)`` tells each share which of its batches were already done; the
loader's workers then take the shares rotated by skip_batches, so the next batch comes first.

Images stay in their stored form (snapshot pixels, or PNG/JPEG bytes) in the window; each batch
is decoded and augmented (``Augment``: seeded by the batch's place in the rank's epoch, so a
resumed run draws the same) by the worker that yields it, each image written once, straight into
a batch slot the training loop reads in place (ring.py): with loader workers, decoding runs in
parallel and memory holds a window of encoded bytes, not of pixels.

Validation (early stopping): rows whose id falls in the validation carve never enter the
stream. A seeded uniform sample of at most VALIDATION_ROWS of them is held in memory once.
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import functools
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from components._shared.dataset import (
    ID,
    IMAGE,
    LABEL,
    bucket_cut,
    check_image_shape,
    decode_encoded,
    decode_images,
    decode_into,
    stable_buckets,
    stored_images,
)
from components._shared.errors import DataValidationError
from components._shared.snapshot import Split, SplitFile, split_from_table
from components._shared.store import Store
from components.train.config import SHUFFLE_ROWS
from components.train.ring import FORK, BatchRing, ring_batches

VALIDATION_ROWS = 10_000  # at most this many carved rows are kept for validation (a uniform sample)
VALIDATION_SEED = 0  # the validation sample does not change with the training seed
AUGMENT_STREAM = 0xA06  # keeps the augmentation draws apart from the shuffle's


@dataclasses.dataclass(frozen=True)
class Augment:
    """Per-image random augmentation: the CIFAR recipe (He et al. 2016; torchvision's
    RandomCrop(size, padding) then RandomHorizontalFlip): shift by up to ``crop_pad`` pixels each way
    with zero fill, i.e. pad and crop back to the same size, then mirror left-right with probability
    1/2. Both off by default: digits and text are not mirror-symmetric."""

    flip: bool = False
    crop_pad: int = 0

    @property
    def active(self) -> bool:
        return self.flip or self.crop_pad > 0

    def draw(self, n: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """Each image's shift (dy, dx) and whether it is mirrored (``rng`` may be None when inactive)."""
        pad = self.crop_pad
        shifts = rng.integers(-pad, pad + 1, size=(n, 2)) if pad else np.zeros((n, 2), np.int64)
        return shifts, rng.random(n) < 0.5 if self.flip else np.zeros(n, bool)

    def __call__(
        self, stored: np.ndarray, rng: np.random.Generator | None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows of ``stored_images`` as an augmented uint8 (N, H, W, C) batch, in ``out`` if given."""
        if out is None:
            shape = decode_encoded(stored[0]).shape if stored.dtype == object else stored.shape[1:]
            out = np.empty((len(stored), *shape), np.uint8)
        return fill_batch(stored, out, *self.draw(len(stored), rng))


def fill_batch(stored: np.ndarray, out: np.ndarray, shifts: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Rows of ``stored_images`` as one uint8 (N, H, W, C) batch in ``out``: image i moved by
    shifts[i] = (dy, dx) (out[y, x] = image[y + dy, x + dx], zero outside: torchvision's pad-and-crop),
    then mirrored where flips[i]. Each image is decoded (or copied) straight into the batch and moved
    there. Raises ValueError on an undecodable image or one of another shape than the batch's."""
    if not out.flags.c_contiguous:
        raise ValueError("the batch must be one C-contiguous buffer: images are moved in it as flat bytes")
    for i, (dy, dx) in enumerate(shifts.tolist()):
        if stored.dtype == object:
            decode_into(stored[i], out[i])
        else:
            check_image_shape(stored[i].shape, out.shape[1:])
            out[i] = stored[i]
        _shift(out[i], dy, dx)
        if flips[i]:
            _mirror(out[i])
    return out


def _shift(image: np.ndarray, dy: int, dx: int) -> None:
    """image[y, x] = image[y + dy, x + dx] in place, zero where that falls outside the image. In the
    flat buffer that is one move by (dy * W + dx) pixels (a memmove, ~5% of a 224x224 decode; numpy
    would copy through a temporary): the pixels it wraps from a neighbouring row into a border
    column are the ones zeroed with the border."""
    h, w, c = image.shape
    if not (dy or dx):
        return
    if abs(dy) >= h or abs(dx) >= w:  # moved out entirely
        image[...] = 0
        return
    offset, size, base = (dy * w + dx) * c, image.nbytes, image.ctypes.data
    if offset > 0:
        ctypes.memmove(base, base + offset, size - offset)
    elif offset < 0:
        ctypes.memmove(base - offset, base, size + offset)
    image[h - max(dy, 0) :] = 0
    image[: max(-dy, 0)] = 0
    image[:, w - max(dx, 0) :] = 0
    image[:, : max(-dx, 0)] = 0


def _mirror(image: np.ndarray) -> None:
    """Mirrors an (H, W, C) image left-right in place. torch's flip kernel moves whole pixels: 6x
    faster than numpy's reversed copy of 3-byte pixels and 2x faster than Pillow's transpose."""
    pixels = torch.from_numpy(image)
    pixels.copy_(pixels.flip(1))


def _as_is(batch):
    return batch


def batch_loader(stream: TrainStream, workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The stream's batches of its current epoch, made by ``workers`` DataLoader processes (0: in the
    caller). Workers hand batches over through a BatchRing (ring.py): a batch is valid until the next
    one is taken. They live across epochs (a fork of the training process and a cold start of its
    allocators cost ~0.1 s an epoch); an epoch left half-read stops them."""
    if not workers:
        batch = np.empty((stream.batch_size, *stream.image_shape), np.uint8)  # reused: fresh pages cost a fault each
        yield from stream.worker_batches(0, 1, out=lambda n: batch[:n])
        return
    loader = stream.worker_loader(workers)
    loader.ring.plan[:] = stream.epoch, stream.skip_batches  # read by each worker as it starts the epoch
    loader.reading, held = True, None
    try:
        for worker, slot, labels in loader.loader:
            if held is not None:
                loader.ring.give_back(held)
            held = worker
            yield loader.ring.images(worker, slot, len(labels)), labels
        if held is not None:
            loader.ring.give_back(held)  # every slot free for the next epoch
        loader.reading = False
    finally:
        if loader.reading:  # left half-read (or failed): its slots are not all free
            stream.stop_workers(loader)


@dataclasses.dataclass
class _WorkerLoader:
    """A DataLoader with persistent workers writing into a BatchRing; ``reading`` while an epoch is
    being read."""

    ring: BatchRing
    loader: DataLoader
    reading: bool = False


class _RingFed(IterableDataset):
    """A TrainStream whose DataLoader workers write their batches into a BatchRing."""

    def __init__(self, stream: TrainStream, ring: BatchRing):
        self.stream, self.ring = stream, ring

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        self.stream.set_epoch(*self.ring.plan.tolist())
        worker = get_worker_info()
        share, shares = self.stream.loader_share(worker)
        batches = self.stream.worker_batches(share, shares, out=self.ring.slot_for(worker.id))
        return ring_batches(self.ring, worker.id, batches)


def validation_mask(ids: list[str], fraction: float) -> np.ndarray:
    """True where an id is in the validation carve: a stable hash of the id, salted so it is
    independent of the test split, so an example never moves between training and validation."""
    return stable_buckets(ids, salt="validation:") < bucket_cut(fraction)


def worker_share(batches: int, worker: int, workers: int) -> range:
    """The batches of the rank's epoch that ``worker`` produces: contiguous, larger shares first."""
    base, extra = divmod(batches, workers)
    first = worker * base + min(worker, extra)
    return range(first, first + base + (worker < extra))


def skipped_in_share(skip_batches: int, worker: int, workers: int) -> int:
    """How many of the first ``skip_batches`` loader batches came from ``worker`` (round robin)."""
    return max(0, -(-(skip_batches - worker) // workers))


class TrainStream:
    """This rank's training batches as (images uint8 (N, H, W, C), labels int64) numpy arrays, read
    through ``batch_loader``.

    Reads the split's footer (and, with a validation carve, its id column) when built; the
    caller verifies the split's checksum first (snapshot.verify_split)."""

    def __init__(
        self,
        store: Store,
        fingerprint: str,
        *,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        val_fraction: float = 0.0,
        shuffle_rows: int = SHUFFLE_ROWS,
        augment: Augment = Augment(),
    ):
        self.store, self.fingerprint, self.seed, self.augment = store, fingerprint, seed, augment
        self.batch_size, self.world_size, self.rank, self.val_fraction = batch_size, world_size, rank, val_fraction
        self.window_rows = max(1, shuffle_rows // batch_size) * batch_size  # whole batches: none spans two
        with SplitFile(store, fingerprint, "train") as split:
            self.validation: Split | None = None
            self.group_rows = list(split.group_rows)
            if val_fraction:
                carved = split.count(self._in_validation, [ID])
                self.validation = split_from_table(
                    split.sample_table(VALIDATION_ROWS, VALIDATION_SEED, keep=self._in_validation, counts=carved)
                )
                self.group_rows = [rows - c for rows, c in zip(self.group_rows, carved, strict=True)]
        self.rows = sum(self.group_rows)
        self.rank_rows = self.rows // world_size
        if self.rank_rows == 0:
            raise DataValidationError(
                f"{self.rows} training row(s) cannot give each of {world_size} ranks a row",
                hint="add data or train on fewer ranks",
            )
        self.epoch, self.skip_batches = 0, 0
        self._loader: _WorkerLoader | None = None

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.rank_rows // self.batch_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """The next iteration yields ``epoch``'s batches after its first ``skip_batches`` (resume)."""
        self.epoch, self.skip_batches = epoch, skip_batches

    @functools.cached_property
    def image_shape(self) -> tuple[int, ...]:
        """(H, W, C) of the split's images (ingest gives a snapshot one shape), from its first row."""
        with SplitFile(self.store, self.fingerprint, "train") as split:
            group = next(g for g, rows in enumerate(split.group_rows) if rows)
            return decode_images(split.read_group(group, [IMAGE]).slice(0, 1)).shape[1:]

    def worker_loader(self, workers: int) -> _WorkerLoader:
        """The loader of ``workers`` persistent workers, made on first use and kept across epochs; made
        afresh if the count changed or the last epoch was left half-read (its slots are not free)."""
        loader = self._loader
        if loader is None or loader.ring.workers != workers or loader.reading:
            self.stop_workers()
            ring = BatchRing(workers, (self.batch_size, *self.image_shape))
            fed = copy.copy(self)  # without this loader: no cycle, so dropping it stops the workers at once
            fed._loader = None
            data = DataLoader(
                _RingFed(fed, ring),
                batch_size=None,
                num_workers=workers,
                collate_fn=_as_is,
                multiprocessing_context=FORK,
                persistent_workers=True,
            )
            self._loader = loader = _WorkerLoader(ring, data)
        return loader

    def stop_workers(self, loader: _WorkerLoader | None = None) -> None:
        """Lets go of the persistent loader (``loader``, if given and still this stream's): its
        workers are shut down once nothing reads from it."""
        loader = loader or self._loader
        if loader is not None:
            loader.ring.unblock()  # a worker waiting for a slot sees the shutdown at once
        if loader is self._loader:
            self._loader = None

    def loader_share(self, worker) -> tuple[int, int]:
        """(share, shares): which of the epoch's shares a DataLoader worker (``get_worker_info()``) makes.
        The DataLoader asks its worker 0 first: after a resume, that is the share the next batch is in."""
        return (worker.id + self.skip_batches) % worker.num_workers, worker.num_workers

    def worker_batches(
        self, worker: int, workers: int, out: Callable[[int], np.ndarray] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One share's batches of the current epoch, in order (rows are rank-relative); each batch of n
        images is written into ``out(n)`` (by default a new array)."""
        out = out or (lambda n: np.empty((n, *self.image_shape), np.uint8))
        share = worker_share(self.batches_per_epoch, worker, workers)
        low, high = share.start * self.batch_size, min(share.stop * self.batch_size, self.rank_rows)
        resume_at = low + skipped_in_share(self.skip_batches, worker, workers) * self.batch_size
        with SplitFile(self.store, self.fingerprint, "train") as split:
            rows = _EpochRows(
                split, self._group_order(), self.group_rows, self._is_training if self.val_fraction else None
            )
            offset = self.rank * self.rank_rows
            for start in range(low, high, self.window_rows):
                stop = min(start + self.window_rows, high)
                if stop > resume_at:  # windows done before a restart are not even read
                    rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, workers, start])
                    window = rows.read(offset + start, offset + stop)
                    yield from self._shuffled(window, rng, start, max(resume_at - start, 0), out)

    def _shuffled(
        self, window: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, start: int, skip_rows: int, out
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """A window's rows in batches, in a seeded order, after the first ``skip_rows``; ``start`` is
        the window's first row in the rank's epoch. The window is released when this returns, before
        the next one is read."""
        stored, labels = window
        order = rng.permutation(len(labels))
        for first in range(skip_rows, len(order), self.batch_size):
            take = order[first : first + self.batch_size]
            yield self.augment(stored[take], self._draws(start + first), out(len(take))), labels[take]

    def _draws(self, row: int) -> np.random.Generator | None:
        """The augmentation's random source for the batch starting at the rank's epoch row ``row``:
        the same draw however the epoch is split or resumed (None when there is nothing to draw)."""
        if not self.augment.active:
            return None
        return np.random.default_rng([AUGMENT_STREAM, self.seed, self.epoch, self.rank, row // self.batch_size])

    def sample_images(self, size: int, seed: int) -> np.ndarray:
        """A seeded uniform sample of up to ``size`` training rows' images (validation rows
        excluded), in file order; only the row groups that hold a picked row are read."""
        with SplitFile(self.store, self.fingerprint, "train") as split:
            keep = self._is_training if self.val_fraction else None
            return decode_images(split.sample_table(size, seed, keep=keep, counts=self.group_rows))

    def _group_order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.group_rows))

    def _in_validation(self, table: pa.Table) -> np.ndarray:
        return validation_mask(table.column(ID).to_pylist(), self.val_fraction)

    def _is_training(self, table: pa.Table) -> np.ndarray:
        return ~self._in_validation(table)


class _EpochRows:
    """An epoch's training rows as one sequence: the row groups in the epoch's order, concatenated,
    images in their stored form. Holds the last row group read, since consecutive windows usually
    share one."""

    def __init__(self, split: SplitFile, order: np.ndarray, group_rows: list[int], keep):
        self.split, self.order, self.keep = split, order, keep
        self.starts = np.cumsum([0, *np.asarray(group_rows, dtype=np.int64)[order]])
        self.cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def read(self, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [low, high) of the sequence, copied out of the row groups they lie in."""
        position = int(np.searchsorted(self.starts, low, side="right")) - 1
        images, labels = [], []
        while position < len(self.order) and self.starts[position] < high:
            group_images, group_labels = self._group(int(self.order[position]))
            first, last = max(low - self.starts[position], 0), min(high - self.starts[position], len(group_labels))
            images.append(group_images[first:last])
            labels.append(group_labels[first:last])
            position += 1
        return np.concatenate(images), np.concatenate(labels)

    def _group(self, group: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cached is None or self.cached[0] != group:
            self.cached = None  # let the previous group go before reading the next
            table = self.split.read_group(group, [ID, IMAGE, LABEL] if self.keep else [IMAGE, LABEL])
            if self.keep:
                table = table.filter(pa.array(self.keep(table)))
            self.cached = (group, stored_images(table), table.column(LABEL).to_numpy().astype(np.int64))
        return self.cached[1], self.cached[2]
