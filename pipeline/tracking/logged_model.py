"""Models as MLflow 3 LoggedModels, made with the run's own client: the trained model and every checkpoint.

MLflow's `log_model` helpers create the LoggedModel through process-global state: with
no active experiment it lands in the Default experiment, under `./mlruns` of whatever
folder the command was started from. Here it is created in the run's experiment, so it
is listed in that experiment's Models view and stored under the store's artifact root.

Each is an MLflow model with the Keras flavor (`mlflow.pyfunc.load_model` and
`mlflow.keras.load_model` work on it): `data/model.keras` holds the model. For a
weights-only checkpoint that archive is the run's architecture (`config.json`,
`metadata.json`) around the checkpoint file exactly as it was written, stored
uncompressed as `model.weights.h5`, so its bytes are the checkpoint's bytes.
"""

import shutil
import tempfile
import time
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from pipeline.files import disk_bytes, files_under, hard_linked, linked_or_copied, sha256_of

MODEL_FILE = Path("data") / "model.keras"  # where MLflow's Keras flavor keeps the model
ARCHITECTURE = ("config.json", "metadata.json")  # a .keras archive but for its weights


@dataclass(frozen=True)
class LoggedKerasModel:
    model_id: str
    uri: str  # models:/<model_id>, what mlflow.pyfunc.load_model and `mlflow models serve` take
    artifact_location: str


def keras_signature(model, x_sample):
    """The model's input and output schema, from a few real examples: what serving checks requests against.
    (A direct call, not `predict`: that traces a new function per model, and a sweep's jobs in one
    process would have TensorFlow warn of retracing.)"""
    import keras
    from mlflow.models import infer_signature

    return infer_signature(x_sample, keras.ops.convert_to_numpy(model(x_sample, training=False)))


def keras_model_folder(model, signature, folder: Path, archive: Optional[Path] = None) -> Path:
    """`model` as an MLflow model folder with the Keras flavor; its model file is `archive`, where
    the run has already saved the model as a `.keras` archive, rather than the model written again.

    Requirements are pinned from this environment rather than inferred, which would load
    the model again in a subprocess. (MLflow 3.17's Keras flavor fails with `input_example`;
    the signature, from real inputs and outputs, is what serving needs.)
    """
    import keras
    import mlflow.keras
    import tensorflow as tf

    requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]
    with _requirements_trusted():
        mlflow.keras.save_model(model if archive is None else _Saved(archive), str(folder), signature=signature, pip_requirements=requirements)
    return folder


def checkpoint_template(model, signature, folder: Path) -> Path:
    """The run's MLflow model folder for its checkpoints: the flavor's files, around a `.keras`
    archive of the model's config alone (`config.json`, `metadata.json`, as `model.save` writes
    them), which each checkpoint's archive takes. The weights are each checkpoint's own."""
    from keras.src.saving.saving_lib import _serialize_model_as_json

    archive = folder.with_suffix(".keras")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as architecture:
        for name, text in zip(ARCHITECTURE, _serialize_model_as_json(model)):
            architecture.writestr(name, text)
    return keras_model_folder(model, signature, folder, archive)


class _Saved:
    """The model as MLflow's `save_model` sees it, which only calls its `save`: a `.keras` archive
    already written, put in place by a second name (or a copy)."""

    def __init__(self, archive: Path):
        self.archive = archive

    def save(self, path: str, **options) -> None:
        linked_or_copied(self.archive, Path(path))


@contextmanager
def _requirements_trusted():
    """Skip MLflow's check that this environment satisfies the model's requirements: they are this
    environment's own versions, so it cannot fail, and it first maps every installed package's files
    to its modules, a second of CPU on the interpreter lock the training holds while it starts."""
    import mlflow.utils.environment as environment

    check = getattr(environment, "warn_dependency_requirement_mismatches", None)
    if check is not None:
        environment.warn_dependency_requirement_mismatches = lambda requirements: None
    try:
        yield
    finally:
        if check is not None:
            environment.warn_dependency_requirement_mismatches = check


