"""A counter that the processes serving one store share, in a small memory-mapped file:
each process bumps it after it changed what a cached lookup could have read (tags,
manifests), and each compares it with the value it last saw before it trusts its cache.
Reading it is a memory read, no system call, so the hot path may do it per request.

Only ever changed, never meaningful in itself: two bumps racing may write the same value,
and that still differs from what every other process saw before either of them.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

_FORMAT = struct.Struct("<Q")


class SharedCounter:
    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < _FORMAT.size:
                os.ftruncate(fd, _FORMAT.size)
            self._map = mmap.mmap(fd, _FORMAT.size)
        finally:
            os.close(fd)  # the mapping stays

    @property
    def value(self) -> int:
        return int(_FORMAT.unpack_from(self._map)[0])

    def bump(self) -> int:
        value = (self.value + 1) % 2**64
        _FORMAT.pack_into(self._map, 0, value)
        return value

    def close(self) -> None:
        self._map.close()
