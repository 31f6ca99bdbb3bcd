"""Writes that survive power loss: temp file, fsync, rename, fsync of the directory."""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import cast

_FALLOC_FL_KEEP_SIZE = 0x01  # linux/falloc.h


def _libc_fallocate() -> Callable[[int, int, int, int], int] | None:
    # the C library this process already has loaded (as appliance/workers.py's prctl):
    # no search for it (ctypes.util.find_library runs ldconfig, ~20 ms at every import)
    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_fallocate = _libc_fallocate()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until every byte of `data` is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def preallocate(fd: int, offset: int, length: int) -> None:
    """Reserves the disk blocks of ``[offset, offset + length)`` of a file about to be
    written there, without changing its size (Linux ``fallocate``, ``KEEP_SIZE``): the
    writes that follow then find their blocks allocated, which on ext4 costs a fraction
    of the CPU of allocating them write by write (delayed allocation), and a full disk
    shows before any byte was fetched (``OSError`` ENOSPC). Where the call or the file
    system does not support it, nothing happens."""
    if _fallocate is None or length <= 0:
        return
    if _fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise OSError(code, os.strerror(code))


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
