"""Page-cache memory handed from one checkpoint to the next.

The kernel keeps every file a process writes in its page cache, in memory it takes fresh. A large
model's checkpoints are gigabytes a run writes and does not read back. On a virtual machine that
hands freed memory back to its host within seconds, memory taken fresh is slow: writing a 1.2 GB
file cost 3.4 s of CPU, against 0.35 s into memory the kernel had just freed. Training shares those
cores. `Recycled` remembers the files of a series (each epoch's checkpoint), and just before the
next is written it waits for them to be on disk and drops their pages, so the next takes the same
memory. The files stay on disk; a later read of one comes from there. Elsewhere this also keeps a
run's checkpoints from crowding out of the cache what the machine does read again.
"""

import os
from pathlib import Path
from typing import Iterable


class Recycled:
    """The page-cache memory of a series of files, each file's handed to the next. Used by one
    thread: the one writing the series."""

    def __init__(self) -> None:
        self._held: list[Path] = []  # the last files written

    def hold(self, paths: Iterable[Path]) -> None:
        """Remember the files just written, for the next write to take their memory."""
        self._held = list(paths)

    def release(self) -> None:
        """Drop the held files' pages from the cache, once they are on disk: just before the next
        file of the series is written, which takes their memory. Where the system cannot, they stay."""
        held, self._held = self._held, []
        if not hasattr(os, "posix_fadvise"):  # Linux and most Unixes have it; not macOS or Windows
            return
        for path in held:
            try:
                with open(path, "rb") as file:
                    os.fdatasync(file.fileno())  # the kernel drops clean pages only
                    os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:  # gone (a keep policy deleted it, freeing its pages), or a file system without either
                pass
