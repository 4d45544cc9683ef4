"""dataset.decode_into: the training loader's decode, straight into its batch. It must give the
pixels Pillow gives (decode_encoded, which every other reader uses) whichever path it takes:
simplejpeg for JPEGs of the batch's shape, Pillow for the rest."""

import io

import numpy as np
import pytest
from PIL import Image

from components._shared.dataset import decode_encoded, decode_into
from tests.helpers import encode_images


def photos(n: int, side: int, channels: int) -> np.ndarray:
    """Smooth images with some texture: JPEG's DCT and chroma upsampling both have work to do."""
    rng = np.random.default_rng(side + channels)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([np.sin(6 * x + k) * np.cos(4 * y - k) for k in range(channels)], -1)
    return [((base + rng.normal(0, 0.1, base.shape)) * 100 + 128).clip(0, 255).astype(np.uint8) for _ in range(n)]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("side", [17, 64])
def test_a_jpeg_decodes_into_the_target_as_pillow_decodes_it(channels, side):
    for data in encode_images(photos(4, side, channels), "JPEG", quality=85):
        target = np.zeros((side, side, channels), np.uint8)
        returned = decode_into(data, target)
        assert np.shares_memory(returned, target)
        assert np.array_equal(target, decode_encoded(data))


def test_pngs_and_cmyk_jpegs_go_through_pillow_with_the_same_result():
    rgb = photos(1, 24, 3)[0]
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG")
    for data in [*encode_images([rgb]), cmyk.getvalue()]:
        target = np.zeros((24, 24, 3), np.uint8)
        decode_into(data, target)
        assert np.array_equal(target, decode_encoded(data))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_an_image_of_another_shape_than_the_target_is_an_error(fmt):
    data = encode_images(photos(1, 20, 3), fmt)[0]
    for shape in [(21, 20, 3), (20, 20, 1)]:
        with pytest.raises(ValueError, match=r"an image of shape \(20, 20, 3\) among images of shape"):
            decode_into(data, np.zeros(shape, np.uint8))


@pytest.mark.parametrize("data", [b"", b"\xff\xd8 not a jpeg", encode_images(photos(1, 16, 3), "JPEG")[0][:300]])
def test_bytes_that_are_not_a_whole_image_are_an_error(data):
    with pytest.raises((ValueError, OSError)):
        decode_into(data, np.zeros((16, 16, 3), np.uint8))
