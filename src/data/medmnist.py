"""MedMNIST v2 2D data sets (Yang et al. 2023) read from the official `.npz` files.

The `medmnist` package is the authority on names, tasks, channels, labels, file names, URLs and
MD5s (its INFO dict) and does the download; the arrays are read here directly, since its Dataset
class checks the official sample counts, and the images go into memory as uint8 like every other
small set (device-side batch transforms; grey images become 3 channels there).

File layout (one file per flag and size): `<flag>.npz` at 28 px, `<flag>_<size>.npz` otherwise, with
keys {train,val,test}_images (uint8 [N, H, W] grey or [N, H, W, 3]) and {train,val,test}_labels
(int [N, 1], or [N, L] 0/1 for a multi-label set such as chestmnist).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from src.data.sources import ArrayImages, Source
from src.errors import AssetUnavailable

log = logging.getLogger(__name__)

SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")


def medmnist(flag: str, size: int = 28, root: str | None = None, download: bool = False) -> Source:
    """The official train/val/test split of one MedMNIST 2D set at `size` px.

    root: the folder holding the `.npz` files (null: the package's cache, ~/.medmnist).
    download: fetch the file (MD5-checked by medmnist) when it is missing; off by default, so an
    offline machine fails at once with where to put the file instead of waiting on the network.
    """
    info = _info(flag, size)
    file = npz_path(flag, size, root)
    if not file.is_file():
        if not download:
            raise AssetUnavailable(_missing(flag, size, file, info))
        _download(flag, size, file, info)
    arrays = _read(file, flag, size, info)
    classes = [info["label"][str(i)] for i in range(len(info["label"]))]
    multilabel = info["task"].startswith("multi-label")
    parts = {
        split: ArrayImages(
            arrays[f"{split}_images"],
            arrays[f"{split}_labels"] if multilabel else arrays[f"{split}_labels"][:, 0],
        )
        for split in SPLITS
    }
    log.info(
        "MedMNIST %s (%s, %d px): train %d, val %d, test %d from %s",
        flag,
        info["task"],
        size,
        *(len(parts[s]) for s in SPLITS),
        file,
    )
    return Source(parts["train"], parts["test"], classes, val=parts["val"])


def npz_path(flag: str, size: int, root: str | None = None) -> Path:
    """Where the file for (flag, size) is read from: `<root>/<flag>[_<size>].npz`."""
    from medmnist.info import DEFAULT_ROOT

    folder = Path(root if root is not None else DEFAULT_ROOT or "~/.medmnist").expanduser()
    return folder / f"{flag}{'' if size == 28 else f'_{size}'}.npz"


def _info(flag: str, size: int) -> dict:
    import medmnist
    from medmnist import INFO

    names_2d = [
        name
        for name, info in INFO.items()
        if issubclass(getattr(medmnist, info["python_class"]), medmnist.dataset.MedMNIST2D)
    ]
    if flag not in names_2d:
        raise ValueError(f"dataset.source.flag='{flag}': choose a MedMNIST 2D set: {names_2d}.")
    if size not in SIZES:
        raise ValueError(f"dataset.source.size={size}: MedMNIST 2D comes in sizes {list(SIZES)}.")
    return INFO[flag]


def _url(info: dict, size: int) -> tuple[str, str]:
    suffix = "" if size == 28 else f"_{size}"
    return info[f"url{suffix}"], info[f"MD5{suffix}"]


def _missing(flag: str, size: int, file: Path, info: dict) -> str:
    url, md5 = _url(info, size)
    return (
        f"MedMNIST file not found: {file}\n"
        f"Fetch {file.name} (MD5 {md5}) from {url} and put it at {file}, or set "
        f"dataset.source.root=<folder with {file.name}>, or let it download with "
        "dataset.source.download=true (needs a network). Offline data sets: fashion_mnist, "
        "fashion_mnist_3k, mnist, digits, textures, imagefolder."
    )


def _download(flag: str, size: int, file: Path, info: dict) -> None:
    """medmnist's own download (MD5-checked) into file's folder."""
    import medmnist

    file.parent.mkdir(parents=True, exist_ok=True)
    dataset_class = getattr(medmnist, info["python_class"])
    try:
        dataset_class(split="train", root=str(file.parent), size=size, download=True)
    except Exception as err:  # urllib / socket / MD5 errors vary; medmnist wraps them loosely
        raise AssetUnavailable(
            f"Could not download {file.name}: {err}\n" + _missing(flag, size, file, info)
        ) from err


def _read(file: Path, flag: str, size: int, info: dict) -> dict[str, np.ndarray]:
    """Every array of the file, checked against the layout medmnist's INFO describes."""
    try:
        with np.load(file) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"{file} is not a readable .npz file ({err}); fetch it again.") from err
    for split in SPLITS:
        problem = _layout_problem(arrays, split, size, info)
        if problem:
            raise ValueError(f"{file} is not a MedMNIST {flag} file at {size} px: {problem}.")
    return arrays


def _layout_problem(arrays: dict, split: str, size: int, info: dict) -> str | None:
    images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
    if images is None or labels is None:
        return f"keys {split}_images/{split}_labels missing (has {sorted(arrays)})"
    shape = (size, size) if info["n_channels"] == 1 else (size, size, 3)
    if images.dtype != np.uint8 or images.shape[1:] != shape:
        return f"{split}_images is {images.dtype} {images.shape[1:]}, expected uint8 {shape}"
    multilabel, n_labels = info["task"].startswith("multi-label"), len(info["label"])
    width, top = (n_labels, 1) if multilabel else (1, n_labels - 1)
    if labels.shape != (len(images), width) or not np.issubdtype(labels.dtype, np.integer):
        return f"{split}_labels is {labels.dtype} {labels.shape}, expected integers ({len(images)}, {width})"
    if labels.size and (labels.min() < 0 or labels.max() > top):
        return f"{split}_labels has values outside [0, {top}]"
    return None
