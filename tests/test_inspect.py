"""`pipeline.inspect` on every format, HDF5 compression that Keras still reads, and safe loading:
code in a model is refused unless trusted, and a missing custom class is named."""

import json
import math
import os
import re
import shutil
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
from conftest import PROJECT, mlp_factory, only_run
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline.errors import ArtifactError
from pipeline.formats import FORMATS, LoadContext, load
from pipeline.formats import inspect_artifact
from pipeline.inspect import main
from pipeline.task import run

INPUTS, CLASSES = 64, 10


def fresh_mlp():
    return mlp_factory((INPUTS,), CLASSES)()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained MLP saved once in every format: {format name: path}."""
    keras.utils.set_random_seed(0)
    model = fresh_mlp()
    rng = np.random.default_rng(0)
    model.fit(rng.random((64, INPUTS), dtype="float32"), rng.integers(0, CLASSES, 64), epochs=1, verbose=0)
    folder = tmp_path_factory.mktemp("saved")
    paths = {}
    for name, fmt in FORMATS.items():
        paths[name] = folder / name / f"model{fmt.suffix}"
        paths[name].parent.mkdir()
        fmt.save(model, paths[name])
    return paths


def inspect_text(capsys, *args) -> str:
    assert main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def test_h5_shows_hierarchy_datasets_and_keras_attributes(saved, capsys):
    text = inspect_text(capsys, saved["h5"], "--full")

    for expected in ("attributes:", "backend: tensorflow", f"keras_version: {keras.__version__}", '"class_name": "Sequential"', '"optimizer_config"'):
        assert expected in text, expected
    assert f"kernel  ({INPUTS}, 32) float32  contiguous, uncompressed" in text
    assert "model_weights/" in text and "optimizer_weights/" in text
    assert "code: none (loads under safe_mode)" in text


def test_keras_zip_shows_config_metadata_and_inner_weights(saved, capsys):
    text = inspect_text(capsys, saved["keras"], "--full")

    assert "files: metadata.json" in text and "model.weights.h5 (" in text
    assert f'metadata.json: {{"keras_version": "{keras.__version__}"' in text
    assert "config.json: {" in text and '"class_name": "Sequential"' in text
    assert "model.weights.h5:" in text and f"0  ({INPUTS}, 32) float32" in text


def test_weights_file_shows_layers_and_optimizer_variables(saved, capsys):
    text = inspect_text(capsys, saved["weights"], "--full")

    assert "layers/" in text and "optimizer/" in text and "@name: adam" in text
    info = inspect_artifact(saved["weights"])
    parameters = fresh_mlp().count_params()
    assert info["values"] > parameters  # the optimizer's moments are in the file too
    assert info["raw_bytes"] == sum(e["raw_bytes"] for e in info["entries"] if e["type"] == "dataset")


@pytest.mark.parametrize("name", ["keras", "h5"])
def test_the_default_view_is_a_layer_table(name, saved, capsys):
    text = inspect_text(capsys, saved[name])

    assert "model: Sequential 'mlp'" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("  ") and not line.startswith("  layer")}
    assert rows["hidden"][1:] == ["Dense", "units", "32,", "activation", "relu", f"{INPUTS * 32 + 32:,}"]
    assert rows["dropout"][1:] == ["Dropout", "rate", "0.2", "0"] and rows["logits"][-1] == f"{32 * CLASSES + CLASSES:,}"
    assert "compiled: optimizer Adam(learning_rate=0.001), loss SparseCategoricalCrossentropy(from_logits=True), metrics accuracy" in text
    assert f"values: {fresh_mlp().count_params():,} in the layers" in text
    assert "config.json: {" not in text and '"class_name"' not in text  # the raw config is for --full
    assert len(text.splitlines()) < 15


def test_weights_view_names_layers_from_the_file(saved, capsys):
    text = inspect_text(capsys, saved["weights"])

    assert "the architecture is not in it" in text
    assert [line.split() for line in text.splitlines()[2:5]] == [["layer", "values"], ["hidden", f"{INPUTS * 32 + 32:,}"], ["logits", f"{32 * CLASSES + CLASSES:,}"]]


def test_hdf5_and_keras_files_are_read_without_tensorflow(saved):
    """Metadata from zipfile, json and h5py: a fraction of a second, where importing TensorFlow takes seconds."""
    script = "import sys; from pipeline.inspect import main; code = main(sys.argv[1:]); assert 'tensorflow' not in sys.modules, 'imported'; sys.exit(code)"
    for name in ("keras", "h5", "weights"):
        result = subprocess.run([sys.executable, "-c", script, str(saved[name])], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(PROJECT)})
        assert result.returncode == 0, (name, result.stderr[-2000:])
        assert result.stdout.startswith(f"{saved[name]}: {name} (") and result.stderr == ""


def test_load_works_on_a_model_saved_before_compile(tmp_path, capsys):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="out")])
    model.save(tmp_path / "uncompiled.keras")

    text = inspect_text(capsys, tmp_path / "uncompiled.keras", "--load")
    assert "compiled: no (saved before compile)" in text
    assert "loaded: class Sequential, layers 1, parameters 8, optimizer None, optimizer_iterations None" in text


def test_savedmodel_shows_signatures_with_specs(saved, capsys):
    text = inspect_text(capsys, saved["savedmodel"])

    assert "signature 'serving_default' (tensorflow/serving/predict):" in text
    assert f": float32(None, {INPUTS})" in text.split("inputs:  ")[1].splitlines()[0]  # Keras numbers the input's name per process
    assert f"outputs: output_0: float32(None, {CLASSES})" in text


def test_tf_checkpoint_lists_variables_with_shapes(saved, capsys):
    text = inspect_text(capsys, saved["tf_checkpoint"])

    assert "checkpoint: " in text and "ckpt-1" in text
    assert f"({INPUTS}, 32) float32" in text and "optimizer/" in text


def test_json_for_machines_from_the_real_command(saved):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.inspect", str(saved["savedmodel"]), "--json"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(PROJECT)}
    )

    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(result.stdout)
    assert info["format"] == "savedmodel"
    (spec,) = info["signatures"]["serving_default"]["inputs"].values()
    assert spec == {"dtype": "float32", "shape": [None, INPUTS]}


def test_unknown_path_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")

    assert main([str(tmp_path / "notes.txt")]) == 1
    assert "cannot tell what" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.keras")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_compressed_hdf5_is_smaller_and_keras_still_reads_it(make_cfg, client, tmp_path, capsys):
    """gzip+shuffle for the weights file, lzf with a chunk size for the whole-model .h5: both verify."""
    metrics = run(
        make_cfg(
            "data=digits", "training.epochs=2", "checkpoint=none", "save=[weights,h5]",
            "save.weights.compression=gzip", "save.weights.compression_level=9", "save.weights.shuffle=true",
            "save.h5.compression=lzf", "save.h5.chunk_kib=16",
        )
    )

    assert metrics["weights/verified"] == metrics["h5/verified"] == 1.0  # Keras's own loaders read both
    weights = tmp_path / "job" / "saved" / "weights" / "model.weights.h5"
    with h5py.File(weights) as f:
        kernel = f["layers/dense/vars/0"]
        assert (kernel.compression, kernel.compression_opts, kernel.shuffle) == ("gzip", 9, True)
    with h5py.File(tmp_path / "job" / "saved" / "h5" / "model.h5") as f:
        kernel = f["model_weights/hidden/mlp/hidden/kernel"]
        assert kernel.compression == "lzf" and kernel.chunks[0] * kernel.shape[1] * 4 <= 16 * 1024
    info = inspect_artifact(weights)
    assert info["stored_bytes"] < info["raw_bytes"]  # the optimizer's zero moments for blank pixels compress well
    assert metrics["weights/bytes_vs_raw"] < 1.0
    verify_report = (tmp_path / "job" / "reports" / "verify.md").read_text()
    assert "| x raw |" in verify_report
    assert only_run(client).info.status == "FINISHED"

    # Weights alone load only into a model built as the run built it: the run's config says how.
    capsys.readouterr()
    assert main([str(weights), "--load"]) == 1
    refused = capsys.readouterr()
    assert refused.out.startswith(f"{weights}: weights (")  # the inspection is printed all the same
    assert refused.err.strip() == f"error: {weights} holds weights but no architecture: pass --config outputs/runs/<date_time>/config.yaml of the run that wrote it, and it loads into the model that config builds"
    text = inspect_text(capsys, weights, "--load", "--config", tmp_path / "job" / "config.yaml")
    assert f"loaded: class Sequential, layers 4, parameters 38410, optimizer Adam, optimizer_iterations {2 * math.ceil(1200 / 32)}" in text


def test_compression_is_refused_for_formats_that_are_not_hdf5(make_cfg):
    from pipeline.errors import ConfigError
    from pipeline.validation import validate

    with pytest.raises(ConfigError, match="save.keras: compression and chunk_kib apply only to the HDF5 formats: h5, weights"):
        validate(make_cfg("save=[keras]", "save.keras.compression=gzip"))


def test_sharded_weights_and_an_unzipped_keras_folder_verify_and_are_logged_as_folders(make_cfg, client, tmp_path, capsys):
    """Keras's sharded weights (a .weights.json and its shards, each at most 0.2 MB here) and the
    .keras contents as a folder: both reload-verify, inspect reads both, MLflow holds both folders."""
    metrics = run(make_cfg("data=digits", "training.epochs=2", "checkpoint=none", "save=[weights,keras]", "save.weights.max_shard_size=0.0002", "save.keras.zipped=false"))

    assert metrics["weights/verified"] == metrics["keras/verified"] == 1.0
    sharded, unzipped = tmp_path / "job" / "saved" / "weights" / "model.weights", tmp_path / "job" / "saved" / "keras" / "model"
    shards = sorted(p.name for p in sharded.glob("model_*.weights.h5"))
    assert len(shards) >= 3 and all((sharded / s).stat().st_size <= 0.0002 * 1024**3 * 1.1 for s in shards)  # 38,410 weights and their Adam moments
    assert sorted(p.name for p in unzipped.iterdir() if p.is_file()) == ["config.json", "metadata.json", "model.weights.h5"]  # and Keras's assets/
    run_id = only_run(client).info.run_id
    assert {a.path for a in client.list_artifacts(run_id, "saved/weights/model.weights")} == {f"saved/weights/model.weights/{n}" for n in ["model.weights.json", *shards]}
    assert {a.path for a in client.list_artifacts(run_id, "saved/keras/model") if not a.is_dir} == {f"saved/keras/model/{n}" for n in ("config.json", "metadata.json", "model.weights.h5")}
    info = inspect_artifact(sharded)
    assert info["format"] == "weights" and list(info["shards"]) == shards and info["values"] > 2 * 38410  # weights and the optimizer's moments
    assert inspect_artifact(unzipped)["format"] == "keras" and inspect_artifact(unzipped)["code"] == []
    text = inspect_text(capsys, unzipped, "--load")
    assert "loaded: class Sequential, layers 4, parameters 38410, optimizer Adam" in text


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["save=[h5]", "save.h5.max_shard_size=1"], "save.h5.max_shard_size: sharding applies only to weights"),
        (["save=[weights]", "save.weights.max_shard_size=1", "save.weights.compression=gzip"], "save.weights: max_shard_size does not combine with compression or chunk_kib"),
        (["save=[weights]", "save.weights.max_shard_size=0"], "save.weights.max_shard_size is in GB and must be positive (got 0.0)"),
        (["save=[h5]", "save.h5.zipped=false"], "save.h5.zipped: only keras is a zip archive"),
    ],
)
def test_sharding_and_unzipping_are_refused_where_they_do_not_apply(make_cfg, overrides, message):
    """Before anything starts; a shard size below the largest variable only Keras can tell (test below)."""
    from pipeline.errors import ConfigError
    from pipeline.validation import validate

    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(make_cfg(*overrides))


def test_a_shard_smaller_than_a_variable_fails_the_run_in_one_line(make_cfg, client):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape("save.weights.max_shard_size=0.0001 GB is smaller than a variable of the model: The size of 0 is 128.00 KB")):
        run(make_cfg("data=digits", "training.epochs=1", "checkpoint=none", "save=[weights]", "save.weights.max_shard_size=0.0001"))
    assert only_run(client).info.status == "FAILED"


# --- trust ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lambda_model(tmp_path_factory):
    """A model with a Python lambda in it, saved as .keras and .h5: code that would run on load."""
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Lambda(lambda x: x * 2.0, name="doubler")(inputs)))
    model.compile(optimizer="adam", loss=keras.losses.MeanSquaredError())
    folder = tmp_path_factory.mktemp("lambda")
    for name in ("keras", "h5"):
        FORMATS[name].save(model, folder / f"model{FORMATS[name].suffix}")
    return folder, model


@pytest.mark.parametrize("name", ["keras", "h5"])
def test_code_in_a_model_is_refused_unless_trusted(name, lambda_model):
    folder, model = lambda_model
    path = folder / f"model{FORMATS[name].suffix}"

    with pytest.raises(ArtifactError, match=r"contains Python code \(Lambda layer 'doubler'\).*set verify.trust=true or pass --trust"):
        load(FORMATS[name], path, LoadContext(fresh_model=fresh_mlp, safe_mode=True))

    x = np.ones((3, 4), dtype="float32")
    trusted = load(FORMATS[name], path, LoadContext(fresh_model=fresh_mlp, safe_mode=False))
    np.testing.assert_allclose(trusted.predict(x), model.predict(x, verbose=0), atol=1e-6)
    assert inspect_artifact(path)["code"] == ["Lambda layer 'doubler'"]


def test_inspect_load_refuses_code_and_trust_lets_it_load(lambda_model, capsys):
    folder, _ = lambda_model

    assert main([str(folder / "model.keras"), "--load"]) == 1
    assert "safe_mode refuses" in capsys.readouterr().err
    text = inspect_text(capsys, folder / "model.keras", "--load", "--trust")
    assert "loaded: class Functional" in text


def test_missing_custom_class_is_named_with_how_to_provide_it(tmp_path):
    """In a fresh process the class is unknown until its module is imported, which --import does."""
    script = (
        "import sys, keras; sys.path.insert(0, sys.argv[2]); import custom_layer; "
        "m = keras.Sequential([keras.Input((3,)), custom_layer.Shift(2.0), keras.layers.Dense(1)]); "
        "m.compile(optimizer='adam', loss=keras.losses.MeanSquaredError()); m.save(sys.argv[1])"
    )
    path = tmp_path / "shifted.keras"
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    subprocess.run([sys.executable, "-c", script, str(path), str(PROJECT / "tests")], check=True, env=env, capture_output=True)

    refused = subprocess.run([sys.executable, "-m", "pipeline.inspect", str(path), "--load"], capture_output=True, text=True, env=env)
    assert refused.returncode == 1
    error_lines = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [
        f"error: {path} uses the custom class tests_custom>Shift, which is not registered in this process: import the module that defines it "
        "(decorated with @keras.saving.register_keras_serializable) before loading, e.g. `python -m pipeline.inspect PATH --load --import your.module`"
    ]
    assert "Traceback" not in refused.stderr

    loaded = subprocess.run(
        [sys.executable, "-m", "pipeline.inspect", str(path), "--load", "--import", "custom_layer"],
        capture_output=True, text=True, env={**env, "PYTHONPATH": f"{PROJECT}{os.pathsep}{PROJECT / 'tests'}"},
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert "custom classes: tests_custom>Shift" in loaded.stdout and "loaded: class Sequential" in loaded.stdout


# --- damaged files ------------------------------------------------------------------------------


def damage(data: bytes, how: str, draw) -> bytes:
    if how == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "random":
        return draw(st.binary(max_size=300))
    flipped = bytearray(data)
    for _ in range(draw(st.integers(1, 16))):
        flipped[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(flipped)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(FORMATS)), how=st.sampled_from(["truncate", "random", "flip"]), data=st.data())
def test_damaged_files_give_only_clear_errors(name, how, data, saved, tmp_path_factory):
    """Truncated, random and bit-flipped bytes in any file of any format: the loaders and the
    inspector either read it or raise the project's ArtifactError; nothing else escapes."""
    copy = tmp_path_factory.mktemp("damaged") / saved[name].name
    if saved[name].is_dir():
        shutil.copytree(saved[name], copy)
    else:
        shutil.copy(saved[name], copy)
    files = sorted(p for p in ([copy] if copy.is_file() else copy.rglob("*")) if p.is_file())
    victim = data.draw(st.sampled_from(files))
    victim.write_bytes(damage(victim.read_bytes(), how, data.draw))

    for attempt in (lambda: load(FORMATS[name], copy, LoadContext(fresh_model=fresh_mlp)).predict(np.zeros((2, INPUTS), "float32")), lambda: inspect_artifact(copy)):
        try:
            attempt()
            event("read despite the damage")
        except ArtifactError as error:
            event("refused with ArtifactError")
            assert str(copy) in str(error) and "\n" not in str(error)
