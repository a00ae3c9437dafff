"""The trained model as an MLflow model: loadable with pyfunc, registered with an alias, served over REST."""

import json
import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf
from mlflow.entities import LoggedModelStatus

from conftest import free_port, only_run, stop, wait_for
from pipeline.task import run
from pipeline.tracking.logged_model import local_folder

QUICK = ["data=digits", "data.train_size=256", "data.test_size=64", "training.epochs=2", "checkpoint=none"]


def test_logged_model_loads_with_pyfunc_and_is_registered(make_cfg, client, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # MLflow's process-global defaults would write ./mlruns here
    caplog.set_level(logging.INFO, logger="pipeline")
    run(make_cfg(*QUICK, "model=residual", "registry.name=digits-residual"))

    logged = only_run(client)
    uri = logged.data.tags["mlflow_model_uri"]
    # The model is the run's output, in the run's own experiment, stored beside the store; nothing in ./mlruns.
    (model,) = client.search_logged_models([logged.info.experiment_id])  # checkpoint=none: the trained model alone
    assert uri == f"models:/{model.model_id}" and model.name == "model" and model.status == LoggedModelStatus.READY
    assert model.artifact_location.startswith((tmp_path / "mlartifacts").as_uri())
    assert [o.model_id for o in logged.outputs.model_outputs] == [model.model_id]
    assert client.search_logged_models([client.get_experiment_by_name("Default").experiment_id]) == []
    assert not (tmp_path / "mlruns").exists()
    mlflow.set_tracking_uri(client.tracking_uri)
    assert mlflow.get_logged_model(uri.removeprefix("models:/")).source_run_id == logged.info.run_id
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype="float32")
    # Its requirements pin this environment's own versions, which is why MLflow's check of them is skipped (and only for the save).
    pinned = set(Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text().split())
    assert {f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"mlflow=={mlflow.__version__}"} <= pinned
    assert mlflow.utils.environment.warn_dependency_requirement_mismatches.__module__ == "mlflow.utils.requirements_utils"
    served = mlflow.pyfunc.load_model(uri).predict(x)
    saved = tmp_path / "job" / "saved" / "keras" / "model.keras"
    own = keras.models.load_model(saved).predict(x, verbose=0)
    # The model is saved once: the LoggedModel holds the saved archive byte for byte, not the model written again.
    stored = local_folder(model.artifact_location) / "data" / "model.keras"
    assert stored.read_bytes() == saved.read_bytes() and stored.stat().st_mtime_ns == saved.stat().st_mtime_ns  # a copy of that file
    assert not stored.samefile(saved)  # a copy: rewriting the run's file cannot change what the store holds
    np.testing.assert_allclose(np.asarray(served), own, atol=1e-5)

    version = client.get_model_version_by_alias("digits-residual", "candidate")
    assert version.run_id == logged.info.run_id and version.source == model.artifact_location and version.tags["logged_model_id"] == model.model_id
    served_by_alias = mlflow.pyfunc.load_model("models:/digits-residual@candidate").predict(x)  # as the README loads it
    np.testing.assert_allclose(np.asarray(served_by_alias), own, atol=1e-5)
    assert f"mlflow  | logged the model as {uri}" in caplog.messages
    assert any(m.startswith(f"registry| digits-residual version {version.version} ({model.model_id}, accuracy ") for m in caplog.messages)


@pytest.mark.slow
def test_mlflow_models_serve_predicts_what_the_pipeline_predicts(make_cfg, client, tmp_path):
    run(make_cfg(*QUICK))
    uri = only_run(client).data.tags["mlflow_model_uri"]
    port = free_port()
    # The server runs `uvicorn` from PATH, as in an activated environment.
    env = {**os.environ, "MLFLOW_TRACKING_URI": client.tracking_uri, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", server, log)
        images = np.random.default_rng(1).random((10, 8, 8, 1), dtype="float32")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps({"inputs": images.tolist()}).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = np.asarray(json.load(response)["predictions"])
    finally:
        stop(server)

    own = keras.models.load_model(tmp_path / "job" / "saved" / "keras" / "model.keras").predict(images, verbose=0)
    np.testing.assert_allclose(predictions, own, atol=1e-5)
