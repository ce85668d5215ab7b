"""Every path an entry point will write is checked before any work: a file where a folder is
needed, a folder where a file is needed, a place this user cannot create or write. Nothing is
created by the check (a refused command leaves no empty folder behind)."""

from __future__ import annotations

import os
from pathlib import Path

from src.errors import InvalidInput


def _nearest_existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists() or p.is_symlink())


def _creatable(path: Path, key: str) -> None:
    """`path` is missing: its nearest existing ancestor must be a folder this user can write."""
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise InvalidInput(
            f"{key}='{path}': '{existing}' is a file, so no folder can be made under it."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInput(f"{key}='{path}': '{existing}' is not writable by this user.")


def check_output_folder(path: str | os.PathLike, key: str) -> Path:
    """A folder the command will write into (made later, when there is something to write)."""
    folder = Path(path).expanduser()
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise InvalidInput(f"{key}='{folder}' is a file; give a folder (it may not exist yet).")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InvalidInput(f"{key}='{folder}' is not writable by this user.")
    else:
        _creatable(folder, key)
    return folder


def check_output_file(path: str | os.PathLike, key: str) -> Path:
    """A file the command will write (replaced if it exists)."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise InvalidInput(f"{key}='{file}' is a folder; give a file name, e.g. {file}/out.csv.")
    if str(path).endswith(os.sep):
        raise InvalidInput(f"{key}='{path}' ends in '{os.sep}'; give a file name.")
    if file.exists():
        if not os.access(file, os.W_OK):
            raise InvalidInput(f"{key}='{file}' exists and is not writable by this user.")
    elif file.parent.exists() and not file.parent.is_dir():
        raise InvalidInput(f"{key}='{file}': '{file.parent}' is a file, not a folder.")
    else:
        _creatable(file.parent, key)
    return file
