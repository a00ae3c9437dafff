"""The checkpoint callback: the policy in the config decides when, a save format decides how.

Modelled on keras.callbacks.ModelCheckpoint, plus what it lacks: every n epochs,
an epoch-0 checkpoint, checkpoints in any registered format, keep policies for all of them
(pipeline.keep decides which stay), writes in the background (pipeline.background), and hooks
that hand every checkpoint, with the metrics it was written at, to MLflow.
"""

import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import keras

from pipeline.background import Writes, done, snapshot
from pipeline.config import CheckpointConfig, CheckpointFormat, CheckpointPolicy, Mode
from pipeline.errors import ConfigError
from pipeline.formats import FORMATS, SaveFormat
from pipeline.keep import Written, to_delete

log = logging.getLogger(__name__)


@dataclass
class CheckpointRecord:
    """A checkpoint and the state it holds, kept to verify the file against."""

    path: Path  # the file; for TF checkpoints, the prefix (e.g. cp-5)
    format: SaveFormat
    carries_optimizer: bool
    epoch: int  # epochs completed when it was written
    step: int  # optimizer iterations when it was written
    value: Optional[float]  # checkpoint.monitor when it was written (its training-set twin, by batch): what keep.best ranks
    weights: list = field(default_factory=list)  # these two (tensors) are filled in as the file is written
    optimizer_variables: list = field(default_factory=list)
    written: Future = field(default_factory=lambda: done(True))  # True once the file is complete; None if its write failed


def checkpoint_format(cfg: CheckpointConfig) -> SaveFormat:
    """The save format a checkpoint config writes with, from the one registry."""
    if cfg.format is CheckpointFormat.tf_checkpoint:
        return FORMATS["tf_checkpoint"]
    return FORMATS["weights" if cfg.weights_only else "keras"]


class PolicyCheckpoint(keras.callbacks.Callback):
    """Write checkpoints into `directory` as `cfg.policy` says.

    Args:
        cfg: the checkpoint config: policy, frequency, format, and what to keep.
        directory: the folder for this run's checkpoints.
        on_write: called on the training thread as each checkpoint is written, in order, with its
            record (whose `written` says when the file is complete), the training logs it was
            written at, and the checkpoints the keep policies delete once it is.
        resumed: whether this continues an interrupted run, which wrote epoch 0 already.
        writes: how files are written, now or in the background; by default, now.
        on_file: called on the writing thread the moment a checkpoint's file is complete, before
            the keep policies delete any: to take what must outlive them.
    """

    def __init__(
        self,
        cfg: CheckpointConfig,
        directory: Path,
        on_write: Callable[[CheckpointRecord, dict, list[Path]], None],
        resumed: bool = False,
        writes: Optional[Writes] = None,
        on_file: Callable[[CheckpointRecord], None] = lambda record: None,
    ):
        super().__init__()
        self.cfg = cfg
        self.directory = directory
        self.on_write, self.on_file = on_write, on_file
        self.writes = writes
        self.format = checkpoint_format(cfg)
        self.by_batch = cfg.policy is CheckpointPolicy.every_n_batches
        self.resumed = resumed
        self.latest: Optional[CheckpointRecord] = None
        self._epoch = 0  # set as each epoch begins
        self._best: Optional[float] = None
        self._written: list[Written] = []  # on disk once written, for the keep policies
        self._writer = None

    def on_train_begin(self, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.writes is None:
            self.writes = Writes(self.model, background=False)
        prefix, width = ("cp-step", 6) if self.by_batch else ("cp", 4)
        self._writer = self.format.checkpoints(self.writes.model, self.directory, prefix, width, with_optimizer=not self.cfg.weights_only)
        if self.cfg.save_initial and not self.resumed:
            self._write(epoch=0, logs={})

    def on_train_batch_end(self, batch, logs=None):
        if self.by_batch and self._step() % self.cfg.every == 0:
            self._write(epoch=self._epoch, logs=logs or {})

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        completed = epoch + 1
        policy = self.cfg.policy
        if policy is CheckpointPolicy.every_epoch or (policy is CheckpointPolicy.every_n_epochs and completed % self.cfg.every == 0):
            self._write(epoch=completed, logs=logs or {})
        elif policy is CheckpointPolicy.best_only and self._improved(logs or {}):
            self._write(epoch=completed, logs=logs or {})

    def weights_file_at(self, step: int) -> Optional[Path]:
        """The Keras weights file written at this training step, if any: the bytes a training-state
        backup would write (in the background, written before the backup is)."""
        if self.latest is not None and self.latest.step == step and self.format is FORMATS["weights"]:
            return self.latest.path
        return None

    def state(self) -> dict:
        """What a resumed run needs to carry on the same policies: the best value so far, and the checkpoints on disk."""
        return {"checkpoint_best": self._best, "checkpoints": [[w.key, w.path.name, w.value] for w in self._written]}

    def load_state(self, state: dict) -> None:
        self._best = state.get("checkpoint_best")
        self._written = [Written(key, self.directory / name, value) for key, name, value in state.get("checkpoints", [])]

    def _improved(self, logs: dict) -> bool:
        if self.cfg.monitor not in logs:
            raise ConfigError(f"checkpoint.monitor={self.cfg.monitor!r} is not a logged metric: {', '.join(sorted(logs))}")
        value = float(logs[self.cfg.monitor])
        better = self._best is None or (value < self._best if self.cfg.mode is Mode.min else value > self._best)
        if better:
            self._best = value
        return better

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _write(self, epoch: int, logs: dict) -> None:
        """Write the checkpoint of this step (from the model, or its copy at this step in the
        background), then delete what the keep policies no longer keep."""
        step = self._step()
        key = step if self.by_batch else epoch
        self.writes.at_step()
        source = self.writes.model
        record = CheckpointRecord(
            path=self._writer.path(key),
            format=self.format,
            carries_optimizer=self._writer.carries_optimizer and source.optimizer.built,  # before the first step (cp-0000) there is no state yet
            epoch=epoch,
            step=step,
            value=float(logs[self.cfg.ranked_by]) if self.cfg.ranked_by in logs else None,
        )
        self._written = [w for w in self._written if w.key != key] + [Written(key, record.path, record.value)]  # a resumed run may write one again
        doomed = to_delete(self._written, self.cfg.keep, self.cfg.mode)
        self._written = [w for w in self._written if w not in doomed]

        def write() -> bool:
            self._writer.write(key)
            record.weights = snapshot(source.weights)
            record.optimizer_variables = snapshot(source.optimizer.variables) if source.optimizer.built else []
            self.on_file(record)
            for checkpoint in doomed:
                self._writer.remove(checkpoint.path)
            return True

        record.written = self.writes.submit(write)
        self.latest = record
        self.on_write(record, logs, [w.path for w in doomed])
