"""Resuming an interrupted run: training-state backups, restoring them, and finding the run to continue.

The whole training state is written to `resume/` at every epoch end, every
`resume_every_seconds` of training if set, and at the step where a signal stopped the
job: layer and optimizer variables, the epoch and the batch within it, the MLflow run,
the checkpoint policy's memory, the callbacks' state (EarlyStopping, ReduceLROnPlateau),
and, mid-epoch, the epoch's metric sums and the dropout seed generators. Each file is
written atomically, its JSON last, and the last two states are kept. The weights are written
as the checkpoints are (`pipeline.background`): in the background, from the copy of the model
at the step, after the checkpoints asked for before. This is separate
from the user's checkpoint policy, so resuming works whatever that policy is.
(`pipeline.determinism` makes the batches after a resume the ones there would have been.)
"""

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import keras
import numpy as np
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pipeline import interrupts
from pipeline.background import Writes
from pipeline.determinism import seed_states
from pipeline.errors import ConfigError
from pipeline.files import atomic_path, hard_linked
from pipeline.formats import FORMATS
from pipeline.formats.base import build_optimizer
from pipeline.owner import process_alive
from pipeline.page_cache import Recycled

log = logging.getLogger(__name__)

KEEP = 2  # the newest state, and the one to fall back on if the newest is unreadable
WEIGHTS = FORMATS["weights"]  # Keras weight files hold the optimizer's variables too
NAME = re.compile(r"epoch-(\d+)(?:-batch-(\d+))?$")  # epochs completed, and batches of the next one
# What fit() resets at its start that a resumed run must carry on: the callbacks' counters and bests.
CALLBACK_FIELDS = {
    keras.callbacks.EarlyStopping: ("wait", "stopped_epoch", "best", "best_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
}


@dataclass
class ResumePoint:
    epoch: int  # epochs completed; training continues with the next one
    batch: int  # batches of that next epoch already trained (0: at its start)
    state: dict
    arrays: dict = field(default_factory=dict)  # mid-epoch metric sums and seed states, callbacks' best weights


def callback_state(callbacks: list) -> tuple[dict, dict]:
    """The state of the callbacks that keep one, as JSON-able values and arrays (EarlyStopping's best weights)."""
    values, arrays = {}, {}
    for index, callback in enumerate(callbacks):
        fields = next((names for kind, names in CALLBACK_FIELDS.items() if isinstance(callback, kind)), ())
        values.update({f"{index}.{name}": _plain(getattr(callback, name, None)) for name in fields})
        for i, array in enumerate(getattr(callback, "best_weights", None) or []):
            arrays[f"callback.{index}.best_weights.{i}"] = array
    return values, arrays


def set_callback_state(callbacks: list, values: dict, arrays: dict) -> None:
    for key, value in values.items():
        index, name = key.split(".", 1)
        setattr(callbacks[int(index)], name, value)
    for index, callback in enumerate(callbacks):
        best = [arrays[key] for key in sorted((k for k in arrays if k.startswith(f"callback.{index}.best_weights.")), key=lambda k: int(k.rsplit(".", 1)[1]))]
        if best:
            callback.best_weights = best


def _plain(value):
    """A callback's number as JSON keeps it: numpy scalars become Python ones; infinities survive as floats."""
    return value.item() if isinstance(value, np.generic) else value


class TrainingState(keras.callbacks.Callback):
    """Write the full training state at every epoch end, every `every_seconds` of training, and at
    the step where a signal asked the job to stop (then stop it); on a resume, put back what
    fit() resets. Place it after every other callback: it reads their state and restores it after
    their own `on_train_begin`.

    Args:
        directory: the run's `resume/` folder.
        run_id: the MLflow run to continue logging into.
        callbacks: the callbacks whose state is kept (the others are stateless or keep their own).
        extra_state: returns more JSON-able state to keep (the checkpoint policy's best value).
        written_at: returns a weights file already written at a training step, if any,
            to hard-link instead of writing the same bytes again.
        resumed: the state this session started from, to put back.
        every_seconds: also write the state this often during training (None: only at epoch ends).
        writes: how files are written, now or in the background; by default, now.
    """

    def __init__(
        self,
        directory: Path,
        run_id: str,
        callbacks: list,
        extra_state: Callable[[], dict],
        written_at: Callable[[int], Optional[Path]],
        resumed: Optional[ResumePoint] = None,
        every_seconds: Optional[float] = None,
        writes: Optional[Writes] = None,
    ):
        super().__init__()
        self.directory, self.run_id, self.callbacks = directory, run_id, callbacks
        self.extra_state, self.written_at = extra_state, written_at
        self.resumed, self.every_seconds, self.writes = resumed, every_seconds, writes
        self._epoch, self._last_write = 0, time.monotonic()
        self._cache = Recycled()  # each state's weights written into the page-cache memory of the one before

    def on_train_begin(self, logs=None):
        if self.writes is None:
            self.writes = Writes(self.model, background=False)
        if self.resumed:
            set_callback_state(self.callbacks, self.resumed.state.get("callbacks", {}), self.resumed.arrays)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        point = self.resumed
        if point and point.batch and epoch == point.epoch:  # mid-epoch: the metric sums so far, the masks to come
            for variable in _mid_epoch_variables(self.model):
                variable.assign(point.arrays[variable.path])

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.params["steps"]:  # the epoch's end is near: it writes the state, and stops there if asked
            return
        done = batch + 1 + (self.resumed.batch if self.resumed and self._epoch == self.resumed.epoch else 0)
        if interrupts.requested() is not None:
            self._write(self._epoch, done)
            self._stop_if_asked()
        if self.every_seconds and time.monotonic() - self._last_write >= self.every_seconds:
            self._write(self._epoch, done)

    def on_epoch_end(self, epoch, logs=None):
        self._write(epoch + 1, 0)
        self._stop_if_asked()

    def _stop_if_asked(self) -> None:
        """Stop the training if a signal asked to, once the state just asked for is on disk."""
        if interrupts.requested() is not None:
            self.writes.wait()
            interrupts.check()

    def _write(self, completed: int, batch: int) -> None:
        """One state: its weights (and arrays) first, its JSON last, so a state counts only once
        whole. What it holds is read now, at the step; the files are written as `writes` writes."""
        step = int(self.model.optimizer.iterations.numpy())
        stem = f"epoch-{completed:04d}" + (f"-batch-{batch:06d}" if batch else "")
        callbacks, arrays = callback_state(self.callbacks)
        if batch:
            arrays.update({v.path: np.array(v.numpy()) for v in _mid_epoch_variables(self.model)})  # copies: written later
        state = {"epoch": completed, "batch": batch, "step": step, "stopped": bool(self.model.stop_training), "run_id": self.run_id, "callbacks": callbacks, **self.extra_state()}
        same = self.written_at(step)
        self.writes.at_step()
        source = self.writes.model

        def write() -> None:
            weights = self.directory / f"{stem}{WEIGHTS.suffix}"
            with atomic_path(weights) as temporary:
                if same is None or not hard_linked(same, temporary):
                    self._cache.release()
                    WEIGHTS.save(source, temporary)
                    self._cache.hold([weights])  # its name once the write is done, as the next one looks
            if arrays:
                with atomic_path(self.directory / f"{stem}.npz") as temporary, temporary.open("wb") as file:
                    np.savez(file, **arrays)
            with atomic_path(self.directory / f"{stem}.json") as temporary:
                temporary.write_text(json.dumps(state))
            for old in saved_states(self.directory)[KEEP:]:
                # Data first: a kill between the unlinks leaves a JSON that the next prune still
                # sees, never a weights file that no state lists.
                for data in (f"{old.stem}{WEIGHTS.suffix}", f"{old.stem}.npz"):
                    (self.directory / data).unlink(missing_ok=True)
                old.unlink()

        self.writes.submit(write)
        self._last_write = time.monotonic()


def _mid_epoch_variables(model: keras.Model) -> list:
    """What a state written mid-epoch needs besides the weights: the epoch's metric sums (the
    epoch's logged metrics are means over all its batches) and the dropout seed generators."""
    return [*model.metrics_variables, *seed_states(model)]


def build_metrics(model: keras.Model, x, y) -> None:
    """Create the compiled metrics' variables, which Keras makes on the first step, so a
    state written mid-epoch can be put back into them before it."""
    replicas = model.distribute_strategy.num_replicas_in_sync  # an example for each, or a replica's share is empty
    model.evaluate(x[:replicas], y[:replicas], batch_size=replicas, verbose=0)


def _order(state_file: Path) -> tuple[int, int]:
    found = NAME.match(state_file.stem)
    return (int(found.group(1)), int(found.group(2) or 0)) if found else (-1, -1)


def saved_states(directory: Path) -> list[Path]:
    """The state files in a resume folder, newest first. A state counts once its JSON is written."""
    return sorted(directory.glob("epoch-*.json"), key=_order, reverse=True)


def restore(directory: Path, model: keras.Model) -> Optional[ResumePoint]:
    """Load the newest readable state into `model`; say so when falling back to an older one."""
    build_optimizer(model)
    for state_file in saved_states(directory):
        weights, extra = directory / f"{state_file.stem}{WEIGHTS.suffix}", directory / f"{state_file.stem}.npz"
        try:
            state = json.loads(state_file.read_text())
            model.load_weights(weights)
            arrays = {}
            if extra.exists():
                with np.load(extra) as stored:
                    arrays = {key: stored[key] for key in stored.files}
        except Exception as error:  # truncated or corrupt: try the previous state
            log.warning("resume  | %s is unreadable (%s: %s); falling back to the previous state", weights.name, type(error).__name__, error)
            continue
        batch = state.get("batch", 0)
        where = f"epoch {state['epoch'] + 1}" + (f" at batch {batch + 1}" if batch else "")
        log.info("resume  | restored %s: continuing from %s (step %d)", weights.name, where, state["step"])
        return ResumePoint(state["epoch"], batch, state, arrays)
    return None


def find_run_to_resume(
    client, experiment_id: Optional[str], resume: Optional[str], config_digest: str, epochs: int, parent: Optional[str] = None, trial: Optional[int] = None
) -> Optional[tuple[str, Path, bool]]:
    """The (run id, output folder, whether it has a training state) to continue, or None to start a fresh run.

    `resume` is "auto" (an unfinished run of the same config whose process is gone; in a sweep,
    one of that sweep's, `parent`, and of the Optuna `trial`, if any), a run id, an output folder,
    or None (always start fresh).
    A sweep's job that was killed before its first state starts over in its own run, so the
    sweep keeps one run per job.
    """
    if resume is None:
        return None
    if resume == "auto":
        if experiment_id is None:
            return None
        runs = client.search_runs(
            [experiment_id], f"tags.config_digest = '{config_digest}' and attributes.status != 'FINISHED'{_in_sweep(parent, trial)}", order_by=["attributes.start_time DESC"], max_results=10
        )
        for run in (r for r in runs if not process_alive(r.data.tags)):
            folder = Path(run.data.tags.get("output_dir", ""))
            states = saved_states(folder / "resume") if folder.is_dir() else []
            if states and json.loads(states[0].read_text())["epoch"] <= epochs:  # all trained: it goes on to save and verify
                return run.info.run_id, folder, True
            if not states and parent:
                return run.info.run_id, folder, False
        return None
    folder = Path(resume).expanduser()
    if folder.is_dir():
        states = saved_states(folder / "resume")
        if not states:
            raise ConfigError(f"resume={resume}: no saved training state in {folder / 'resume'}")
        resume = json.loads(states[0].read_text())["run_id"]
    try:
        run = client.get_run(resume)
    except Exception:
        raise ConfigError(f"resume={resume!r} is neither an output folder nor a run id in the tracking store; use auto, null, a run id or a folder") from None
    if run.data.tags.get("config_digest") != config_digest:
        raise ConfigError(f"resume={resume}: run {run.info.run_id} has a different config; resume continues the same experiment, so run it with that run's config")
    return run.info.run_id, Path(run.data.tags["output_dir"]), True


def finished_in_sweep(client, experiment_id: str, parent: str, config_digest: str, trial: Optional[int] = None):
    """The FINISHED run of this config in the sweep `parent` (as the Optuna `trial`, if any), if a run of the sweep already did the job."""
    runs = client.search_runs([experiment_id], f"tags.config_digest = '{config_digest}' and attributes.status = 'FINISHED'{_in_sweep(parent, trial)}", max_results=1)
    return runs[0] if runs else None


def _in_sweep(parent: Optional[str], trial: Optional[int]) -> str:
    """A sweep's job has its own run: one of the sweep `parent`'s and, in an Optuna search, of its `trial`
    (a trial that happens to draw another's values is a trial of its own)."""
    scope = f" and tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'" if parent else ""
    return scope + (f" and tags.`optuna.trial` = '{trial}'" if trial is not None else "")
