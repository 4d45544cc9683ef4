"""Augmentation in the training loader (stream.Augment) and the stream over encoded images.

The recipe is the CIFAR one (He et al. 2016, sec. 4.2: 4-pixel zero padding, a random crop of the
original size, a random horizontal flip), i.e. torchvision's RandomCrop(size, padding) then
RandomHorizontalFlip. Each augmented image is checked against torchvision's functional ops
(pytorch/vision v0.29.1, torchvision/transforms/v2/functional/_geometry.py: pad, crop,
horizontal_flip) for the offsets and flips drawn.
"""

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as tvf

from components._shared.errors import ConfigError
from components.train.config import TrainConfig
from components.train.stream import Augment, TrainStream, batch_loader, fill_batch
from tests.helpers import encode_images, train_in_process, write_encoded_split
from tests.unit.test_train_stream import numbered_snapshot, numbers, peak_bytes

N, SIDE = 64, 16


def gradient() -> np.ndarray:
    """N images whose every pixel differs from its mirror and its neighbours, none zero."""
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    images = np.empty((N, SIDE, SIDE, 3), np.uint8)
    images[..., 0], images[..., 1] = x * 16 + 1, y * 16 + 1
    images[..., 2] = np.arange(N)[:, None, None] + 1
    return images


def chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def test_flip_mirrors_about_half_of_the_images_left_right_and_leaves_the_rest():
    images = gradient()
    out = Augment(flip=True)(images.copy(), np.random.default_rng(0))
    flipped = [not np.array_equal(o, i) for o, i in zip(out, images, strict=True)]
    assert 16 < sum(flipped) < 48
    for o, i, f in zip(out, images, flipped, strict=True):
        assert torch.equal(chw(o), tvf.horizontal_flip(chw(i)) if f else chw(i))


@pytest.mark.parametrize("pad", [1, 3])
def test_crop_is_torchvisions_zero_pad_then_crop_at_the_drawn_offset(pad):
    images = gradient()
    out = Augment(crop_pad=pad)(images.copy(), np.random.default_rng(1))
    shifts = np.random.default_rng(1).integers(-pad, pad + 1, size=(N, 2))  # the draws Augment made
    assert out.shape == images.shape and out.dtype == np.uint8
    assert len({tuple(s) for s in shifts.tolist()}) > 1 and (shifts != 0).any()
    for o, i, (dy, dx) in zip(out, images, shifts.tolist(), strict=True):
        padded = tvf.pad(chw(i), [pad], fill=0)
        assert torch.equal(chw(o), tvf.crop(padded, pad + dy, pad + dx, SIDE, SIDE))


def test_every_shift_of_an_image_is_torchvisions_pad_and_crop_even_past_its_edges():
    """Each (dy, dx) with |dy| <= H and |dx| <= W, on a non-square image: the in-place move of the
    flat buffer must zero exactly the pixels that wrapped across a row."""
    image = gradient()[0, :5, :7]
    batch = np.empty((1, *image.shape), np.uint8)
    for dy in range(-5, 6):
        for dx in range(-7, 8):
            fill_batch(image[None], batch, np.array([[dy, dx]]), np.zeros(1, bool))
            padded = tvf.pad(chw(image), [7], fill=0)
            assert torch.equal(chw(batch[0]), tvf.crop(padded, 7 + dy, 7 + dx, 5, 7)), (dy, dx)


def test_augmentation_is_seeded_and_off_is_the_identity():
    images, both = gradient(), Augment(flip=True, crop_pad=2)
    first = both(images.copy(), np.random.default_rng(7))
    assert np.array_equal(first, both(images.copy(), np.random.default_rng(7)))
    assert not np.array_equal(first, both(images.copy(), np.random.default_rng(8)))
    assert first.shape == images.shape and not np.array_equal(first, images)
    off = Augment()
    assert not off.active and np.array_equal(off(images.copy(), np.random.default_rng(7)), images)


