"""Every file location the pipeline uses, derived from the job's output folder.

The same relative layout is used for the MLflow artifacts, so a run's artifact
tree in the UI mirrors its folder on disk.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


@dataclass(frozen=True)
class RunPaths:
    """The output folder of one job."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def resume(self) -> Path:
        """The last two full training states, for continuing an interrupted run."""
        return self.root / "resume"

    def saved(self, format_name: str) -> Path:
        return self.root / "saved" / format_name

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def inspection(self, format_name: str) -> Path:
        """`pipeline.inspect`'s report on a saved artifact, without its .txt/.json suffix."""
        return self.reports / "inspect" / format_name

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def hydra(self) -> Path:
        """Hydra's record of the job: config.yaml, overrides.yaml, hydra.yaml."""
        return self.root / ".hydra"

    @property
    def resolved_config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def model_summary(self) -> Path:
        return self.root / "model_summary.txt"

    @property
    def requirements(self) -> Path:
        """The installed packages, as `pip freeze` would list them."""
        return self.root / "environment" / "requirements.txt"

    def uploads(self) -> list[tuple[Path, str]]:
        """What a run uploads as artifacts, as (local path, artifact folder) pairs, for those that exist."""
        files = [(self.resolved_config, ""), (self.model_summary, "")]
        folders = [(self.hydra, "hydra"), (self.requirements.parent, "environment")]
        folders += [(self.root / name, name) for name in ("checkpoints", "saved", "reports", "plots", "tensorboard")]
        return [(path, folder) for path, folder in files + folders if path.exists()]


def default_tracking_uri(outputs_root: str) -> str:
    """The sqlite store used when neither config nor MLFLOW_TRACKING_URI names one."""
    return f"sqlite:///{Path(outputs_root).resolve() / 'mlflow.db'}"


def command_line_tracking_uri() -> str:
    """Where `pipeline.reproduce` and `pipeline.sync` look by default: MLFLOW_TRACKING_URI, else the default store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri("outputs")


def sqlite_artifact_location(database: str, experiment: str) -> str:
    """A sqlite store's artifacts sit beside it, not in ./mlruns of whatever folder a run starts in."""
    return (Path(database).resolve().parent / "mlartifacts" / experiment).as_uri()


def disk_bytes(path: Path) -> int:
    """Size of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def hard_linked(source: Path, link: Path) -> bool:
    """Give `source`'s bytes a second name, unless the file system cannot."""
    try:
        os.link(source, link)
    except OSError:
        return False
    return True


def unwritable(folder: Path) -> Optional[str]:
    """Why `folder` cannot be created or written to, or None if it can."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


class OutputFolderCheck(Callback):
    """Refuse an output folder that cannot be written, in one line, before Hydra tries to create it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir)

    @staticmethod
    def _check(folder: str) -> None:
        problem = unwritable(Path(folder))
        if problem:
            raise SystemExit(f"error: cannot write the output folder {folder}: {problem}; choose another with paths.root or hydra.run.dir")

