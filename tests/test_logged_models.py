"""MLflow 3 as its users browse it: every checkpoint a LoggedModel with its metrics, the best one
found by one query, an evaluation to look at, system metrics, and a promotion gate in the registry."""

import hashlib
import logging
import shutil
import sys
from pathlib import Path
import zipfile

import keras
import mlflow
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from hydra import compose, initialize_config_dir
from mlflow.models import Model

from conftest import CONF, cached_fraction, checkpoint_models, only_run, tmp_overrides
from pipeline.errors import ConfigError
from pipeline.task import run
from pipeline.tracking.logged_model import local_folder

DIGITS = ["data=digits", "data.train_size=256", "data.test_size=128"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, empty_store):
    """The default experiment's shape (the tutorial's MLP, 10 epochs, a checkpoint every epoch), on digits."""
    root = tmp_path_factory.mktemp("default")
    shutil.copy(empty_store, root / "mlflow.db")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["training.verbose=0", *tmp_overrides(root), *DIGITS, "tracking.system_metrics_interval=1"])
    run(cfg)
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return client, only_run(client), root / "job"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the page cache as Linux has it")
def test_each_checkpoint_and_its_stored_archive_leave_the_page_cache_as_the_next_are_written(default_run):
    """`pipeline.page_cache`: of ten checkpoints, only the newest and its archive in the store are
    still cached as the run ends; the nine before are on disk only (the next test reads every one back)."""
    client, logged, job = default_run
    files = {}
    for model in checkpoint_models(client, logged):
        stored = local_folder(model.artifact_location) / "data" / "model.keras"
        files[int(model.tags["epoch"])] = (job / "checkpoints" / model.tags["file"], stored)
    newest = max(files)
    assert all(cached_fraction(path) == 1.0 for path in files.pop(newest))
    assert max(cached_fraction(path) for both in files.values() for path in both) < 0.05


def test_every_checkpoint_is_a_logged_model_with_its_epoch_metrics(default_run):
    client, logged, job = default_run
    everything = client.search_logged_models([logged.info.experiment_id], filter_string=f"source_run_id = '{logged.info.run_id}'")
    assert sorted(m.name for m in everything) == [f"checkpoint-epoch-{e:04d}" for e in range(1, 11)] + ["model"]
    assert {o.model_id for o in logged.outputs.model_outputs} == {m.model_id for m in everything}  # each an output of the run
    assert client.list_artifacts(logged.info.run_id, "checkpoints") == []  # no second copy of the bytes as run artifacts

    history = {key: {m.step: m.value for m in client.get_metric_history(logged.info.run_id, key)} for key in ("loss", "val_loss", "val_accuracy")}
    datasets = {d.dataset.name: d.dataset.digest for d in logged.inputs.dataset_inputs}
    for model in checkpoint_models(client, logged):
        epoch = int(model.tags["epoch"])
        assert model.tags["format"] == "weights" and model.tags["policy"] == "every_epoch" and model.tags["file"] == f"cp-{epoch:04d}.weights.h5"
        metrics = {m.key: m for m in model.metrics}
        assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(metrics)
        for key in history:  # the very values the run logged for that epoch, linked by model_id
            assert metrics[key].value == history[key][epoch - 1] and metrics[key].step == epoch - 1
        assert (metrics["val_loss"].dataset_name, metrics["val_loss"].dataset_digest) == ("digits-test", datasets["digits-test"])
        assert (metrics["loss"].dataset_name, metrics["loss"].dataset_digest) == ("digits-train", datasets["digits-train"])
        # The file exactly as written: the Keras-flavor archive stores its bytes untouched.
        written = (job / "checkpoints" / model.tags["file"]).read_bytes()
        local = mlflow.artifacts.download_artifacts(f"{model.artifact_location}/data/model.keras")
        with zipfile.ZipFile(local) as keras_file, zipfile.ZipFile(job / "saved" / "keras" / "model.keras") as saved:
            assert keras_file.testzip() is None  # every entry's CRC-32 checks
            assert keras_file.read("model.weights.h5") == written
            assert keras_file.read("config.json") == saved.read("config.json")  # the run's architecture, as model.save writes it
        assert model.tags["file_sha256"] == sha256(written)
        stored = local_folder(model.artifact_location)
        size = sum(f.stat().st_size for f in stored.rglob("*") if f.is_file() and f.name != "MLmodel")
        assert Model.load(stored).model_size_bytes == size  # the checkpoint's own size, counted as MLflow counts it


