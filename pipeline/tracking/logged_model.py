"""The trained model as an MLflow 3 LoggedModel, made with the run's own client.

MLflow's `log_model` helpers create the LoggedModel through process-global state: with
no active experiment it lands in the Default experiment, under `./mlruns` of whatever
folder the command was started from. Here it is created in the run's experiment, so it
is listed in that experiment's Models view and stored under the store's artifact root.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class LoggedKerasModel:
    model_id: str
    uri: str  # models:/<model_id>, what mlflow.pyfunc.load_model and `mlflow models serve` take
    version: Optional[str]  # the registered version, when a name was given


def log_keras_model(client: MlflowClient, experiment_id: str, run_id: str, model, signature, registered_name: Optional[str], alias: str) -> LoggedKerasModel:
    """Log `model` with MLflow's Keras flavor as an output of the run; register it and point
    `alias` at the new version when a name is given.

    Requirements are pinned from this environment rather than inferred, which would load
    the model again in a subprocess. (MLflow 3.17's Keras flavor fails with `input_example`;
    the signature, inferred from real inputs and outputs, is what serving needs.)
    """
    import keras
    import mlflow.keras
    import tensorflow as tf
    from mlflow.models import Model

    logged = client.create_logged_model(experiment_id, name="model", source_run_id=run_id)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "model"
        description = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id, model_id=logged.model_id)
        requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]
        mlflow.keras.save_model(model, str(local), mlflow_model=description, signature=signature, pip_requirements=requirements)
        client.log_model_artifacts(logged.model_id, str(local))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    uri = f"models:/{logged.model_id}"
    version = None
    if registered_name:
        try:
            client.create_registered_model(registered_name)
        except MlflowException as error:
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        # The model's files, not its models:/ URI: MLflow's registry would look that URI up in the
        # process-global tracking store, which is not this client's.
        version = client.create_model_version(registered_name, source=logged.artifact_location, run_id=run_id, model_id=logged.model_id).version
        client.set_registered_model_alias(registered_name, alias, version)
    return LoggedKerasModel(logged.model_id, uri, version)
