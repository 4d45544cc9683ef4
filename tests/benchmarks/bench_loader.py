"""The training input pipeline at realistic image sizes: JPEG bytes in the snapshot, read, decoded,
augmented (flip + pad-and-crop) and batched by TrainStream through its DataLoader, against a
bare PIL decode loop over the same bytes, side by side in one run.

Goals: one loader worker delivers >= 90% of the bare loop's images/s (the loader adds little to
the decode it cannot avoid), and 2 workers deliver more than 1 (decoding parallelises). On a
shared machine wall-clock rates swing with other processes' load, so the per-worker goal is
judged on CPU seconds per image (this process plus its joined workers, starting them included),
which load does not move; the wall-clock rates are printed beside it. The loader decodes JPEGs
with simplejpeg (the same libjpeg-turbo decode as Pillow's, same pixels, without Pillow's Python
marker parsing), so a bare simplejpeg loop is printed too: the loader's own overhead is the gap
to that one. Rows with raw pixels (what ingest writes to snapshots today) show what the loader
costs without a decode. Each figure is the best of REPEATS passes, taken in turn (other processes
only slow a pass down). Rates are steady state, after an epoch's first batch; the seconds to that
first batch (starting the workers: training makes a DataLoader per epoch) are printed apart, and
the bundled digits' epoch shows what they cost a small dataset.
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

from components._shared.store import LocalStore
from components.train.stream import Augment, TrainStream, batch_loader
from tests.helpers import write_encoded_split
from tests.shapes import shape_jpegs

GOAL_PER_WORKER = 0.90  # loader with 1 worker / bare PIL decode loop
SIZES = ((64, 4000), (224, 2400))  # (side, images): an epoch of a small dataset, as training makes one per epoch
BATCH = 32  # per rank: the default global batch of 64 on 2 ranks
REPEATS = 3


def cpu_seconds() -> float:
    """CPU time of this process, of its finished children and of its live ones (the loader's
    workers live across epochs): what the work cost, whatever else the machine runs."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime + sum(map(_run_seconds, _live_children()))


def _live_children() -> list[int]:
    return [p.pid for p in multiprocessing.active_children()]


def _run_seconds(pid: int) -> float:
    """CPU seconds of a live process, all its threads (schedstat: nanoseconds on a CPU)."""
    tasks = Path(f"/proc/{pid}/task")
    try:
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks.iterdir()) / 1e9
    except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile; RUSAGE_CHILDREN has it once reaped
        return 0.0


def bare_decode(blobs: list[bytes]) -> tuple[float, float, float]:
    """The least any loader must do: decode each JPEG into an array. (images/s, 0, CPU s/image)."""
    started, cpu = time.perf_counter(), cpu_seconds()
    for data in blobs:
        np.asarray(Image.open(io.BytesIO(data)))
    return len(blobs) / (time.perf_counter() - started), 0.0, (cpu_seconds() - cpu) / len(blobs)


def bare_simplejpeg(blobs: list[bytes]) -> tuple[float, float, float]:
    """The loader's own decoder in a bare loop: what it costs without reading, augmenting, batching."""
    started, cpu = time.perf_counter(), cpu_seconds()
    for data in blobs:
        simplejpeg.decode_jpeg(data)
    return len(blobs) / (time.perf_counter() - started), 0.0, (cpu_seconds() - cpu) / len(blobs)


def loader(stream: TrainStream, workers: int) -> tuple[float, float, float]:
    """One epoch through a DataLoader with ``workers`` worker processes: images/s once the first
    batch is in (steady state), seconds to the first batch (reading the first window; in the
    stream's first epoch also starting the workers), and CPU seconds per image of all its processes."""
    started, cpu, seen, first = time.perf_counter(), cpu_seconds(), 0, None
    for _, labels in batch_loader(stream, workers):
        if first is None:
            first = time.perf_counter()
        else:
            seen += len(labels)
    rate = seen / (time.perf_counter() - first)
    return rate, first - started, (cpu_seconds() - cpu) / stream.rows


def interleaved(measures: dict) -> tuple[dict, dict]:
    """Each measure's best of REPEATS passes, the passes taken in turn (A B C, A B C, ...) so that
    load from other processes falls on all of them alike: the highest rate, the shortest start,
    the least CPU per image; and each measure's first pass (a loader's first epoch forks its workers)."""
    runs = {name: [] for name in measures}
    for _ in range(REPEATS):
        for name, measure in measures.items():
            runs[name].append(measure())
    best = {name: tuple(f(r[i] for r in found) for i, f in enumerate((max, min, min))) for name, found in runs.items()}
    return best, {name: found[0] for name, found in runs.items()}