def test_a_local_store_takes_over_files_only_the_model_folder_names(client, tmp_path):
    """A file written for the LoggedModel becomes the store's by a second name, not a copy of its
    gigabytes; one with another name outside (a checkpoint of the run) is copied, so that rewriting
    it there cannot change what the store holds."""
    from pipeline.tracking.logged_model import log_model_folder

    experiment = client.create_experiment("linking", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    folder, outside = tmp_path / "model", tmp_path / "checkpoint.keras"
    (folder / "data").mkdir(parents=True)
    Model().save(folder / "MLmodel")
    (folder / "data" / "archive.bin").write_bytes(b"written for the model")
    outside.write_bytes(b"the run's checkpoint")
    (folder / "data" / "checkpoint.keras").hardlink_to(outside)

    logged = log_model_folder(client, experiment, run_id, "m", folder, [], {})
    stored = Path(logged.artifact_location.removeprefix("file://")) / "data"
    assert (stored / "archive.bin").stat().st_ino == (folder / "data" / "archive.bin").stat().st_ino
    assert (stored / "checkpoint.keras").stat().st_ino != outside.stat().st_ino
    assert (stored / "checkpoint.keras").read_bytes() == b"the run's checkpoint"
    assert sorted(a.path for a in client.list_logged_model_artifacts(logged.model_id, "data")) == ["data/archive.bin", "data/checkpoint.keras"]


def test_the_best_checkpoint_is_one_query_away_and_loads_with_pyfunc(default_run):
    client, logged, job = default_run
    models = checkpoint_models(client, logged)
    val_loss = {m.model_id: next(x.value for x in m.metrics if x.key == "val_loss") for m in models}
    (best,) = client.search_logged_models([logged.info.experiment_id], filter_string=f"source_run_id = '{logged.info.run_id}' AND tags.best = 'true'")
    assert best.model_id == min(val_loss, key=val_loss.get)  # checkpoint.monitor=val_loss, mode=min
    # The README's query by a metric:
    (top,) = client.search_logged_models(
        [logged.info.experiment_id],
        filter_string=f"source_run_id = '{logged.info.run_id}' AND tags.kind = 'checkpoint'",
        order_by=[{"field_name": "metrics.val_accuracy", "ascending": False}],
        max_results=1,
    )
    val_accuracy = {m.model_id: next(x.value for x in m.metrics if x.key == "val_accuracy") for m in models}
    assert val_accuracy[top.model_id] == max(val_accuracy.values())

    x = np.random.default_rng(0).random((32, 8, 8, 1), dtype="float32")
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        served = np.asarray(mlflow.pyfunc.load_model(f"models:/{best.model_id}").predict(x))
    finally:
        mlflow.set_tracking_uri(None)
    own = keras.models.load_model(job / "saved" / "keras" / "model.keras")  # the run's architecture ...
    own.load_weights(job / "checkpoints" / best.tags["file"])  # ... with the checkpoint file's weights
    np.testing.assert_allclose(served, own.predict(x, verbose=0), atol=1e-6)


def test_the_evaluation_is_in_the_run_and_on_the_final_model(default_run):
    client, logged, job = default_run
    run_id = logged.info.run_id
    artifacts = {f.path for f in client.list_artifacts(run_id, "evaluation")}
    assert artifacts == {f"evaluation/{name}" for name in ("confusion_matrix.png", "misclassified.png", "per_class.csv", "evaluation.md")}
    assert client.download_artifacts(run_id, "evaluation/confusion_matrix.png", str(job.parent)).endswith(".png")
    assert (job / "evaluation" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    verify = (job / "reports" / "verify.md").read_text()
    assert "../evaluation/confusion_matrix.png" in verify and "../evaluation/misclassified.png" in verify

    # Recomputed independently from the saved model: scikit-learn's scores equal the logged ones.
    model = keras.models.load_model(job / "saved" / "keras" / "model.keras")
    x_test, y_test = _digits_test()
    predicted = model.predict(x_test, verbose=0).argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(y_test, predicted, labels=range(10), zero_division=0)
    metrics = logged.data.metrics
    for c in range(10):
        assert metrics[f"test/class_{c}/precision"] == pytest.approx(precision[c])
        assert metrics[f"test/class_{c}/recall"] == pytest.approx(recall[c])
        assert metrics[f"test/class_{c}/f1"] == pytest.approx(f1[c])
    assert metrics["test/macro_f1"] == pytest.approx(f1.mean())
    rows = (job / "evaluation" / "per_class.csv").read_text().splitlines()
    assert rows[0] == "class,precision,recall,f1,support" and len(rows) == 11
    assert [int(r.split(",")[-1]) for r in rows[1:]] == list(confusion_matrix(y_test, predicted, labels=range(10)).sum(axis=1))

    (final,) = client.search_logged_models([logged.info.experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = 'model'")
    linked = {m.key: m for m in final.metrics}
    assert linked["test/accuracy"].value == pytest.approx(float(np.mean(predicted == y_test)))
    assert linked["test/macro_f1"].dataset_name == "digits-test"
    assert not [key for key in linked if "/class_" in key]  # per class: the run's metrics and the model's per_class.csv
    assert {f.path for f in client.list_logged_model_artifacts(final.model_id, "evaluation")} >= {"evaluation/confusion_matrix.png", "evaluation/misclassified.png"}


def test_system_metrics_are_sampled(default_run):
    client, logged, _ = default_run
    metrics = logged.data.metrics
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes", "system/disk_usage_megabytes"):
        assert key in metrics, sorted(metrics)
    assert 0 < metrics["system/system_memory_usage_megabytes"]
    history = client.get_metric_history(logged.info.run_id, "system/cpu_utilization_percentage")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(len(history)))  # one per second, then one at the end
    assert len(history) >= 2


def test_the_champion_is_the_better_model_on_the_same_test_set(make_cfg, client, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pipeline")
    name = "digits-gate"
    run(make_cfg(*DIGITS, "training.epochs=6", "checkpoint=none", f"registry.name={name}", "tracking.run_name=strong"))
    run(make_cfg(*DIGITS, "training.epochs=1", "training.optimizer.learning_rate=0.0001", "checkpoint=none", f"registry.name={name}", "tracking.run_name=weak"))

    strong, weak = client.get_model_version(name, "1"), client.get_model_version(name, "2")
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"  # the first version became champion
    assert str(client.get_model_version_by_alias(name, "candidate").version) == "2"  # the newest is the candidate, nothing more
    assert strong.tags["promotion.decision"] == "champion" and weak.tags["promotion.decision"] == "candidate"
    # The scores are the models' own, reloaded from the registry and run on this test set.
    x_test, y_test = _digits_test()
    for version in (strong, weak):
        reloaded = mlflow.keras.load_model(version.source)
        assert float(version.tags["promotion.accuracy"]) == pytest.approx(float(np.mean(reloaded.predict(x_test, verbose=0).argmax(1) == y_test)))
    assert float(weak.tags["promotion.champion_accuracy"]) == pytest.approx(float(strong.tags["promotion.accuracy"]))
    assert float(weak.tags["promotion.accuracy"]) < float(weak.tags["promotion.champion_accuracy"])
    assert weak.tags["promotion.champion_version"] == "1"
    assert any(m.startswith(f"registry| {name} version 2 ") and "holds 'candidate':" in m for m in caplog.messages)

    # A better model takes the champion alias, here the best checkpoint of a longer run.
    run(make_cfg(*DIGITS, "training.epochs=12", f"registry.name={name}", "registry.model=best", "tracking.run_name=stronger"))
    third = client.get_model_version(name, "3")
    stronger = client.get_run(third.run_id)
    assert stronger.info.run_name == "stronger"
    (best,) = client.search_logged_models([stronger.info.experiment_id], filter_string=f"source_run_id = '{stronger.info.run_id}' AND tags.best = 'true'")
    assert third.tags["logged_model_id"] == best.model_id and third.source == best.artifact_location  # the checkpoint, not the final model
    assert float(third.tags["promotion.accuracy"]) > float(third.tags["promotion.champion_accuracy"])
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3" and third.tags["promotion.decision"] == "champion"


def _digits_test():
    from pipeline.config import DataConfig
    from pipeline.stages.data import load_data

    data = load_data(DataConfig.parse({"_target_": "pipeline.datasets.Digits", "train_size": 256, "test_size": 128}))
    return data.x_test, data.y_test


def test_min_improvement_keeps_a_champion_a_small_gain_does_not_beat(make_cfg, client):
    name = "digits-margin"
    run(make_cfg(*DIGITS, "training.epochs=2", "checkpoint=none", f"registry.name={name}"))
    run(make_cfg(*DIGITS, "training.epochs=4", "checkpoint=none", f"registry.name={name}", "registry.min_improvement=0.99"))
    second = client.get_model_version(name, "2")
    assert float(second.tags["promotion.accuracy"]) > float(second.tags["promotion.champion_accuracy"])  # better, but not by 99 points
    assert second.tags["promotion.decision"] == "candidate" and str(client.get_model_version_by_alias(name, "champion").version) == "1"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["checkpoint=none", "registry.model=best"], "registry.model=best registers the best checkpoint, but checkpoint=none writes none"),
        (["checkpoint.format=tf_checkpoint", "registry.model=best"], "registry.model=best needs Keras checkpoints"),
        (["registry.champion_alias=candidate"], "registry.alias and registry.champion_alias must differ"),
        (["tracking.system_metrics_interval=0"], "tracking.system_metrics_interval must be positive"),
    ],
)
def test_impossible_registry_settings_stop_before_a_run(overrides, message, make_cfg, client):
    with pytest.raises(ConfigError, match=message):
        run(make_cfg(*DIGITS, *overrides))
    assert client.search_runs([client.get_experiment_by_name("Default").experiment_id]) == []
    assert client.get_experiment_by_name("save-and-load") is None
