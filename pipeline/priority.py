"""Threads that work beside the training run at the lowest CPU priority: training first.

Writing a checkpoint in the background and uploading to MLflow take seconds of CPU each epoch. The
training keeps every core busy, so on a machine without a GPU that work slows it by as much, unless
the scheduler gives training's threads the cores first. At the lowest priority (nice 19) the
background threads take what the training leaves idle (its steps' ends, validation, the epoch's
end), and any core it does not use. Their work is never lost, only later: the training waits for
a checkpoint's write only when the next one is due, and the run's end waits for every upload.
"""

import os
import sys
import threading

LOWEST = 19  # nice


def lowest_priority() -> None:
    """Run the calling thread at the lowest priority; a thread pool's initializer. Linux only (where
    a thread's priority is its own, apart from its process's); elsewhere it keeps its priority."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST)
        except OSError:  # a sandbox that forbids it: the thread keeps its priority
            pass
