"""The fast PNG encoder: every picture it writes decodes (PIL) to exactly its pixels, in
every 8-bit mode and size; other modes go through PIL; bad pixels are refused."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from interp_ext import png, viz, writers


def _decode(data: bytes) -> Image.Image:
    check = Image.open(io.BytesIO(data))
    check.verify()  # the chunks' CRCs and structure
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (37, 53), (224, 224, 3), (5, 7, 1), (6, 5, 2), (9, 4, 4),
                                   (64, 64, 3)])
def test_round_trip_is_exact(shape):
    rng = np.random.default_rng(sum(shape))
    noise = rng.integers(0, 256, shape, dtype=np.uint8)
    smooth = (np.add.outer(np.arange(shape[0]), np.arange(shape[1])) % 256).astype(np.uint8)
    smooth = np.broadcast_to(smooth.reshape(shape[:2] + (1,) * (len(shape) - 2)), shape)
    for pixels in (noise, smooth, np.zeros(shape, np.uint8), np.full(shape, 255, np.uint8)):
        got = np.asarray(_decode(png.encode(pixels)))
        assert got.reshape(shape).tolist() == pixels.tolist()


def test_modes_and_strided_input():
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert _decode(png.encode(rgb)).mode == "RGB"
    assert _decode(png.encode(rgb[..., 0])).mode == "L"
    assert _decode(png.encode(np.dstack([rgb, rgb[..., :1]]))).mode == "RGBA"
    assert _decode(png.encode(rgb[:, :, :2])).mode == "LA"
    flipped = rgb[::-1, ::2]  # not contiguous
    assert np.array_equal(np.asarray(_decode(png.encode(flipped))), flipped)


def test_save_png_every_mode(tmp_path):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8))
    for mode in ("RGB", "L", "LA", "RGBA", "P", "I;16", "1"):
        image = rgb.convert(mode) if mode != "I;16" else Image.fromarray(np.arange(16 * 24, dtype=np.uint16).reshape(16, 24))
        path = writers.save_png(image, tmp_path / f"{mode.replace(';', '_')}.png")
        back = _decode(path.read_bytes())
        assert back.size == image.size and np.array_equal(np.asarray(back), np.asarray(image)), mode
    assert viz.save_png is writers.save_png


def test_overlays_are_no_larger_than_pils():
    """The job's pictures: a smooth heat map over a photo, and a signed gradient picture."""
    from sklearn.datasets import load_sample_image

    crop = Image.fromarray(load_sample_image("flower.jpg")[:224, :224])
    heat = torch.zeros(224, 224)
    heat[50:150, 60:160] = torch.linspace(0, 1, 100)[:, None]
    for picture in (viz.overlay(crop, heat), viz.gradient_image(torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(0)))):
        ours = png.encode(np.asarray(picture))
        pil = io.BytesIO()
        picture.save(pil, format="PNG")
        assert len(ours) <= 1.02 * pil.tell()
        assert np.array_equal(np.asarray(_decode(ours)), np.asarray(picture))


@pytest.mark.parametrize("pixels, error, words", [
    (np.zeros((4, 4), np.float32), TypeError, "pixels must be uint8, got float32"),
    (np.zeros((4, 4), np.uint16), TypeError, "uint16"),
    (np.zeros((4,), np.uint8), ValueError, "got shape (4,)"),
    (np.zeros((4, 4, 5), np.uint8), ValueError, "(H, W, 1|2|3|4)"),
    (np.zeros((0, 4, 3), np.uint8), ValueError, "H, W > 0"),
    (np.zeros((2, 2, 2, 3), np.uint8), ValueError, "got shape (2, 2, 2, 3)"),
])
def test_bad_pixels_are_refused(pixels, error, words):
    with pytest.raises(error, match="pixels") as e:
        png.encode(pixels)
    assert words in str(e.value)
