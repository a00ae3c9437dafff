"""The MLflow run around one job: where it is stored, what it is tagged with, how it ends.

A run is always ended: FINISHED on success, FAILED with the error as a tag and
the traceback as an artifact otherwise, so no run is left RUNNING.
"""

import json
import logging
import platform
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import mlflow
import requests
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID
from sqlalchemy.exc import SQLAlchemyError

from pipeline.config import Config, TrackingConfig
from pipeline.errors import PipelineError
from pipeline.paths import RunPaths, default_tracking_uri, hard_linked, sqlite_artifact_location, unwritable

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent.parent
JOURNAL = "tracking_journal.jsonl"
STAGING = ".uploading"  # files queued for upload, hard-linked as they were when queued

# MLflow registers its local-artifact dataset source twice, so it calls every source
# "ambiguous" between two identical classes. Nothing for a user to act on.
warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")


class Tracker:
    """Logging calls for one run, with paths relative to the job's output folder.

    Every call to the tracking store runs on one background thread, in the order it
    was made, so uploads and logging never hold up a training step; `flush` waits for
    them. Files are hard-linked into a staging folder when queued, so a checkpoint that
    is rotated away before its upload still arrives as it was.

    Every param, metric and tag also goes to a journal in the output folder. If the
    tracking server goes away mid-run, the job carries on locally and ends with an
    error that says where everything is; `python -m pipeline.sync` uploads it later.
    """

    def __init__(self, client: MlflowClient, run_id: str, output_dir: Path):
        self.client = client
        self.run_id = run_id
        self.output_dir = output_dir
        self.journal = output_dir / JOURNAL
        self.staging = output_dir / STAGING
        self.staging.mkdir(parents=True, exist_ok=True)
        self.lost: Optional[str] = None  # why the tracking server stopped answering
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-upload")
        self._journal_lock = threading.Lock()
        self._submitted = 0  # work queued so far, some of it queued by other queued work

    def record(self, kind: str, data: dict, step: Optional[int] = None) -> None:
        entry = {"kind": kind, "data": data, "step": step, "timestamp": int(time.time() * 1000)}
        with self._journal_lock, self.journal.open("a") as journal:
            journal.write(json.dumps(entry) + "\n")

    def background(self, call: Callable[[], Any]) -> None:
        """Queue work for the tracking thread: calls to the store, or local work (a plot, a file) in order with them."""
        self._submitted += 1
        self._worker.submit(self._logged, call)

    def remote(self, action: str, call: Callable[[], Any]) -> None:
        """Queue one call to the tracking store; after the first failure, skip them all."""
        self.background(lambda: self.now(action, call))

    def now(self, action: str, call: Callable[[], Any]) -> Any:
        """Make one call to the tracking store in this thread, unless the store is lost."""
        if self.lost is not None:
            return None
        try:
            return call()
        except (MlflowException, requests.RequestException) as error:
            self.lost = f"{action} failed: {str(error).splitlines()[0]}"
            log.error("mlflow  | lost the tracking store at %s (%s); carrying on, everything stays in %s", self.client.tracking_uri, self.lost, self.output_dir)
            return None

    @staticmethod
    def _logged(call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception:  # a bug in background work must not vanish with its thread
            log.exception("mlflow  | background work failed")

    def flush(self) -> None:
        """Wait until everything queued is done, including what queued work queued in turn."""
        while True:
            submitted = self._submitted
            self._worker.submit(lambda: None).result()
            if self._submitted == submitted:
                return

    def close(self) -> None:
        self.flush()
        self._worker.shutdown(wait=True)
        if self.lost is None:  # otherwise what is staged stays for `pipeline.sync`
            shutil.rmtree(self.staging, ignore_errors=True)

    def log_params(self, params: dict) -> None:
        self.record("params", params)
        self.remote("logging params", lambda: mlflow.log_params(params, run_id=self.run_id))

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        self.record("metrics", metrics, step)
        self.remote("logging metrics", lambda: mlflow.log_metrics(metrics, step=step, run_id=self.run_id))

    def set_tags(self, tags: dict) -> None:
        tags = {k: str(v) for k, v in tags.items()}
        self.record("tags", tags)
        self.remote("setting tags", lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()]))

    def metric_histories(self, names: list[str]) -> dict[str, list[float]]:
        """Each metric's values in step order, over every session of a resumed run."""
        return {name: [value for _, value in sorted(steps.items())] for name, steps in read_metrics(self.journal).items() if name in names}

    def latest_metrics(self) -> dict[str, float]:
        return {name: steps[max(steps)] for name, steps in read_metrics(self.journal).items()}

    def log_files(self, paths: Iterable[Path]) -> None:
        """Upload files, each under the artifact folder that mirrors its place on disk, as they are now."""
        for path in paths:
            batch = Path(tempfile.mkdtemp(dir=self.staging))  # unique, even beside what a killed session left
            staged = batch / path.relative_to(self.output_dir)
            staged.parent.mkdir(parents=True, exist_ok=True)
            if not hard_linked(path, staged):
                shutil.copy2(path, staged)
            self.remote(f"uploading {path.name}", lambda batch=batch: send_staged(self.client, self.run_id, batch))

    def log_dataset(self, features, targets, name: str, source: str, context: str) -> None:
        """Record a dataset as an MLflow input: its name, source, shape and content digest."""

        def log_input():
            dataset = mlflow.data.from_numpy(features, targets=targets, source=source, name=name)
            entity = DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
            try:
                self.client.log_inputs(self.run_id, [entity])
            except MlflowException:  # a parallel job stored the same dataset between MLflow's lookup and insert
                self.client.log_inputs(self.run_id, [entity])  # now the lookup finds it

        self.remote("logging a dataset", log_input)

    def log_keras_model(self, model, x_sample, registered_name: Optional[str], alias: str) -> None:
        """Log the model with MLflow's Keras flavor, so `mlflow.pyfunc.load_model` and
        `mlflow models serve` work on it; register it and set `alias` when a name is given.

        The signature is inferred from real inputs and outputs; MLflow 3.17's Keras flavor
        fails with `input_example`. Requirements are pinned from this environment rather
        than inferred, which would load the model again in a subprocess. `Model.log` is
        what `mlflow.keras.log_model` calls, with the run given explicitly, since the
        active run belongs to the main thread.
        """
        import keras
        import mlflow.keras
        import tensorflow as tf
        from mlflow.models import Model, infer_signature

        signature = infer_signature(x_sample, model.predict(x_sample, verbose=0))

        def log_model():
            info = Model.log(
                artifact_path=None,
                name="model",
                flavor=mlflow.keras,
                model=model,
                signature=signature,
                pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
                registered_model_name=registered_name,
                run_id=self.run_id,
            )
            if registered_name:
                self.client.set_registered_model_alias(registered_name, alias, info.registered_model_version)
            self.set_tags({"mlflow_model_uri": info.model_uri})
            registered = f", registered as {registered_name}@{alias}" if registered_name else ""
            log.info("mlflow  | logged the model as %s%s", info.model_uri, registered)

        self.remote("logging the MLflow model", log_model)

    def log_folder(self, folder: Path, artifact_path: Optional[str] = None) -> None:
        if artifact_path is None:
            artifact_path = folder.relative_to(self.output_dir).as_posix()
        self.remote(f"uploading {artifact_path}/", lambda: self.client.log_artifacts(self.run_id, str(folder), artifact_path))


