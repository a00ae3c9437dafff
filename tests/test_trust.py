"""Saved configs that would reach outside Keras's building blocks are refused before loading,
named in one line, and load only when the user says they trust the file."""

import json
import zipfile

import keras
import numpy as np
import pytest

from pipeline.errors import ArtifactError
from pipeline.formats import FORMATS, LoadContext, load
from pipeline.inspect import main as inspect_main
from pipeline.trust import outside_allow_list


def tutorial_mlp() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def rewritten(source, target, change) -> None:
    """Copy a .keras archive, passing its config through `change`: a crafted file, as an attacker makes one."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as crafted:
        for item in original.infolist():
            data = original.read(item)
            if item.filename == "config.json":
                data = json.dumps(change(json.loads(data))).encode()
            crafted.writestr(item, data)


def with_activation(config: dict, reference: dict) -> dict:
    """The first Dense layer's activation replaced by a reference to any function."""
    config["config"]["layers"][1]["config"]["activation"] = reference
    return config


GET_FILE = {"module": "keras.utils", "class_name": "function", "config": "get_file", "registered_name": "function"}


@pytest.fixture
def saved(tmp_path):
    model = tutorial_mlp()
    path = tmp_path / "model.keras"
    model.save(path)
    return model, path


def test_keras_own_configs_pass_the_allow_list(saved):
    _, path = saved
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    assert outside_allow_list(config) == []
    functional = keras.Model(*(lambda i: (i, keras.layers.Dense(2, activation="tanh")(i)))(keras.Input((3,))))
    functional.compile("sgd", "mse")
    functional.save(path.with_name("functional.keras"))
    assert outside_allow_list(json.loads(zipfile.ZipFile(path.with_name("functional.keras")).read("config.json"))) == []


def test_a_config_naming_get_file_is_refused_before_loading_and_loads_when_trusted(saved, tmp_path, capsys):
    model, path = saved
    crafted = tmp_path / "crafted.keras"
    rewritten(path, crafted, lambda c: with_activation(c, GET_FILE))

    with pytest.raises(ArtifactError, match=r"crafted\.keras names keras\.utils\.get_file, outside Keras's layers, activations.*set verify\.trust=true or pass --trust"):
        load(FORMATS["keras"], crafted, LoadContext(fresh_model=lambda: None))

    assert inspect_main([str(crafted), "--load"]) == 1
    out, err = capsys.readouterr()
    assert "names outside Keras's building blocks: keras.utils.get_file" in out
    assert err.strip().splitlines()[-1].startswith(f"error: {crafted} names keras.utils.get_file")



def test_a_function_outside_the_allow_list_loads_only_when_trusted(saved, tmp_path):
    model, path = saved
    crafted = tmp_path / "ops.keras"
    # keras.ops.relu computes what the activation did, but keras.ops is not a building block a config may name.
    rewritten(path, crafted, lambda c: with_activation(c, {"module": "keras.ops", "class_name": "function", "config": "relu", "registered_name": "function"}))
    with pytest.raises(ArtifactError, match=r"ops\.keras names keras\.ops\.relu, outside"):
        load(FORMATS["keras"], crafted, LoadContext(fresh_model=lambda: None))
    restored = load(FORMATS["keras"], crafted, LoadContext(fresh_model=lambda: None, safe_mode=False))
    x = np.random.default_rng(0).random((5, 4), dtype="float32")
    np.testing.assert_allclose(restored.predict(x), model.predict(x, verbose=0), atol=1e-6)


def test_a_declared_module_is_allowed(saved, tmp_path):
    model, path = saved
    crafted = tmp_path / "declared.keras"
    # keras.activations.relu referenced under its own module is Keras's; the same name under a user module must be declared.
    rewritten(path, crafted, lambda c: with_activation(c, {"module": "keras.activations", "class_name": "function", "config": "relu", "registered_name": "function"}))
    restored = load(FORMATS["keras"], crafted, LoadContext(fresh_model=lambda: None))
    x = np.random.default_rng(0).random((5, 4), dtype="float32")
    np.testing.assert_allclose(restored.predict(x), model.predict(x, verbose=0), atol=1e-6)
    config = json.loads(zipfile.ZipFile(crafted).read("config.json"))
    user = with_activation(config, {"module": "my_pkg.activations", "class_name": "function", "config": "swishy", "registered_name": "function"})
    assert outside_allow_list(user) == ["my_pkg.activations.swishy"]
    assert outside_allow_list(user, declared=("my_pkg",)) == []


def test_h5_with_lambda_code_is_refused_untrusted(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2.0, name="doubling")])
    path = tmp_path / "lambda.h5"
    model.save(path)
    with pytest.raises(ArtifactError, match=r"lambda\.h5 contains Python code \(Lambda layer 'doubling'\), which Keras's safe_mode refuses to load.*pass --trust"):
        load(FORMATS["h5"], path, LoadContext(fresh_model=lambda: None))
    restored = load(FORMATS["h5"], path, LoadContext(fresh_model=lambda: None, safe_mode=False))
    np.testing.assert_allclose(restored.predict(np.ones((2, 4), "float32")), 2.0)
