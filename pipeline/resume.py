"""Resuming an interrupted run: training-state backups, restoring them, and finding the run to continue.

At the end of every epoch the whole training state (layer and optimizer variables,
the epoch, the MLflow run, the checkpoint policy's memory) is written to
`resume/`, each file atomically, keeping the last two states. This is separate
from the user's checkpoint policy, so resuming works whatever that policy is.
(`pipeline.determinism` makes the epochs after a resume draw what they would have.)
"""

import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import keras

from pipeline.errors import ConfigError
from pipeline.files import atomic_path, hard_linked
from pipeline.formats import FORMATS
from pipeline.formats.base import build_optimizer

log = logging.getLogger(__name__)

KEEP = 2  # the newest state, and the one to fall back on if the newest is unreadable
WEIGHTS = FORMATS["weights"]  # Keras weight files hold the optimizer's variables too


@dataclass
class ResumePoint:
    epoch: int  # epochs completed; training continues with the next one
    state: dict


class TrainingBackup(keras.callbacks.Callback):
    """Write the full training state at every epoch end.

    Args:
        directory: the run's `resume/` folder.
        run_id: the MLflow run to continue logging into.
        extra_state: returns more JSON-able state to keep (the checkpoint policy's best value).
        written_at: returns a weights file already written at a training step, if any,
            to hard-link instead of writing the same bytes again.
    """

    def __init__(self, directory: Path, run_id: str, extra_state: Callable[[], dict], written_at: Callable[[int], Optional[Path]]):
        super().__init__()
        self.directory = directory
        self.run_id = run_id
        self.extra_state = extra_state
        self.written_at = written_at

    def on_epoch_end(self, epoch, logs=None):
        completed = epoch + 1
        step = int(self.model.optimizer.iterations.numpy())
        weights = self.directory / f"epoch-{completed:04d}{WEIGHTS.suffix}"
        same = self.written_at(step)
        with atomic_path(weights) as temporary:
            if same is None or not hard_linked(same, temporary):
                WEIGHTS.save(self.model, temporary)
        state = {"epoch": completed, "step": step, "run_id": self.run_id, **self.extra_state()}
        with atomic_path(weights.with_suffix("").with_suffix(".json")) as temporary:
            temporary.write_text(json.dumps(state))
        for old in saved_states(self.directory)[KEEP:]:
            # Weights first: a kill between the two unlinks leaves a JSON that the next
            # prune still sees, never a weights file that no state lists.
            (self.directory / f"{old.stem}{WEIGHTS.suffix}").unlink(missing_ok=True)
            old.unlink()


def saved_states(directory: Path) -> list[Path]:
    """The state files in a resume folder, newest first. A state counts once its JSON is written."""
    return sorted(directory.glob("epoch-*.json"), reverse=True)


def restore(directory: Path, model: keras.Model) -> Optional[ResumePoint]:
    """Load the newest readable state into `model`; say so when falling back to an older one."""
    build_optimizer(model)
    for state_file in saved_states(directory):
        weights = directory / f"{state_file.stem}{WEIGHTS.suffix}"
        try:
            state = json.loads(state_file.read_text())
            model.load_weights(weights)
        except Exception as error:  # truncated or corrupt: try the previous state
            log.warning("resume  | %s is unreadable (%s: %s); falling back to the previous state", weights.name, type(error).__name__, error)
            continue
        log.info("resume  | restored %s: continuing from epoch %d (step %d)", weights.name, state["epoch"] + 1, state["step"])
        return ResumePoint(state["epoch"], state)
    return None


def process_alive(state_owner: dict) -> bool:
    """Whether the process that wrote a run is still running on this machine."""
    if state_owner.get("host") != socket.gethostname() or not state_owner.get("pid"):
        return False
    try:
        os.kill(int(state_owner["pid"]), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def owner_tags() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def find_run_to_resume(client, experiment_id: Optional[str], resume: Optional[str], config_digest: str, epochs: int) -> Optional[tuple[str, Path]]:
    """The (run id, output folder) to continue, or None to start a fresh run.

    `resume` is "auto" (an unfinished run of the same config whose process is gone),
    a run id, an output folder, or None (always start fresh).
    """
    if resume is None:
        return None
    if resume == "auto":
        if experiment_id is None:
            return None
        runs = client.search_runs(
            [experiment_id], f"tags.config_digest = '{config_digest}' and attributes.status != 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=10
        )
        for run in runs:
            folder = Path(run.data.tags.get("output_dir", ""))
            states = saved_states(folder / "resume") if folder.is_dir() else []
            if states and not process_alive(run.data.tags) and json.loads(states[0].read_text())["epoch"] < epochs:
                return run.info.run_id, folder
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
    return run.info.run_id, Path(run.data.tags["output_dir"])