def read_metrics(journal: Path) -> dict[str, dict[int, float]]:
    """Every metric in a journal as {name: {step: value}}; a repeated step keeps its last value."""
    metrics: dict[str, dict[int, float]] = {}
    for metric in journaled(journal).metrics:
        metrics.setdefault(metric.key, {})[metric.step] = metric.value
    return metrics


def read_journal(journal: Path) -> list[dict]:
    if not journal.exists():
        return []
    return [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]


@dataclass
class Journaled:
    """Everything a job's journal says it logged."""

    params: dict
    tags: dict
    metrics: list[Metric]
    status: str  # the last status recorded; FAILED if the job never ended


def journaled(journal: Path) -> Journaled:
    found = Journaled({}, {}, [], "FAILED")
    for entry in read_journal(journal):
        if entry["kind"] == "params":
            found.params.update(entry["data"])
        elif entry["kind"] == "tags":
            found.tags.update(entry["data"])
        elif entry["kind"] == "metrics":
            found.metrics += [Metric(k, v, entry["timestamp"], entry["step"] or 0) for k, v in entry["data"].items()]
        elif entry["kind"] == "status":
            found.status = entry["data"]["status"]
        elif entry["kind"] == "reopened" and "error" in found.tags:
            found.tags["interrupted_by"] = found.tags.pop("error")
    return found


