"""Images read faithfully (issue 20): wide pixel formats scaled, not clipped; alpha composited;
symlinks followed once; a class emptied by on_bad_image=skip refused."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from src.data.files import read_rgb, to_rgb
from src.data.sources import image_folder


def _gradient(high: int, dtype) -> np.ndarray:
    return np.linspace(0, high, 32 * 32).reshape(32, 32).astype(dtype)


def test_16_bit_images_keep_their_range(tmp_path):
    """Two classes of 0-16383 and 0-65535 gradients: convert("RGB") made both ~white."""
    for name, high in (("low", 16383), ("full", 65535)):
        Image.fromarray(_gradient(high, np.uint16)).save(tmp_path / f"{name}.png")
    low, full = (np.asarray(read_rgb(tmp_path / f"{n}.png")) for n in ("low", "full"))
    assert low.shape == (32, 32, 3) and full.shape == (32, 32, 3)
    assert full.min() == 0 and full.max() == 255 and low.max() == 64
    assert (full == 255).mean() < 0.01  # not clipped white
    assert np.abs(np.diff(full[..., 0].ravel().astype(int))).max() <= 1  # a smooth ramp


@pytest.mark.parametrize(
    "pixels,expected_max",
    [
        (_gradient(40000, np.int32), 156),  # 16-bit values in a 32-bit container
        (_gradient(1_000_000, np.int32) - 500_000, 255),  # beyond 16 bits: its own range
        (_gradient(1.0, np.float32), 255),  # float in [0, 1]
        (_gradient(0.5, np.float32), 128),
        (_gradient(1000.0, np.float32) - 10, 255),  # float outside [0, 1]: its own range
    ],
    ids=["int32-16bit", "int32-wide", "float01", "float-half", "float-wide"],
)
def test_32_bit_integer_and_float_images_are_scaled_not_clipped(tmp_path, pixels, expected_max):
    path = tmp_path / "wide.tif"
    Image.fromarray(pixels).save(path)
    rgb = np.asarray(read_rgb(path))
    assert rgb.min() == 0 and rgb.max() == expected_max
    assert len(np.unique(rgb)) > 100  # the ramp survives


def test_transparent_pixels_are_composited_over_white():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 37  # colour hidden under alpha 0
    rgba[:4, :, 3] = 255  # top half opaque
    out = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert (out[:4] == 37).all() and (out[4:] == 255).all()
    la = Image.fromarray(
        np.stack([np.zeros((8, 8)), np.full((8, 8), 128)], -1).astype(np.uint8), "LA"
    )
    assert (np.asarray(to_rgb(la)) == 127).all()  # black at half alpha over white: mid grey
    palette = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L").convert("P")
    palette.info["transparency"] = 0
    assert tuple(np.asarray(to_rgb(palette))[0, 0]) == (255, 255, 255)


def test_cmyk_and_grey_become_the_same_rgb_as_pil(tmp_path):
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in ink
    assert tuple(np.asarray(to_rgb(cmyk))[0, 0]) == (255, 0, 0)
    grey = Image.fromarray(np.full((4, 4), 90, dtype=np.uint8))
    assert (np.asarray(to_rgb(grey)) == 90).all()


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: the upright image is 10 wide, 20 high
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_rgb(tmp_path / "rotated.jpg").size == (10, 20)


def _folder(root, counts=(("a", 4), ("b", 4))):
    rng = np.random.default_rng(0)
    for name, n in counts:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                root / name / f"{i}.png"
            )
    return root


def test_a_symlink_loop_is_read_once_and_named_once(tmp_path, caplog):
    root = _folder(tmp_path / "images")
    os.symlink(".", root / "a" / "again")  # the loop: 12 files became 252
    os.symlink("..", root / "b" / "up")
    with caplog.at_level(logging.WARNING):
        source = image_folder(str(root))
    assert len(source.pool) == 8
    warnings = [r.getMessage() for r in caplog.records if "symlink" in r.getMessage()]
    assert len(warnings) == 1 and "a/again" in warnings[0] and "b/up" in warnings[0]
    assert len(warnings[0]) < 500


def test_a_file_linked_twice_counts_once_and_one_in_two_classes_is_refused(tmp_path):
    root = _folder(tmp_path / "images")
    os.symlink(root / "a" / "0.png", root / "a" / "copy.png")
    assert len(image_folder(str(root)).pool) == 8
    os.symlink(root / "a" / "1.png", root / "b" / "stolen.png")
    with pytest.raises(ValueError, match="one label"):
        image_folder(str(root))


def test_test_root_sharing_images_with_root_is_refused(tmp_path):
    root = _folder(tmp_path / "images")
    test = _folder(tmp_path / "test")
    os.symlink(root / "a" / "0.png", test / "a" / "leak.png")
    with pytest.raises(ValueError, match="leak into training"):
        image_folder(str(root), test_root=str(test))


def test_hidden_folders_are_not_classes(tmp_path):
    root = _folder(tmp_path / "images", (("a", 3), ("b", 3), (".ipynb_checkpoints", 2)))
    assert image_folder(str(root)).classes == ["a", "b"]


def test_a_class_emptied_by_skip_is_refused_by_name(tmp_path):
    root = _folder(tmp_path / "images", (("a", 3), ("b", 0)))
    (root / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"\['b'\]: no readable image once the unreadable"):
        image_folder(str(root), on_bad_image="skip")


def test_a_broken_symlink_is_an_unreadable_image(tmp_path):
    root = _folder(tmp_path / "images")
    os.symlink(root / "nowhere.png", root / "a" / "gone.png")
    with pytest.raises(ValueError, match="a/gone.png"):
        image_folder(str(root))
