"""Every save format round-trips every architecture (the deploy formats in their own runtimes), in any order; a new format is one class and one
registry entry; a format that does not round-trip fails the run."""

import json

import keras
import numpy as np
import pytest

from conftest import mlp_factory, only_run
from custom_format import NpzFormat
from pipeline.errors import VerificationError
from pipeline.formats import FORMATS, LoadContext
from pipeline.formats.base import predict_logits
from pipeline.inspect import main
from pipeline.stages.reload_verify import Check, Reference, verify_artifact
from pipeline.sweep_report import report_rows
from pipeline.task import run
from pipeline.trust import saved_config

ALL_FORMATS = list(FORMATS)  # the built-in ones: read before any test registers its own
QUICK = ["data=digits", "training.epochs=2", "data.train_size=256", "data.test_size=128"]


@pytest.mark.parametrize("architecture", ["cnn", "mlp", "residual"])
def test_every_format_reload_verifies(architecture, make_cfg, client, tmp_path):
    metrics = run(make_cfg(*QUICK, f"model={architecture}", f"save=[{','.join(ALL_FORMATS)}]"))

    report = json.loads((tmp_path / "job" / "reports" / "verify.json").read_text())
    checked = {a["artifact"]: a for a in report["artifacts"]}
    assert set(checked) == {*ALL_FORMATS, "checkpoint"}
    for name, check in checked.items():
        assert check["ok"], (name, check["problems"])
        assert check["max_abs_diff"] <= 1e-5
        assert check["accuracy"] == pytest.approx(report["trained_accuracy"])
        assert metrics[f"{name}/verified"] == 1.0
    for name in ALL_FORMATS:
        carried = FORMATS[name].carries_optimizer
        assert checked[name]["optimizer"].startswith("restored") == carried, checked[name]["optimizer"]
        assert metrics[f"{name}/file_bytes"] > 0
        # the deploy formats ran in their own runtimes, never TensorFlow, and were timed there
        assert (checked[name]["runtime"] is not None) == FORMATS[name].deployed
        assert (metrics.get(f"{name}/latency_ms_batch256", 0) > 0) == FORMATS[name].deployed
    run_id = only_run(client).info.run_id
    artifacts = {f.path for f in client.list_artifacts(run_id, "saved")}
    assert artifacts == {f"saved/{name}" for name in ALL_FORMATS}
    inspections = {f.path for f in client.list_artifacts(run_id, "reports/inspect")}
    assert inspections == {f"reports/inspect/{name}.{ext}" for name in ALL_FORMATS for ext in ("txt", "json")}
    for name in ALL_FORMATS:
        assert json.loads((tmp_path / "job" / "reports" / "inspect" / f"{name}.json").read_text())["format"] == name


@pytest.mark.parametrize("order", [["h5", "keras"], ["keras", "h5"]])
def test_h5_then_keras_keeps_optimizer_state(order, make_cfg):
    """Keras 3.15's HDF5 writer strips the optimizer from the live model; the save stage must undo that."""
    metrics = run(make_cfg(*QUICK, f"save=[{','.join(order)}]", "checkpoint=none"))
    assert metrics["keras/verified"] == metrics["h5/verified"] == 1.0


def _trained_mlp(tmp_path):
    keras.utils.set_random_seed(0)
    model = mlp_factory((8,), 3)()
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8), dtype="float32"), rng.integers(0, 3, 64)
    model.fit(x, y, epochs=2, verbose=0)
    return model, x, y


def test_verify_catches_keras_file_without_optimizer_state(tmp_path):
    """Saving with Keras's own .h5 writer first, then .keras, loses the optimizer: reload-verify says so."""
    model, x, y = _trained_mlp(tmp_path)
    model.save(tmp_path / "first.h5")  # Keras's writer, not the pipeline's, so the bug bites
    model.save(tmp_path / "second.keras")
    reference = Reference("trained model", predict_logits(model, x), int(model.optimizer.iterations.numpy()), [v.numpy() for v in model.optimizer.variables])
    data = type("Data", (), {"x_test": x, "y_test": y})
    ctx = LoadContext(fresh_model=lambda: mlp_factory((8,), 3)())

    check = verify_artifact(Check("keras", "keras", "second.keras", "trained model"), FORMATS["keras"], tmp_path / "second.keras", ctx, reference, True, data, 1e-5)

    assert check.max_abs_diff == 0.0
    assert not check.ok
    assert any("optimizer" in p for p in check.problems), check.problems


