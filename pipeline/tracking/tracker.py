"""The logging calls of one run, made on a background thread through the run's own client."""

import logging
import shutil
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import requests
from mlflow.entities import DatasetInput, InputTag, Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from pipeline.files import linked_or_copied
from pipeline.priority import lowest_priority
from pipeline.tracking import service
from pipeline.tracking.journal import JOURNAL, MODEL_STAGING, STAGING, Journal, log_batches, read_metrics, send_staged
from pipeline.tracking.logged_model import LoggedKerasModel, log_keras_model

log = logging.getLogger(__name__)

# MLflow registers its local-artifact dataset source twice, so it calls every source
# "ambiguous" between two identical classes. Nothing for a user to act on.
warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")


class Tracker:
    """Logging calls for one run, with paths relative to the job's output folder.

    Every call to the tracking store runs on one background thread, in the order it
    was made, so uploads and logging never hold up a training step; `flush` waits for
    them. Files are hard-linked into a staging folder when queued, so a checkpoint that
    is rotated away before its upload still arrives as it was.

    Every param, metric and tag also goes to the journal in the output folder. If the
    tracking server goes away mid-run, the job carries on locally and ends with an
    error that says where everything is; `python -m pipeline.sync` uploads it later.
    """

    def __init__(self, client: MlflowClient, experiment_id: str, run_id: str, output_dir: Path):
        self.client = client
        self.experiment_id = experiment_id
        self.run_id = run_id
        self.output_dir = output_dir
        self.journal = Journal(output_dir / JOURNAL)
        self.staging = output_dir / STAGING
        self.staging.mkdir(parents=True, exist_ok=True)
        self.lost: Optional[str] = None  # why the tracking server stopped answering
        self.datasets: dict[str, tuple[str, str]] = {}  # context ("training", "evaluation") -> (name, digest), once logged
        self.model: Optional[LoggedKerasModel] = None  # the trained model, once logged
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-upload", initializer=lowest_priority)
        self._submitted = 0  # work queued so far, some of it queued by other queued work
        self._lock = threading.Lock()

    def record(self, kind: str, data: dict, step: Optional[int] = None) -> None:
        self.journal.record(kind, data, step)

    def background(self, call: Callable[[], Any]) -> None:
        """Queue work for the tracking thread: calls to the store, or local work (a file, a picture sent `aside`) in order with them."""
        with self._lock:  # the system-metrics thread queues work too
            self._submitted += 1
        self._worker.submit(self._logged, call)

    @staticmethod
    def aside(function: Callable[..., Any], *args) -> Any:
        """`function(*args)` in the tracking process, on a core of its own (`service.beside`): the
        tracking's own CPU work, such as drawing, which on this process's interpreter lock would slow
        the training or verification beside it. Called on the tracking thread, in order."""
        return service.beside(function, *args)

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
            shutil.rmtree(self.output_dir / MODEL_STAGING, ignore_errors=True)

    def log_params(self, params: dict) -> None:
        self.record("params", params)
        self.remote("logging params", lambda: log_batches(self.client, self.run_id, params=params))

    def log_metrics(self, metrics: dict, step: Optional[int] = None, model: Optional[Callable[[], Optional[str]]] = None, dataset: Optional[str] = None) -> None:
        """Log metrics at a step. With `model`, a function asked on the tracking thread (after the
        work queued before this call) for the LoggedModel the metrics were measured on, they are
        linked to it and to a dataset: `dataset`'s, or by Keras's naming, `val_*` on the evaluation
        data and the rest on the training data."""
        metrics = {k: float(v) for k, v in metrics.items()}
        self.record("metrics", metrics, step)
        timestamp = int(time.time() * 1000)

        def log():
            model_id = model() if model else None
            batch = [Metric(k, v, timestamp, step or 0, model_id, *self._dataset_of(k, dataset, model_id)) for k, v in metrics.items()]
            log_batches(self.client, self.run_id, metrics=batch)

        self.remote("logging metrics", log)

    def _dataset_of(self, key: str, context: Optional[str], model_id: Optional[str]) -> tuple[Optional[str], Optional[str]]:
        if model_id is None or key == "learning_rate" or key.startswith("system/"):
            return None, None
        return self.datasets.get(context or ("evaluation" if key.startswith("val_") else "training"), (None, None))

    def set_tags(self, tags: dict) -> None:
        tags = {k: str(v) for k, v in tags.items()}
        self.record("tags", tags)
        self.remote("setting tags", lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()]))

    def metric_histories(self, names: list[str]) -> dict[str, list[float]]:
        """Each metric's values in step order, over every session of a resumed run."""
        return {name: [value for _, value in sorted(steps.items())] for name, steps in read_metrics(self.journal.path).items() if name in names}

    def latest_metrics(self) -> dict[str, float]:
        return {name: steps[max(steps)] for name, steps in read_metrics(self.journal.path).items()}

    def stage(self, paths: Iterable[Path], folder: Path) -> Path:
        """The files as they are now, hard-linked into a new folder under `folder`, each at its place under the output folder."""
        folder.mkdir(parents=True, exist_ok=True)
        batch = Path(tempfile.mkdtemp(dir=folder))  # unique, even beside what a killed session left
        for path in paths:
            linked_or_copied(path, batch / path.relative_to(self.output_dir))
        return batch

    def stage_for_model(self, paths: Iterable[Path]) -> Path:
        """Stage files that become a LoggedModel's, apart from the run's own uploads."""
        return self.stage(paths, self.output_dir / MODEL_STAGING)

    def log_files(self, paths: Iterable[Path]) -> None:
        """Upload files, each under the artifact folder that mirrors its place on disk, as they are now."""
        for path in paths:
            batch = self.stage([path], self.staging)
            self.remote(f"uploading {path.name}", lambda batch=batch: send_staged(self.client, self.run_id, batch))

    def log_folder(self, folder: Path, artifact_path: Optional[str] = None) -> None:
        if artifact_path is None:
            artifact_path = folder.relative_to(self.output_dir).as_posix()
        self.remote(f"uploading {artifact_path}/", lambda: self.client.log_artifacts(self.run_id, str(folder), artifact_path))

    def log_dataset(self, features, targets, name: str, source: str, context: str, as_input: bool = True) -> None:
        """Record a dataset as an MLflow input: its name, source, shape and content digest. The
        digest also links later model metrics to it; a resumed run, whose inputs are logged, needs only that."""
        from mlflow.data.numpy_dataset import from_numpy

        def log_input():
            dataset = from_numpy(features, targets=targets, source=source, name=name)
            self.datasets[context] = (dataset.name, dataset.digest)
            if not as_input:
                return
            entity = DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
            try:
                self.client.log_inputs(self.run_id, [entity])
            except MlflowException:  # a parallel job stored the same dataset between MLflow's lookup and insert
                self.client.log_inputs(self.run_id, [entity])  # now the lookup finds it

        self.remote("logging a dataset", log_input)

    def log_keras_model(self, model, signature, archive: Optional[Path] = None) -> None:
        """Log the model with MLflow's Keras flavor, so `mlflow.pyfunc.load_model` and
        `mlflow models serve` work on it; `self.model` says where, once the upload is done.
        `archive`: the model already saved as a `.keras` archive, which is logged as it is."""

        def log_model():
            self.model = log_keras_model(self.client, self.experiment_id, self.run_id, model, signature, {"kind": "final"}, archive)
            self.set_tags({"mlflow_model_uri": self.model.uri})
            log.info("mlflow  | logged the model as %s", self.model.uri)

        self.remote("logging the MLflow model", log_model)