@pytest.mark.parametrize("channels", [3, 1])
def test_encoded_images_are_augmented_exactly_as_their_pixels(channels):
    """PNG bytes are decoded into the batch, pixels copied into it: the same draws give the same images."""
    images = np.ascontiguousarray(gradient()[..., :channels])
    encoded = np.empty(N, dtype=object)
    encoded[:] = encode_images(images)
    both = Augment(flip=True, crop_pad=3)
    out = both(encoded, np.random.default_rng(5))
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(out, both(images.copy(), np.random.default_rng(5)))
    assert not np.array_equal(out, images)


def batches(stream: TrainStream, workers: int) -> list[np.ndarray]:
    return [images.copy() for images, _ in batch_loader(stream, workers)]  # a batch is valid until the next


@pytest.mark.parametrize("workers", [0, 2])
def test_augmented_batches_repeat_exactly_in_a_resumed_epoch(local_store, workers):
    fingerprint = numbered_snapshot(local_store, batches=3, rows=100)
    plain = TrainStream(local_store, fingerprint, batch_size=16, shuffle_rows=64)
    stream = TrainStream(local_store, fingerprint, batch_size=16, shuffle_rows=64, augment=Augment(True, 2))
    for s in (plain, stream):
        s.set_epoch(2)
    whole, unaugmented = batches(stream, workers), batches(plain, workers)
    assert [b.shape for b in whole] == [b.shape for b in unaugmented]
    assert not all(np.array_equal(a, b) for a, b in zip(whole, unaugmented, strict=True))
    for skip in (1, 7):
        stream.set_epoch(2, skip)
        resumed = batches(stream, workers)
        assert len(resumed) == len(whole) - skip
        assert all(np.array_equal(a, b) for a, b in zip(resumed, whole[skip:], strict=True))
    stream.set_epoch(3)
    assert not all(np.array_equal(a, b) for a, b in zip(batches(stream, workers), whole, strict=True))


def numbered_rgb(rows: int, side: int = 32) -> np.ndarray:
    images = np.zeros((rows, side, side, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = np.arange(rows) % 256, np.arange(rows) // 256
    return images


def test_an_encoded_snapshot_streams_every_row_decoded_once_per_epoch(local_store):
    rows = 300
    labels = np.arange(rows) % 5
    write_encoded_split(local_store, "encoded", encode_images(numbered_rgb(rows)), labels, group_rows=64)
    for workers in (1, 2):
        stream = TrainStream(local_store, "encoded", batch_size=16, shuffle_rows=64)
        seen = []
        for worker in range(workers):
            for images, y in stream.worker_batches(worker, workers):
                assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
                assert y.tolist() == [n % 5 for n in numbers(images)]
                seen += numbers(images)
        assert sorted(seen) == list(range(rows))


def test_an_encoded_window_holds_bytes_and_decodes_one_batch_at_a_time(local_store):
    """Pixels of one row group (what decoding a whole group held) exceed what the stream peaks at."""
    rows, group = 2048, 1024
    write_encoded_split(local_store, "encoded", encode_images(numbered_rgb(rows)), np.zeros(rows), group_rows=group)
    stream = TrainStream(local_store, "encoded", batch_size=16, shuffle_rows=128)
    group_pixels = group * 32 * 32 * 3
    streamed = peak_bytes(lambda: stream.worker_batches(0, 1))
    assert streamed < group_pixels / 4, (streamed, group_pixels)


def test_crop_pad_must_be_non_negative_and_smaller_than_the_images(local_store, tmp_path):
    with pytest.raises(ConfigError, match="crop_pad"):
        TrainConfig(store_uri="x", fingerprint="f", out_dir="o", crop_pad=-1)
    fingerprint = numbered_snapshot(local_store, batches=1, rows=50)  # 8x8 images
    with pytest.raises(ConfigError, match="crop_pad 8 is not smaller than the images' side") as err:
        train_in_process(local_store, fingerprint, tmp_path / "out", crop_pad=8)
    assert err.value.hint and not (tmp_path / "out").exists()
