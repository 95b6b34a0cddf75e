"""Data files only their owner can read: directories 0700, files 0600, for new ones and those already there."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) if needed and make it 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty if missing and make it 0600."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    os.chmod(path, FILE_MODE)
    return path


def restrict_tree(root: Path) -> None:
    """Make every directory under `root` 0700 and every regular file 0600 (files of an older version)."""
    for folder, dirs, names in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), DIR_MODE, follow_symlinks=False)
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                os.chmod(path, FILE_MODE)


@contextmanager
def private_umask() -> Iterator[None]:
    """Files created in the block, also by child processes started in it for their lifetime, are owner-only.
    The umask is per process: call this while the process starts, before other threads create files."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)
