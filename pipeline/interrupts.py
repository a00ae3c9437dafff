"""Ctrl-C and SIGTERM: stop where the job is, end its MLflow run KILLED, and say how to resume.

The first signal raises `Interrupted` in the main thread. Python can lose an exception
raised while an object is being finalized, so the request is also kept, and training
checks it after every step. A second signal ends the process at once; the state on
disk is then the last complete one, as after a kill.
"""

import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested: Optional[int] = None  # the signal received, if any: process-wide, as signals are


class Interrupted(KeyboardInterrupt):
    """The job was stopped by a signal; `where` says at which stage, epoch and step."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.where: Optional[str] = None
        self.run_id: Optional[str] = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them

    def __str__(self) -> str:
        return f"{signal.Signals(self.signum).name}" + (f" during {self.where}" if self.where else "")


def _handle(signum, frame) -> None:
    global _requested
    if _requested is not None:
        os._exit(128 + signum)  # the second signal: at once
    _requested = signum
    raise Interrupted(signum)


def check() -> None:
    """Raise `Interrupted` if a signal came and its exception was lost; called between training steps."""
    if _requested is not None:
        raise Interrupted(_requested)


@contextmanager
def interruptible() -> Iterator[None]:
    """For the block: SIGINT and SIGTERM raise `Interrupted` (only the main thread can take signals)."""
    try:
        previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    except ValueError:  # not the main thread: leave signals as they are
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass
class Progress:
    """Where the job is: the stage, and in training the epoch (from 1) and optimizer step."""

    stage: str = "start-up"
    epoch: Optional[int] = None
    step: Optional[int] = None

    def describe(self) -> str:
        if self.epoch is None:
            return self.stage
        return f"{self.stage}, epoch {self.epoch}" + (f", step {self.step}" if self.step is not None else "")

    @contextmanager
    def noted(self, run_id: str) -> Iterator[None]:
        """Tell an `Interrupted` leaving the block where it stopped, and in which run."""
        try:
            yield
        except Interrupted as error:
            error.where, error.run_id = self.describe(), run_id
            raise
