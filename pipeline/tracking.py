"""The MLflow run around one job: where it is stored, what it is tagged with, how it ends.

A run is always ended: FINISHED on success, FAILED with the error as a tag and
the traceback as an artifact otherwise, so no run is left RUNNING.
"""

import logging
import subprocess
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

import mlflow
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags

from pipeline.config import Config
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

    def log_files(self, paths: Iterable[Path]) -> None:
        """Upload files, each under the artifact folder that mirrors its place on disk."""
        for path in paths:
            folder = path.parent.relative_to(self.output_dir).as_posix()
            self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)

    def log_folder(self, folder: Path, artifact_path: Optional[str] = None) -> None:
        if artifact_path is None:
            artifact_path = folder.relative_to(self.output_dir).as_posix()
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)


def tracking_uri(settings: Config) -> str:
    return settings.tracking.uri or default_tracking_uri(settings.paths.root)


def git_state() -> dict:
    """The commit the code ran from, and whether it had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_DIR, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"git.commit": git("rev-parse", "HEAD"), "git.dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {}


def _experiment_id(client: MlflowClient, settings: Config) -> str:
    experiment = client.get_experiment_by_name(settings.tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = None if settings.tracking.uri else default_artifact_location(settings.paths.root, settings.tracking.experiment)
    return client.create_experiment(settings.tracking.experiment, artifact_location=location)


@contextmanager
def tracked_run(settings: Config, output_dir: Path, tags: dict) -> Iterator[Tracker]:
    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    run = client.create_run(_experiment_id(client, settings), run_name=settings.tracking.run_name, tags=resolve_tags({k: str(v) for k, v in tags.items()}))
    tracker = Tracker(client, run.info.run_id, output_dir)
    log.info("mlflow  | run %s in experiment %r at %s", run.info.run_id, settings.tracking.experiment, uri)
    try:
        yield tracker
    except BaseException as error:
        client.set_tag(run.info.run_id, "error", f"{type(error).__name__}: {error}"[:5000])
        client.log_text(run.info.run_id, traceback.format_exc(), "error/traceback.txt")
        client.set_terminated(run.info.run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        log.error("mlflow  | run %s marked FAILED; outputs kept in %s", run.info.run_id, output_dir)
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
