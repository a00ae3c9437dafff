"""Where checkpoints and training states are written from: the model on the training thread, or
(`checkpoint.background`) a copy of it taken at the step and written on a thread of its own.

Writing a large model's checkpoint takes seconds that training would otherwise wait for. In the
background, the model's and its optimizer's variables are copied at the step into a second model
of the same architecture (memory for the model and optimizer once more), and the files are written
from that copy while training goes on. Writes run one at a time, in the order they were asked for;
a new copy first waits for the writes still reading the previous one, so at most one checkpoint is
pending. Files are written atomically (`pipeline.files`): a crash mid-write leaves the previous
checkpoint whole. A write that fails stops the writes after it, and its error is raised on the
training thread at the next checkpoint or at the training's end, where every write is awaited.
"""

import logging
import random
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional, TypeVar

import keras

from pipeline.priority import lowest_priority

log = logging.getLogger(__name__)

T = TypeVar("T")


def done(value) -> Future:
    """A future that already holds `value`: a write made on the training thread."""
    finished: Future = Future()
    finished.set_result(value)
    return finished


class Writes:
    """Run each checkpoint or training-state write, in order, now or in the background.

    Args:
        model: the model being trained.
        background: write from a copy on another thread; falls back to the training thread,
            saying why, for a model Keras cannot copy from its config.
    """

    def __init__(self, model: keras.Model, background: bool):
        self.live = model
        self._copy = copy_of(model) if background else None
        self._step: Optional[int] = None  # the step the copy holds
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-writer", initializer=lowest_priority) if self._copy is not None else None
        self._pending: list[Future] = []
        self._failed: Optional[BaseException] = None

    @property
    def model(self) -> keras.Model:
        """The model the writers write from: the copy, in the background."""
        return self._copy if self._copy is not None else self.live

    def at_step(self) -> None:
        """Make the copy hold the training's state at this step (at once if it already does); it
        first waits for the writes still reading it."""
        if self._copy is None:
            return
        step = int(self.live.optimizer.iterations.numpy())
        if step == self._step:
            return
        self.wait()
        copy_values(self.live, self._copy)
        self._step = step

    def submit(self, write: Callable[[], T]) -> "Future[Optional[T]]":
        """Run `write` after those before it; its future holds its result, or None if it (or one
        before it) failed: the failure itself is raised on the training thread."""
        self.raise_failure()
        if self._pool is None:
            return done(write())
        future = self._pool.submit(self._guarded, write)
        self._pending.append(future)
        return future

    def _guarded(self, write: Callable[[], T]) -> Optional[T]:
        if self._failed is not None:
            return None
        try:
            return write()
        except BaseException as error:  # raised on the training thread, by raise_failure or wait
            self._failed = error
            return None

    def raise_failure(self) -> None:
        """Raise the error of a background write that failed, if one has."""
        if self._failed is not None:
            raise self._failed

    def wait(self) -> None:
        """Block until every write asked for is on disk; raise the first failure."""
        for future in self._pending:
            future.result()
        self._pending.clear()
        self.raise_failure()

    def close(self) -> None:
        """Wait for the writes (raising the first failure) and stop the writer thread."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()


def snapshot(variables) -> list:
    """The variables' values now, copied within TensorFlow's memory: what a checkpoint is verified
    against. (Copied into NumPy, each was fresh memory for the kernel to fault in: 0.6-3 s of CPU a
    checkpoint for 100M parameters with Adam, against 0.1 s.)"""
    import tensorflow as tf

    return [tf.raw_ops.DeepCopy(x=keras.ops.convert_to_tensor(v)) for v in variables]


def copy_of(model: keras.Model) -> Optional[keras.Model]:
    """A second model built from `model`'s config and compiled like it, its optimizer left unbuilt
    until `model`'s is (so an epoch-0 checkpoint holds what the model's own would); None, with the
    reason logged, if the config does not rebuild the same variables."""
    drawn = random.getstate()  # building draws default seeds for the copy's seed generators: not from the training's stream
    try:
        config = keras.saving.serialize_keras_object(model)
        compile_config = config.pop("compile_config", None)
        copy = keras.saving.deserialize_keras_object(config)
        if compile_config is not None:
            copy.compile(**keras.saving.deserialize_keras_object(compile_config))
        if not copy.built:
            raise ValueError("the copy is not built from the model's config")
        if _shapes(copy.variables) != _shapes(model.variables):
            raise ValueError("the copy's variables differ from the model's")
    except Exception as error:
        log.info("checkpoint | written on the training thread: %s cannot be copied for background writes (%s: %s)", type(model).__name__, type(error).__name__, error)
        return None
    finally:
        random.setstate(drawn)
    return copy


def copy_values(source: keras.Model, target: keras.Model) -> None:
    """Assign the model's variables, and its optimizer's once built, to the copy."""
    for mine, theirs in zip(target.variables, source.variables, strict=True):
        mine.assign(theirs)
    if source.optimizer is not None and source.optimizer.built:
        if not target.optimizer.built:
            target.optimizer.build(target.trainable_variables)
        if _shapes(target.optimizer.variables) != _shapes(source.optimizer.variables):
            raise ValueError(f"checkpoint.background: the copy's optimizer has other variables than {type(source.optimizer).__name__}; set checkpoint.background=false")
        for mine, theirs in zip(target.optimizer.variables, source.optimizer.variables, strict=True):
            mine.assign(theirs)


def _shapes(variables) -> list[tuple]:
    return [(tuple(v.shape), str(v.dtype)) for v in variables]