@pytest.fixture
def registered(monkeypatch):
    """Register a format in this test alone; the registry is as it was afterwards."""

    def register(fmt):
        monkeypatch.setitem(FORMATS, fmt.name, fmt)
        return fmt

    return register


def save_choice(tmp_path, name: str, filename: str) -> list[str]:
    """A `save` option for the format, in a config folder of the test's own on Hydra's search path."""
    group = tmp_path / "conf" / "save"
    group.mkdir(parents=True, exist_ok=True)
    (group / f"{name}.yaml").write_text(f"{name}:\n  filename: {filename}\n")
    return [f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]


def test_a_new_format_is_one_class_and_one_registry_entry(registered, make_cfg, client, tmp_path, capsys):
    """Registered and nothing else changed: it is saved, reload-verified, inspected, tracked and in the sweep report."""
    registered(NpzFormat())
    metrics = run(make_cfg(*QUICK, *save_choice(tmp_path, "npz", "weights"), "save=[keras,npz]", "checkpoint=none"))

    assert metrics["npz/verified"] == metrics["keras/verified"] == 1.0
    assert metrics["npz/file_bytes"] > 0
    saved = tmp_path / "job" / "saved" / "npz" / "weights.npz"
    report = json.loads((tmp_path / "job" / "reports" / "verify.json").read_text())
    (npz,) = [a for a in report["artifacts"] if a["artifact"] == "npz"]
    assert npz["ok"] and npz["max_abs_diff"] <= 1e-5 and npz["optimizer"] == "not carried"
    assert json.loads((tmp_path / "job" / "reports" / "inspect" / "npz.json").read_text())["format"] == "npz"
    assert main([str(saved)]) == 0
    assert f"{saved}: npz (layer weights as NumPy arrays, " in capsys.readouterr().out
    mlflow_run = only_run(client)
    assert {f.path for f in client.list_artifacts(mlflow_run.info.run_id, "saved/npz")} == {"saved/npz/weights.npz"}
    (row,) = report_rows([mlflow_run])
    assert row["npz/verified"] == 1.0 and row["npz/file_bytes"] == metrics["npz/file_bytes"]


def test_format_that_does_not_round_trip_fails_the_run(registered, make_cfg, client, tmp_path):
    registered(NpzFormat("npz16", lossy=True))
    with pytest.raises(VerificationError, match=r"npz16 .*predictions differ by"):
        run(make_cfg(*QUICK, *save_choice(tmp_path, "npz16", "model"), "save=[weights,npz16]", "checkpoint=none"))

    mlflow_run = only_run(client)
    assert mlflow_run.info.status == "FAILED"
    assert "VerificationError" in mlflow_run.data.tags["error"]
    report = json.loads((tmp_path / "job" / "reports" / "verify.json").read_text())
    by_name = {a["artifact"]: a for a in report["artifacts"]}
    assert not report["ok"]
    assert not by_name["npz16"]["ok"] and by_name["npz16"]["max_abs_diff"] > 1e-5
    assert by_name["weights"]["ok"]
    assert "reports/verify.json" in {f.path for f in client.list_artifacts(mlflow_run.info.run_id, "reports")}


def test_bf16_option_trains_and_round_trips(make_cfg, tmp_path):
    metrics = run(make_cfg(*QUICK, "training.mixed_precision=true", "save=[keras,weights]", "checkpoint=none"))

    assert metrics["keras/verified"] == metrics["weights/verified"] == 1.0
    assert metrics["trained_accuracy"] > 0.5
    assert '"mixed_bfloat16"' in json.dumps(saved_config(tmp_path / "job" / "saved" / "keras" / "model.keras"))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_weights_files_are_byte_for_byte_what_save_weights_writes(dtype, tmp_path):
    """The weights format writes from the variables' own buffers, not Keras's copies of them: the
    file must still be exactly Keras's, optimizer state included (bfloat16 variables carry a mark)."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", dtype=dtype), keras.layers.BatchNormalization(), keras.layers.Dense(3)])
    model.compile("adam", "mse")
    model.fit(np.random.rand(32, 8), np.random.rand(32, 3), epochs=2, verbose=0)
    model.save_weights(tmp_path / "keras.weights.h5")
    FORMATS["weights"].save(model, tmp_path / "pipeline.weights.h5")
    assert (tmp_path / "pipeline.weights.h5").read_bytes() == (tmp_path / "keras.weights.h5").read_bytes()
