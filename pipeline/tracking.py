"""The MLflow run around one job: where it is stored, what it is tagged with, how it ends.

A run is always ended: FINISHED on success, FAILED with the error as a tag and
the traceback as an artifact otherwise, so no run is left RUNNING.
"""

import logging
import platform
import sqlite3
import subprocess
import traceback
from contextlib import closing, contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator, Optional

import mlflow
from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID

from pipeline.config import Config, TrackingConfig
from pipeline.paths import default_artifact_location, default_tracking_uri

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent.parent


class Tracker:
    """Logging calls for one run, with paths relative to the job's output folder."""

    def __init__(self, client: MlflowClient, run_id: str, output_dir: Path):
        self.client = client
        self.run_id = run_id
        self.output_dir = output_dir

    def log_params(self, params: dict) -> None:
        mlflow.log_params(params, run_id=self.run_id)

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, run_id=self.run_id)

    def set_tags(self, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def metric_histories(self, names: list[str]) -> dict[str, list[float]]:
        """Each metric's values in step order, over every session of a resumed run."""
        histories = {name: sorted(self.client.get_metric_history(self.run_id, name), key=lambda m: m.step) for name in names}
        return {name: [m.value for m in history] for name, history in histories.items() if history}

    def log_files(self, paths: Iterable[Path]) -> None:
        """Upload files, each under the artifact folder that mirrors its place on disk."""
        for path in paths:
            folder = path.parent.relative_to(self.output_dir).as_posix()
            self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)

    def log_dataset(self, features, targets, name: str, source: str, context: str) -> None:
        """Record a dataset as an MLflow input: its name, source, shape and content digest."""
        dataset = mlflow.data.from_numpy(features, targets=targets, source=source, name=name)
        self.client.log_inputs(self.run_id, [DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])])

    def log_folder(self, folder: Path, artifact_path: Optional[str] = None) -> None:
        if artifact_path is None:
            artifact_path = folder.relative_to(self.output_dir).as_posix()
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)


def git_state() -> dict:
    """The commit the code ran from, and whether it had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_DIR, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"git.commit": git("rev-parse", "HEAD"), "git.dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {}


def connect(tracking: TrackingConfig, outputs_root: str) -> tuple[MlflowClient, str]:
    """The client for the configured store and the experiment's id, creating it if needed."""
    uri = tracking.uri or default_tracking_uri(outputs_root)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking.experiment)  # creates a new sqlite store's tables
    if uri.startswith("sqlite:///"):
        use_write_ahead_log(uri.removeprefix("sqlite:///").split("?")[0])
    if experiment is not None:
        return client, experiment.experiment_id
    location = None if tracking.uri else default_artifact_location(outputs_root, tracking.experiment)
    return client, client.create_experiment(tracking.experiment, artifact_location=location)


def use_write_ahead_log(database: str) -> None:
    """Let parallel sweep jobs share one sqlite store.

    In sqlite's default journal mode a reader that turns writer can fail at once with
    "database is locked", whatever the busy timeout; in WAL mode readers never block the
    one writer. The mode is stored in the file, so this is set once per store.
    """
    with closing(sqlite3.connect(database, timeout=30)) as db:
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode=WAL")


def environment_tags() -> dict:
    """What a re-run needs to match: library versions and the platform."""
    versions = {name: metadata.version(name) for name in ("tensorflow", "keras", "mlflow", "hydra-core", "numpy")}
    return {"version.python": platform.python_version(), **{f"version.{k}": v for k, v in versions.items()}, "platform": platform.platform()}


def installed_packages() -> str:
    """`pip freeze` without a pip subprocess: every installed distribution as name==version."""
    names = {f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]}
    return "\n".join(sorted(names, key=str.lower)) + "\n"


@contextmanager
def tracked_run(client: MlflowClient, experiment_id: str, settings: Config, output_dir: Path, tags: dict, resume_run_id: Optional[str] = None) -> Iterator[Tracker]:
    """Open a new run, or reopen `resume_run_id`, and always end it with a final status."""
    tags = {k: str(v) for k, v in tags.items()}
    if settings.tracking.parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = settings.tracking.parent_run_id
    if resume_run_id is None:
        run_id = client.create_run(experiment_id, run_name=settings.tracking.run_name or None, tags=resolve_tags(tags)).info.run_id
    else:
        run_id = resume_run_id
        client.update_run(run_id, status="RUNNING")
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
    tracker = Tracker(client, run_id, output_dir)
    log.info("mlflow  | %s run %s in experiment %r at %s", "resumed" if resume_run_id else "new", run_id, settings.tracking.experiment, client.tracking_uri)
    try:
        yield tracker
    except BaseException as error:
        client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:5000])
        client.log_text(run_id, traceback.format_exc(), "error/traceback.txt")
        client.set_terminated(run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        log.error("mlflow  | run %s marked %s; outputs kept in %s", run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED", output_dir)
        raise
    client.set_terminated(run_id, "FINISHED")
