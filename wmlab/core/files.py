"""Durable file writes: what a crash (or a power cut) may not half-do.

A file counts as written once its data is fsynced, and a rename or a new file in a folder once the
folder is fsynced too.
"""

from __future__ import annotations

import os
from pathlib import Path


def sync(path: Path) -> None:
    """fsync a file or a directory (a directory's entries: the files created or renamed in it)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_durably(path: Path, text: str) -> None:
    """Write `text` to `path` and fsync it (the caller syncs the directory once it is complete)."""
    with open(path, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())


def replace_durably(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically: a crash leaves the old file or the new one, whole."""
    temporary = path.with_name(f".{path.name}.tmp")
    write_durably(temporary, text)
    os.replace(temporary, path)
    sync(path.parent)