def upload_journaled(client: MlflowClient, run_id: str, output_dir: Path, logged: Journaled) -> None:
    """Log params, tags and metrics in batches, then upload the job's artifacts (overwriting any already there).

    Files still staged go first: a session that was killed, or lost its store, had
    queued them but not sent them, and a checkpoint rotated away since is only there.
    Then every file still in place is uploaded, so the newest version of each name wins.
    """
    params = [Param(k, str(v)) for k, v in logged.params.items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in logged.tags.items()])
    for i in range(0, len(logged.metrics), 500):
        client.log_batch(run_id, metrics=logged.metrics[i : i + 500])
    for batch in sorted((output_dir / STAGING).glob("*")):
        send_staged(client, run_id, batch)
    for path, folder in RunPaths(output_dir).uploads():
        if path.is_dir():
            client.log_artifacts(run_id, str(path), folder)
        else:
            client.log_artifact(run_id, str(path), folder or None)


def send_staged(client: MlflowClient, run_id: str, batch: Path) -> None:
    """Upload a staged batch, each file under the artifact folder it sits in, then drop it.
    A failed upload raises before the drop, so the batch stays for a later session or sync."""
    for staged in sorted(f for f in batch.rglob("*") if f.is_file()):
        folder = staged.parent.relative_to(batch).as_posix()
        client.log_artifact(run_id, str(staged), None if folder == "." else folder)
    shutil.rmtree(batch)


def reopen(client: MlflowClient, run_id: str) -> None:
    """Mark an interrupted run RUNNING again. If it had crashed, its error becomes history
    (`interrupted_by`), so a resumed run that then finishes does not read as failed."""
    tags = client.get_run(run_id).data.tags
    client.update_run(run_id, status="RUNNING")
    if "error" in tags:
        client.set_tag(run_id, "interrupted_by", tags["error"])
        client.delete_tag(run_id, "error")


def catch_up(client: MlflowClient, run_id: str, output_dir: Path) -> None:
    """Log what an interrupted session journaled or staged but had not yet sent when it was killed."""
    logged = journaled(output_dir / JOURNAL)
    sent = {(m.key, m.step) for key in {m.key for m in logged.metrics} for m in client.get_metric_history(run_id, key)}
    logged.metrics = [m for m in logged.metrics if (m.key, m.step) not in sent]
    logged.tags = {}  # the resumed session sets its own
    upload_journaled(client, run_id, output_dir, logged)


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
    if uri.startswith(("http://", "https://")):
        check_reachable(uri)
    database = uri.removeprefix("sqlite:///").split("?")[0] if uri.startswith("sqlite:///") else None
    problem = unwritable(Path(database).parent) if database else None
    if problem:
        raise PipelineError(f"cannot create the MLflow store {uri}: {problem}; set paths.root, tracking.uri or MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(tracking.experiment)  # creates a new sqlite store's tables
    except (MlflowException, OSError, SQLAlchemyError) as error:
        raise PipelineError(f"cannot open the MLflow store {uri}: {str(error).splitlines()[0]}") from None
    if database:
        use_write_ahead_log(database)
    if experiment is not None:
        return client, experiment.experiment_id
    location = sqlite_artifact_location(database, tracking.experiment) if database else None  # a server decides for itself
    return client, client.create_experiment(tracking.experiment, artifact_location=location)


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
    tracker = Tracker(client, run_id, output_dir)
    if resume_run_id is None:
        tracker.record("tags", tags)  # already on the new run
    else:
        tracker.record("reopened", {})
        tracker.now("reopening the run", lambda: reopen(client, run_id))
        tracker.now("catching up the interrupted session", lambda: catch_up(client, run_id, output_dir))
        tracker.set_tags(tags)  # this session's pid, overrides and versions
    log.info("mlflow  | %s run %s in experiment %r at %s", "resumed" if resume_run_id else "new", run_id, settings.tracking.experiment, client.tracking_uri)
    try:
        yield tracker
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        tracker.set_tags({"error": f"{type(error).__name__}: {error}"[:5000]})
        trace = traceback.format_exc()
        tracker.remote("logging the traceback", lambda: client.log_text(run_id, trace, "error/traceback.txt"))
        _end(tracker, status)
        log.error("mlflow  | run %s marked %s; outputs kept in %s", run_id, status, output_dir)
        raise
    _end(tracker, "FINISHED")
    if tracker.lost:
        raise PipelineError(
            f"the run finished but its tracking was lost ({tracker.lost}); every output is in {output_dir}: "
            f"upload it with `python -m pipeline.sync {output_dir}`"
        )


def _end(tracker: Tracker, status: str) -> None:
    """Wait for every queued upload, then end the run."""
    tracker.record("status", {"status": status})
    tracker.close()
    tracker.now("ending the run", lambda: tracker.client.set_terminated(tracker.run_id, status))