def streams(store: LocalStore, name: str, augment: Augment | None = None) -> dict[int, TrainStream]:
    """One stream per loader worker count: each keeps its workers across its epochs, as training does."""
    return {w: TrainStream(store, name, batch_size=BATCH, augment=augment or Augment()) for w in (0, 1, 2)}


def raw_split(store: LocalStore, name: str, blobs: list[bytes], labels: np.ndarray) -> None:
    """The same images as raw pixels (the snapshot's pixel column, as ingest writes it)."""
    import pyarrow as pa

    from components._shared.dataset import BATCH as BATCH_COLUMN
    from components._shared.dataset import ID, LABEL, pixels_to_array
    from components._shared.snapshot import SplitWriter, split_key

    images = np.stack([np.asarray(Image.open(io.BytesIO(b))) for b in blobs])
    pixels, field = pixels_to_array(images)
    schema = pa.schema(
        [pa.field(ID, pa.string()), pa.field(BATCH_COLUMN, pa.string()), field, pa.field(LABEL, pa.int64())]
    )
    writer = SplitWriter(store, split_key(name, "train"), schema)
    for first in range(0, len(blobs), 2048):
        rows = slice(first, first + 2048)
        ids = [f"img-{i}" for i in range(len(blobs))][rows]
        columns = [pa.array(ids), pa.array(["0000"] * len(ids)), pixels[rows], pa.array(labels[rows], pa.int64())]
        writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    writer.close()


def digits_epochs(store: LocalStore) -> None:
    """The bundled sample (raw 8x8 pixels, ~1,200 training rows): an epoch is so short that
    starting the workers is most of it. What a default of workers costs the demo."""
    from components._shared.sampledata import SeedConfig, seed_digits
    from components.ingest.config import IngestConfig
    from components.ingest.core import ingest

    seed_digits(store, SeedConfig())
    digits = streams(store, ingest(store, IngestConfig()).fingerprint)
    rows = digits[0].rows
    best, first = interleaved({w: functools.partial(loader, stream, w) for w, stream in digits.items()})
    print(
        f"bundled digits, one epoch of {rows} rows (the first one): "
        + ", ".join(
            f"{w} workers {start + rows / rate:.2f} s ({first[w][1] + rows / first[w][0]:.2f} s)"
            for w, (rate, start, _) in best.items()
        )
    )


def run() -> None:
    print(
        f"images/s in steady state (after the first batch) and CPU per image, best of {REPEATS} in turn; "
        f"batch {BATCH}, flip + crop_pad side/8. Goal: the loader's CPU per image within 1/{GOAL_PER_WORKER} of "
        "bare PIL's (a worker then delivers >= 90% of a bare decode loop on its core)"
    )
    print(
        f"{'images':>13} {'bare PIL':>9} {'bare sj':>8} {'0 workers':>10} {'1 worker':>9}"
        f" {'2 workers':>10} {'2w/1w':>6} {'raw 0w':>7} {'raw 1w':>7} {'raw 2w':>7}"
        f" {'start 1w':>9} {'cold':>8} {'bare ms':>8} {'1w ms':>6} {'cold':>6} {'eff':>5}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp))
        for side, count in SIZES:
            blobs, labels = shape_jpegs(count, side, seed=side)
            write_encoded_split(store, f"jpeg{side}", blobs, labels)
            raw_split(store, f"raw{side}", blobs, labels)
            augment = Augment(flip=True, crop_pad=side // 8)
            jpegs, raw = streams(store, f"jpeg{side}", augment), streams(store, f"raw{side}", augment)
            m, first = interleaved(
                {
                    "bare": functools.partial(bare_decode, blobs),
                    "sj": functools.partial(bare_simplejpeg, blobs),
                    **{w: functools.partial(loader, stream, w) for w, stream in jpegs.items()},
                    **{f"raw{w}": functools.partial(loader, stream, w) for w, stream in raw.items()},
                }
            )
            for stream in [*jpegs.values(), *raw.values()]:
                stream.stop_workers()
            efficiency = m["bare"][2] / m[1][2]  # bare CPU per image / 1-worker loader CPU per image
            print(
                f"{count:>5} {side:>3}x{side:<3} {m['bare'][0]:>9.0f} {m['sj'][0]:>8.0f} {m[0][0]:>10.0f}"
                f" {m[1][0]:>9.0f} {m[2][0]:>10.0f} {m[2][0] / m[1][0]:>6.2f} {m['raw0'][0]:>7.0f} {m['raw1'][0]:>7.0f}"
                f" {m['raw2'][0]:>7.0f} {m[1][1]:>8.2f}s {first[1][1]:>7.2f}s {m['bare'][2] * 1000:>8.3f}"
                f" {m[1][2] * 1000:>6.3f} {first[1][2] * 1000:>6.3f} {efficiency:>5.2f}"
                f"  {'met' if efficiency >= GOAL_PER_WORKER else 'NOT met'}"
            )
        digits_epochs(store)
