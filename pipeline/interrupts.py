"""Ctrl-C, SIGTERM and SIGUSR1: stop where the job is, end its MLflow run KILLED, and say how to resume.

SIGTERM is what a cluster scheduler sends before it kills a job (SLURM, or SIGUSR1 with
`--signal`). Outside training the first signal raises `Interrupted` in the main thread at
once. During training (`deferred`) it is only noted: the current step finishes, the
training state at that step is written, and then `check` raises. Python can also lose an
exception raised while an object is being finalized, which the noted request survives.
A second signal ends the process at once; the state on disk is then the last complete
one, as after a kill.

A job started by submitit (the submitit and SLURM launchers) is also stopped this way by
submitit's preemption signal (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise), and then
handed to submitit's own handler (`Interrupted.requeue`), which checkpoints the job and
requeues it: the job starts again and resumes its run from the state written at the step.
"""

import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
_requested: Optional[int] = None  # the signal received, if any: process-wide, as signals are
_deferring = False  # in training: note the signal, let the step finish and the state be written
_requeue_handlers: dict = {}  # {signal: handler} that requeue the job after it stopped (submitit's)


class Interrupted(KeyboardInterrupt):
    """The job was stopped by a signal; `where` says at which stage, epoch and step."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.where: Optional[str] = None
        self.run_id: Optional[str] = None
        self.requeue: Optional[Callable] = _requeue_handlers.get(signum)  # submitit's, for its preemption signal

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, 138 for SIGUSR1, as a shell reports them

    def __str__(self) -> str:
        return f"{signal.Signals(self.signum).name}" + (f" during {self.where}" if self.where else "")


def _handle(signum, frame) -> None:
    global _requested
    if _requested is not None:
        os._exit(128 + signum)  # the second signal: at once
    _requested = signum
    if not _deferring:
        raise Interrupted(signum)


def requested() -> Optional[int]:
    """The signal that asked the job to stop, if one did."""
    return _requested


def check() -> None:
    """Raise `Interrupted` if a signal came (and was deferred, or its exception lost)."""
    if _requested is not None:
        raise Interrupted(_requested)


@contextmanager
def deferred() -> Iterator[None]:
    """For the block (training), a signal is noted, not raised: the block calls `check` where
    stopping is clean. A request still pending when the block ends is raised then."""
    global _deferring
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
    check()


def _submitit_requeue() -> dict:
    """{signal: submitit's handler} when this process is a submitit job that requeues on that signal."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    signum = getattr(signal, f"SIG{name}", None)
    handler = signal.getsignal(signum) if signum else None
    owner = getattr(handler, "__self__", None)
    return {signum: handler} if type(owner).__module__.startswith("submitit.") else {}


@contextmanager
def interruptible() -> Iterator[None]:
    """For the block: SIGINT, SIGTERM and SIGUSR1 (and submitit's preemption signal, in a submitit
    job) raise `Interrupted` (only the main thread can take signals)."""
    try:
        requeue = _submitit_requeue()
        previous = {s: signal.signal(s, _handle) for s in (*SIGNALS, *requeue)}
    except ValueError:  # not the main thread: leave signals as they are
        yield
        return
    _requeue_handlers.update(requeue)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in requeue:
            _requeue_handlers.pop(s, None)


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
