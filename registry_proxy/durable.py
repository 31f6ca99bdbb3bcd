"""Writes that survive power loss: temp file, fsync, rename, fsync of the directory."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte of `data` is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    """`data` in a fsynced temp file beside `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replaces `path` with `data` so that a crash leaves either the old or the new file."""
    tmp = _write_temp(path, data, mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def create_once(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Writes `path` durably unless it exists; of several concurrent writers the first
    wins and the others' data is dropped. True when this call created it."""
    return publish(_write_temp(path, data, mode), path)


def publish(tmp: Path, final: Path) -> bool:
    """Moves a fully written, fsynced `tmp` to `final` and makes the rename durable.

    Returns False (and removes `tmp`) when `final` already exists: content-addressed
    files with the same name have the same bytes, and the first one wins.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        # link() fails if `final` exists, so a concurrent commit never replaces a file
        # that a reader has open or that was already verified
        os.link(tmp, final)
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        return False
    tmp.unlink()
    fsync_dir(final.parent)
    return True