def checkpoint_model_folder(template: Path, checkpoint: Path, weights_only: bool, folder: Path) -> str:
    """An MLflow model folder for one checkpoint file, from the run's model folder `template`;
    returns the checkpoint file's SHA-256, taken as its bytes are read into the folder."""
    shutil.copytree(template, folder, ignore=shutil.ignore_patterns(MODEL_FILE.parent.name))
    model_file = folder / MODEL_FILE
    model_file.parent.mkdir()
    if not weights_only:  # a whole-model .keras checkpoint is already what the flavor loads
        linked_or_copied(checkpoint, model_file)
        return sha256_of(checkpoint)
    with zipfile.ZipFile(template / MODEL_FILE) as architecture, zipfile.ZipFile(model_file, "w", zipfile.ZIP_STORED) as archive:
        for name in ARCHITECTURE:
            archive.writestr(name, architecture.read(name))
        with archive.open(zipfile.ZipInfo.from_file(checkpoint, "model.weights.h5"), "w") as member:
            return sha256_of(checkpoint, copy_to=member)


def _store(client: MlflowClient, logged: LoggedModel, folder: Path) -> None:
    """The folder's files as the LoggedModel's artifacts; uploaded by MLflow, except into a local
    artifact store, which takes over the files only this folder names (a weights checkpoint's
    archive, written for it) as they are: a second name, where MLflow would copy gigabytes while
    training runs. A file with other names (a whole-model checkpoint in the run's folder) is
    copied, so that rewriting it there cannot change what the store holds."""
    stored = local_folder(logged.artifact_location)
    if stored is None:  # a server's, or a bucket
        client.log_model_artifacts(logged.model_id, str(folder))
        return
    for path in files_under(folder):
        target = stored / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.stat().st_nlink > 1 or not hard_linked(path, target):
            shutil.copy2(path, target)


def local_folder(artifact_location: str) -> Optional[Path]:
    """Where a LoggedModel's files are on this machine: its folder in a local artifact store, or
    None for a server's or a bucket's."""
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri

    return Path(local_file_uri_to_path(artifact_location)) if is_local_uri(artifact_location, is_tracking_or_registry_uri=False) else None


def _describe(folder: Path, logged: LoggedModel, run_id: str) -> None:
    """Point the folder's MLmodel at the LoggedModel it is uploaded to."""
    from mlflow.models import Model

    description = Model.load(folder)
    description.artifact_path, description.model_id, description.run_id = logged.artifact_location, logged.model_id, run_id
    description.model_size_bytes = disk_bytes(folder) - (folder / "MLmodel").stat().st_size  # as MLflow counts it; a checkpoint's own, not the template's
    description.model_uuid = uuid.uuid4().hex
    description.utc_time_created = time.strftime("%Y-%m-%d %H:%M:%S.000000", time.gmtime())
    description.save(folder / "MLmodel")


def log_model_folder(client: MlflowClient, experiment_id: str, run_id: str, name: str, folder: Optional[Path], files: list[Path], tags: dict, step: int = 0) -> LoggedKerasModel:
    """Create a LoggedModel that is an output of the run and upload its files: an MLflow model
    folder, or, for formats no flavor loads (TF checkpoints), the files alone."""
    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, tags={k: str(v) for k, v in tags.items()})
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=step)])
    if folder is not None:
        _describe(folder, logged, run_id)
        _store(client, logged, folder)
    for path in files:
        client.log_model_artifact(logged.model_id, str(path))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return LoggedKerasModel(logged.model_id, f"models:/{logged.model_id}", logged.artifact_location)


def log_keras_model(client: MlflowClient, experiment_id: str, run_id: str, model, signature, tags: dict, archive: Optional[Path] = None) -> LoggedKerasModel:
    """The trained model with MLflow's Keras flavor, as an output of the run (its `.keras` archive
    as saved, if it was)."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = keras_model_folder(model, signature, Path(scratch) / "model", archive)
        return log_model_folder(client, experiment_id, run_id, "model", folder, [], tags)


def register(client: MlflowClient, name: str, model_id: str, artifact_location: str, run_id: str) -> str:
    """A new version of registered model `name` for a LoggedModel; returns the version number."""
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    # The model's files, not its models:/ URI: MLflow's registry would look that URI up in the
    # process-global tracking store, which is not this client's.
    return client.create_model_version(name, source=artifact_location, run_id=run_id, model_id=model_id).version
