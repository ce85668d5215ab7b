"""Data that contradicts itself is refused before training, with counts and what to do: the
same bytes under two labels, a link that walks one class folder into another's images, an image
over Pillow's decompression-bomb limit (named as such, with the option that raises it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from src.data.sources import image_folder


def write_classes(root: Path, per_class: int = 3) -> Path:
    for label, colour in (("cat", (200, 10, 10)), ("dog", (10, 200, 10))):
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            pixel = (colour[0], colour[1], index * 40)
            Image.new("RGB", (8, 8), pixel).save(root / label / f"{label}{index}.png")
    return root


def test_a_clean_folder_loads(tmp_path):
    source = image_folder(str(write_classes(tmp_path / "data")))
    assert len(source.pool) == 6 and source.classes == ["cat", "dog"]


def test_byte_identical_copies_under_two_labels_are_refused(tmp_path):
    root = write_classes(tmp_path / "data")
    shutil.copy(root / "cat" / "cat0.png", root / "dog" / "copy_of_cat0.png")
    shutil.copy(root / "cat" / "cat1.png", root / "dog" / "copy_of_cat1.png")
    with pytest.raises(ValueError) as refused:
        image_folder(str(root))
    message = str(refused.value)
    assert "2 image(s) are byte-identical copies under two classes" in message
    assert "cat/cat0.png = dog/copy_of_cat0.png" in message


def test_a_link_walking_into_another_class_is_refused(tmp_path):
    root = write_classes(tmp_path / "data")
    os.symlink(root / "dog", root / "cat" / "more")  # cat/more/* would be dogs labelled cat
    with pytest.raises(ValueError, match="class 'cat' reaches class 'dog''s images through a link"):
        image_folder(str(root))


def test_a_decompression_bomb_is_named_with_the_option_that_raises_the_limit(tmp_path):
    root = write_classes(tmp_path / "data")
    Image.new("1", (12000, 8000)).save(root / "dog" / "huge.png")  # 96 Mpx, a few kB on disk
    before = Image.MAX_IMAGE_PIXELS
    try:
        with pytest.raises(ValueError) as refused:
            image_folder(str(root))
        message = str(refused.value)
        assert "1 image(s) over Pillow's decompression-bomb limit of 89,478,485 pixels" in message
        assert "['dog/huge.png']" in message and "dataset.source.max_image_pixels" in message
        source = image_folder(str(root), max_image_pixels=100_000_000)  # a genuine scan: taken
        assert len(source.pool) == 7
    finally:
        Image.MAX_IMAGE_PIXELS = before


@pytest.mark.parametrize("value", ["many", 0, True])
def test_max_image_pixels_is_typed(tmp_path, value):
    with pytest.raises(ValueError, match="max_image_pixels"):
        image_folder(str(tmp_path), max_image_pixels=value)
