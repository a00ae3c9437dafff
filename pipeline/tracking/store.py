"""Which MLflow store a job uses, and connecting to it: fail fast on an unreachable server,
keep a sqlite store's artifacts beside it, and let parallel jobs share one sqlite file.
The store is opened in its own process (`pipeline.tracking.service`)."""

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import requests
from mlflow.exceptions import MlflowException

from pipeline.config import TrackingConfig
from pipeline.errors import PipelineError
from pipeline.files import unwritable
from pipeline.tracking.service import StoreClient


def default_tracking_uri(outputs_root: str) -> str:
    """The sqlite store used when neither config nor MLFLOW_TRACKING_URI names one."""
    return f"sqlite:///{Path(outputs_root).resolve() / 'mlflow.db'}"


def command_line_tracking_uri() -> str:
    """Where `pipeline.reproduce` and `pipeline.sync` look by default: MLFLOW_TRACKING_URI, else the default store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri("outputs")


def sqlite_artifact_location(database: str, experiment: str) -> str:
    """A sqlite store's artifacts sit beside it, not in ./mlruns of whatever folder a run starts in."""
    return (Path(database).resolve().parent / "mlartifacts" / experiment).as_uri()


EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def connect(tracking: TrackingConfig, outputs_root: str) -> tuple[StoreClient, str]:
    """The client for the configured store and the experiment's id, creating it if needed."""
    uri = tracking.uri or default_tracking_uri(outputs_root)
    if uri.startswith(("http://", "https://")):
        check_reachable(uri)
    database = uri.removeprefix("sqlite:///").split("?")[0] if uri.startswith("sqlite:///") else None
    problem = unwritable(Path(database).parent) if database else None
    if problem:
        raise PipelineError(f"cannot create the MLflow store {uri}: {problem}; set paths.root, tracking.uri or MLFLOW_TRACKING_URI")
    try:
        client = StoreClient(uri)
        experiment = client.get_experiment_by_name(tracking.experiment)  # creates a new sqlite store's tables
    except (MlflowException, OSError) as error:
        raise PipelineError(f"cannot open the MLflow store {uri}: {str(error).splitlines()[0]}") from None
    if database:
        use_write_ahead_log(database)
    if experiment is not None:
        return client, experiment.experiment_id
    location = sqlite_artifact_location(database, tracking.experiment) if database else None  # a server decides for itself
    # The kind tells MLflow's UI to open the experiment in its model-training view, not the GenAI one.
    return client, client.create_experiment(tracking.experiment, artifact_location=location, tags={EXPERIMENT_KIND: MODEL_TRAINING})


def check_reachable(uri: str) -> None:
    """Fail in seconds, before any work, rather than after MLflow's minutes of retries."""
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
    except requests.RequestException as error:
        raise PipelineError(
            f"tracking server {uri} is unreachable ({type(error).__name__}); start it, or point MLFLOW_TRACKING_URI / tracking.uri at a reachable one"
        ) from None


def use_write_ahead_log(database: str) -> None:
    """Let parallel sweep jobs share one sqlite store.

    In sqlite's default journal mode a reader that turns writer can fail at once with
    "database is locked", whatever the busy timeout; in WAL mode readers never block the
    one writer. The mode is stored in the file, so this is set once per store.
    """
    with closing(sqlite3.connect(database, timeout=30)) as db:
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode=WAL")
