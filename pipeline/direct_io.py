"""Gigabyte files written and read past the kernel's page cache (`O_DIRECT`), from memory the
process keeps.

A file written the ordinary way lands first in the page cache, in memory the kernel takes fresh.
On a virtual machine that hands freed memory back to its host, memory taken fresh is slow: a
100M-parameter model's 1.2 GB weights checkpoint cost 3.6 to 4.6 s of CPU each time, beside a
training that needs the same cores. Built in an `Image` this process keeps and written with
`O_DIRECT`, the same checkpoint cost 0.5 to 1.0 s once the image's memory was first touched.
Where a file system refuses `O_DIRECT` (tmpfs), the ordinary way is used.
"""

import io
import mmap
import os
from pathlib import Path
from typing import Iterator

BLOCK = 1 << 24  # 16 MiB: the unit of each transfer, and of the copies that hold the interpreter lock
ALIGN = 4096  # O_DIRECT's alignment of memory, file offsets and sizes


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def _open_direct(path: Path, flags: int) -> tuple[int, bool]:
    """A descriptor for `path`, past the page cache where the file system allows; and whether it is."""
    direct = getattr(os, "O_DIRECT", 0)
    if direct:
        try:
            return os.open(path, flags | direct, 0o644), True
        except OSError:  # EINVAL: tmpfs and others keep every file in memory
            pass
    return os.open(path, flags, 0o644), False


class Image(io.RawIOBase):
    """A file built in memory that is kept from one file to the next (h5py writes to it as to a
    file, seeking back to its headers), then written out whole with `save`. Grows to the largest
    file built; the memory is this process's until it is closed."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, ALIGN)
        self._size = self._pos = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = offset + (0, self._pos, self._size)[whence]
        return self._pos

    def truncate(self, size=None) -> int:
        size = self._pos if size is None else size
        self._extend(size)
        self._size = size
        return size

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        end = self._pos + len(data)
        self._extend(self._pos)
        if end > len(self._map):
            self._grow(end)
        for start in range(0, len(data), BLOCK):  # block by block, so other threads get the interpreter lock between them
            piece = data[start : start + BLOCK]
            self._map[self._pos + start : self._pos + start + len(piece)] = piece
        self._pos, self._size = end, max(self._size, end)
        return len(data)

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self._size - self._pos))
        memoryview(buffer).cast("B")[:count] = self._map[self._pos : self._pos + count]
        self._pos += count
        return count

    def _extend(self, size: int) -> None:
        """Zeros up to `size`, as a file reads where nothing was written: not the file before's bytes."""
        if size > self._size:
            if size > len(self._map):
                self._grow(size)
            self._map[self._size : size] = bytes(size - self._size)

    def _grow(self, size: int) -> None:
        bigger = mmap.mmap(-1, _aligned(max(size, 2 * len(self._map))))
        bigger[: self._size] = self._map[: self._size]
        self._map.close()
        self._map = bigger

    def reset(self) -> None:
        """Empty it for the next file, keeping its memory."""
        self._size = self._pos = 0

    def save(self, path: Path) -> None:
        """Write the image to `path` (a new file), past the page cache where allowed."""
        fd, direct = _open_direct(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            _write_all(fd, memoryview(self._map)[: _aligned(self._size) if direct else self._size])  # whole blocks, the tail cut off after
            os.ftruncate(fd, self._size)
        finally:
            os.close(fd)

    def close(self) -> None:
        if not self.closed:
            self._map.close()
        super().close()


class Writer(io.RawIOBase):
    """A new file written front to back, past the page cache where allowed, through a 16 MiB
    buffer (`zipfile` writes an archive to it as to a stream it cannot seek back in)."""

    def __init__(self, path: Path):
        self._fd, self._direct = _open_direct(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        self._buffer = mmap.mmap(-1, BLOCK)
        self._filled = self._written = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written + self._filled

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        taken = 0
        while taken < len(data):
            count = min(len(data) - taken, BLOCK - self._filled)
            self._buffer[self._filled : self._filled + count] = data[taken : taken + count]
            self._filled, taken = self._filled + count, taken + count
            if self._filled == BLOCK:
                _write_all(self._fd, memoryview(self._buffer))
                self._written, self._filled = self._written + BLOCK, 0
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            _write_all(self._fd, memoryview(self._buffer)[: _aligned(self._filled) if self._direct else self._filled])
            os.ftruncate(self._fd, self.tell())
        finally:
            os.close(self._fd)
            super().close()


def _write_all(fd: int, view: memoryview) -> None:
    for start in range(0, len(view), BLOCK):
        piece = view[start : start + BLOCK]
        while piece:
            piece = piece[os.write(fd, piece) :]


def blocks(path: Path) -> Iterator[memoryview]:
    """The file's bytes in 16 MiB blocks, read past the page cache where allowed. Each block is
    valid until the next is asked for."""
    fd, _ = _open_direct(path, os.O_RDONLY)
    buffer = mmap.mmap(-1, BLOCK)
    try:
        offset, count = 0, BLOCK
        while count == BLOCK and (count := os.preadv(fd, [buffer], offset)):
            yield memoryview(buffer)[:count]
            offset += count
    finally:
        os.close(fd)
