"""glibc's heap, told what a training process needs (`mallopt`); elsewhere than glibc, left as is.

A thread's first allocation gives it a heap of its own (an "arena"), and on any heap but the
main one a buffer above 64 MB is always a fresh mapping, handed back to the system when freed.
So every thread shares the main heap, set before any thread but the first allocates (importing
`pipeline` does it). `keep_freed` then has that heap keep what is freed for the next allocation:
what `training.cpu_allocator=bfc` asks (`pipeline.allocator` says why).
"""

import ctypes

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # malloc.h
_MALLOPT = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc's and musl's (which ignores it); macOS has none


def _mallopt(*settings: tuple[int, int]) -> None:
    for parameter, value in settings if _MALLOPT is not None else ():
        _MALLOPT(parameter, value)


def one_heap() -> None:
    """Every thread allocates from the main heap: glibc counts heaps only as threads first
    allocate, so this holds for the threads that have not allocated yet."""
    _mallopt((M_ARENA_MAX, 1))


def keep_freed() -> None:
    """No buffer is a mapping of its own, and the heap is never trimmed (-1: never): freed
    memory stays the process's, for its next allocation, until it exits."""
    _mallopt((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
