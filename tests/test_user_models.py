"""A user's own model and data, from their own package (examples/my_models, on PYTHONPATH as a
user's would be), through the command line: every format the model's kind allows, from an npz and
from an image folder, reload-verified and tracked; reproduced in a fresh process; swept in joblib's
workers; and refused in one line where no chosen format could hold it."""

import json

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import EXPERIMENT, PROJECT, checkpoint_models, run_cli
from my_models.make_data import NPZ_KEYS, write_image_folder, write_npz

EXAMPLES = PROJECT / "examples"
SMALL = ["training.epochs=2", "training.verbose=2", "tracking.system_metrics=false"]
MODELS = {
    "subclassed": ["model=custom", "model._target_=my_models.models:subclassed", "+model.width=32", "imports=[my_models.layers]"],
    "functional": ["model=custom", "model._target_=my_models.models.functional"],
}
# A subclassed model also goes through the deploy formats, each run in its own runtime (functional ones do in test_formats.py).
FORMATS = {"subclassed": ["keras", "savedmodel", "weights", "tf_checkpoint", "onnx", "litert", "openvino"], "functional": ["keras", "h5", "savedmodel", "weights", "tf_checkpoint"]}
STRIPES = ["data=custom", "data._target_=my_models.data.stripes", "+data.train_size=200", "+data.test_size=60"]


def user_cli(*args, cwd, module="pipeline"):
    return run_cli(*args, cwd=cwd, module=module, pythonpath=(EXAMPLES,))


def npz_data(tmp_path) -> list[str]:
    """Stripes in an npz under a user's own key names."""
    keys = [f"data.{role}={key}" for role, key in NPZ_KEYS.items()]
    return ["data=npz", f"data.path={write_npz(tmp_path / 'stripes.npz')}", *keys]


def folder_data(tmp_path) -> list[str]:
    return ["data=image_folder", f"data.path={write_image_folder(tmp_path / 'images')}", "data.image_size=[12,12]", "data.color_mode=grayscale", "data.divide_by=255"]


def runs(cwd) -> tuple[MlflowClient, list]:
    client = MlflowClient(f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    return client, client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], order_by=["attributes.start_time ASC"])


def assert_verified(client, run, formats):
    assert run.info.status == "FINISHED"
    for name in [*formats, "checkpoint"]:
        assert run.data.metrics[f"{name}/verified"] == 1.0, name
        assert run.data.metrics[f"{name}/max_abs_diff"] <= 1e-5, name
    assert len(checkpoint_models(client, run)) == 2  # a LoggedModel per epoch's checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("source", ["npz", "image_folder"])
@pytest.mark.parametrize("kind", ["subclassed", "functional"])
def test_a_users_model_saves_in_every_format_its_kind_allows(kind, source, tmp_path):
    data = npz_data(tmp_path) if source == "npz" else folder_data(tmp_path)

    result = user_cli(*MODELS[kind], *data, *SMALL, f"save=[{','.join(FORMATS[kind])}]", cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    client, (run,) = runs(tmp_path)
    assert_verified(client, run, FORMATS[kind])
    tags, params = run.data.tags, run.data.params
    assert tags["model_kind"] == kind and tags["data_target"] == {"npz": "pipeline.datasets.Npz", "image_folder": "pipeline.datasets.ImageFolder"}[source]
    assert params["model._target_"] == MODELS[kind][1].split("=", 1)[1]
    assert run.data.metrics["trained_accuracy"] > 0.6  # three classes of stripes, chance is 1/3: it learned
    if kind == "functional":  # it compiled itself: its own optimizer, kept and logged
        assert tags["compiled_by"] == "model" and "RMSprop(learning_rate=0.002), compiled by the model itself" in output
        assert json.loads((tmp_path / tags["output_dir"] / "compile_config.json").read_text())["optimizer"]["class_name"] == "RMSprop"
    else:  # compiled from `training`; its custom layer's module recorded, so reproduce imports it too
        assert (tags["compiled_by"], tags["imports"], params["model.width"]) == ("training", "my_models.layers", "32")
        import my_models.models  # noqa: F401  (as a user's script imports the package that registers its classes)

        mlflow.set_tracking_uri(client.tracking_uri)
        try:  # the MLflow model rebuilds the user's class by its registered name
            served = np.asarray(mlflow.pyfunc.load_model(tags["mlflow_model_uri"]).predict(np.zeros((2, 12, 12, 1), "float32")))
        finally:
            mlflow.set_tracking_uri(None)
        assert served.shape == (2, 3)


@pytest.mark.slow
def test_a_keras_applications_model_on_an_image_folder(tmp_path):
    folder = write_image_folder(tmp_path / "images", per_class=12)
    formats = ["keras", "weights", "tf_checkpoint"]

    result = run_cli("model=mobilenet_v3_small", "data=image_folder", f"data.path={folder}", "data.image_size=[32,32]", *SMALL, f"save=[{','.join(formats)}]", cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "MobileNetV3Small (functional, from pipeline.architectures.application)" in result.stdout + result.stderr
    client, (run,) = runs(tmp_path)
    assert_verified(client, run, formats)


@pytest.mark.slow
def test_a_users_data_function_run_reproduces_in_a_fresh_process(tmp_path):
    first = user_cli(*MODELS["subclassed"], *STRIPES, *SMALL, "save=[keras]", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    client, (source,) = runs(tmp_path)
    assert source.data.tags["data_target"] == "my_models.data.stripes"

    result = user_cli(source.info.run_id, "--tracking-uri", client.tracking_uri, cwd=tmp_path, module="pipeline.reproduce")

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "identical: run" in result.stdout


@pytest.mark.slow
def test_a_sweep_over_two_user_models_in_joblib_workers(tmp_path):
    targets = "my_models.models:subclassed,my_models.models.functional"
    result = user_cli("-m", "model=custom", f"model._target_={targets}", "imports=[my_models.layers]", *STRIPES, *SMALL, "save=[keras]", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    client, found = runs(tmp_path)
    children = [r for r in found if r.data.tags.get("sweep") != "parent"]
    assert sorted(r.data.tags["model_kind"] for r in children) == ["functional", "subclassed"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["keras/verified"] == 1.0 for r in children)
    assert len({r.data.tags["pid"] for r in children}) == 2  # each worker process imported the user's package


@pytest.mark.parametrize(
    "args, expected",
    [
        ([*MODELS["subclassed"], "save=[keras,h5]"], "error: save=[h5]: a subclassed model (my_models.models:subclassed) cannot be saved as h5 (legacy HDF5 whole model); formats that can hold it: keras, savedmodel, weights, tf_checkpoint"),
        (["model=custom", "model._target_=unregistered_model.build"], "error: model._target_=unregistered_model.build returns a subclassed model of class unregistered_model.Unregistered, which Keras cannot find by name"),
        (["model=cnn", "data=custom", "data._target_=my_models.data.stripes", "+data.colour=red"], "error: data.colour: my_models.data.stripes takes no argument 'colour'; it takes: train_size, test_size, size, seed"),
    ],
)
def test_impossible_combinations_are_refused_before_any_data_is_loaded(args, expected, tmp_path):
    result = run_cli(*args, cwd=tmp_path, pythonpath=(EXAMPLES, PROJECT / "tests"))

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(expected), result.stderr[-2000:]
    assert "data    |" not in result.stdout + result.stderr and not (tmp_path / "outputs" / "runs").exists()
