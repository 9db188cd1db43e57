"""Durable file writes: what a crash (or a power cut) may not half-do; and JSON files read with an
error that names the file.

A file counts as written once its data is fsynced, and a rename or a new file in a folder once the
folder is fsynced too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


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


def read_json(path: Path, error: type[Exception], missing: str, invalid: str = "is not valid JSON") -> Any:
    """The JSON value stored at `path`: `error(missing)` when there is no such file, and
    `error("PATH <invalid> (what the parser said)")` when it does not parse."""
    if not path.is_file():
        raise error(missing)
    try:
        return json.loads(path.read_text())
    except ValueError as reason:
        raise error(f"{path} {invalid} ({reason})") from None
