"""A corrupt JPEG and a truncated PNG in an image folder: named up front, refused under
on_bad_image=error, left out (and counted in the run) under skip."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from src.data.sources import image_folder
from tests.helpers.compose import compose_train, only_run, train


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("healthy", "rust"):
        (root / label).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    (root / "rust" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png, format="PNG")
    (root / "healthy" / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    return root


def test_bad_images_are_named_and_refused(folder):
    with pytest.raises(ValueError, match="2 unreadable image") as refused:
        image_folder(str(folder))
    assert "rust/corrupt.jpg" in str(refused.value)
    assert "healthy/truncated.png" in str(refused.value)
    assert "on_bad_image=skip" in str(refused.value)


@pytest.mark.slow
def test_bad_images_are_skipped_and_counted(folder, tmp_path, tiny_overrides):
    source = image_folder(str(folder), on_bad_image="skip")
    assert len(source.pool) == 16 and sorted(p.rsplit("/", 1)[-1] for p in source.skipped) == [
        "corrupt.jpg",
        "truncated.png",
    ]
    cfg = compose_train(
        tmp_path,
        [
            *tiny_overrides,
            "dataset=imagefolder",
            f"dataset.source.root={folder}",
            "dataset.source.on_bad_image=skip",
            "dataset.test_fraction=0.25",
            "test=false",
        ],
    )
    train(cfg)
    run = only_run(cfg)
    assert run.info.status == "FINISHED" and run.data.tags["skipped_images"] == "2"
