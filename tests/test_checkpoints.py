"""Each checkpoint policy writes the files its name promises, and MLflow receives each as a LoggedModel of the run."""

import json
import zipfile
from pathlib import Path

import pytest
import tensorflow as tf

from conftest import checkpoint_models, only_run
from pipeline.task import run

TINY = ["data=digits", "data.train_size=64", "data.test_size=64", "training.batch_size=32", "save=[keras]"]


def names(folder, pattern):
    return sorted(p.name for p in folder.glob(pattern))


def logged(client, run):
    """The files of the run's checkpoint LoggedModels, by the tag each carries; none are run artifacts."""
    assert client.list_artifacts(run.info.run_id, "checkpoints") == []
    return sorted(m.tags["file"] for m in checkpoint_models(client, run))


def test_every_n_epochs_keras_weights_keeps_all(make_cfg, client, tmp_path):
    run(make_cfg(*TINY, "checkpoint=every_n_epochs", "checkpoint.every=5", "training.epochs=50"))

    expected = [f"cp-{e:04d}.weights.h5" for e in range(0, 51, 5)]
    assert names(tmp_path / "job" / "checkpoints", "cp-*") == expected
    assert logged(client, only_run(client)) == expected


def test_every_n_epochs_tf_checkpoint_keeps_the_latest_five(make_cfg, client, tmp_path):
    run(make_cfg(*TINY, "checkpoint=every_n_epochs", "checkpoint.every=5", "checkpoint.format=tf_checkpoint", "checkpoint.keep.latest=5", "training.epochs=50"))

    folder = tmp_path / "job" / "checkpoints"
    assert names(folder, "cp-*.index") == sorted(f"cp-{e}.index" for e in range(30, 51, 5))
    assert tf.train.latest_checkpoint(str(folder)) == str(folder / "cp-50")
    assert tf.train.get_checkpoint_state(str(folder)).all_model_checkpoint_paths == [str(folder / f"cp-{e}") for e in range(30, 51, 5)]
    # Uploaded as written: MLflow still holds the ones the keep policy has since deleted, and says so.
    models = checkpoint_models(client, only_run(client))
    assert [m.tags["file"] for m in models] == [f"cp-{e}" for e in range(0, 51, 5)]
    deleted = [m.tags["file"] for m in models if m.tags.get("local_file") == "deleted by checkpoint.keep (latest=5)"]
    assert deleted == [f"cp-{e}" for e in range(0, 26, 5)]
    first = {f.path for f in client.list_logged_model_artifacts(models[0].model_id)}
    assert first == {"cp-0.index", "cp-0.data-00000-of-00001", "checkpoint"}  # with the folder's state file as it was, for tf.train.latest_checkpoint


def test_keep_policies_combine_for_keras_weights_checkpoints(make_cfg, client, tmp_path):
    """The newest two, the best one by val_loss and every 4th epoch stay; the others are deleted from
    disk and their LoggedModels say so. Best is read from the run's own val_loss history."""
    run(make_cfg(*TINY, "checkpoint=every_epoch", "checkpoint.keep.latest=2", "checkpoint.keep.best=1", "checkpoint.keep.every=4", "training.epochs=10"))

    source = only_run(client)
    losses = {m.step + 1: m.value for m in client.get_metric_history(source.info.run_id, "val_loss")}
    best = min(losses, key=losses.get)
    kept = sorted({9, 10, best, 4, 8})
    assert names(tmp_path / "job" / "checkpoints", "cp-*") == [f"cp-{e:04d}.weights.h5" for e in kept]
    models = checkpoint_models(client, source)
    assert [m.tags["file"] for m in models] == [f"cp-{e:04d}.weights.h5" for e in range(1, 11)]  # all uploaded as written
    deleted = {int(m.tags["epoch"]) for m in models if m.tags.get("local_file") == "deleted by checkpoint.keep (latest=2, best=1, every=4)"}
    assert deleted == set(range(1, 11)) - set(kept)


def test_every_n_batches_names_by_step(make_cfg, client, tmp_path):
    # 128 examples / batch 32 = 4 steps an epoch; 2 epochs = 8 steps; every 3 -> steps 3 and 6.
    run(make_cfg(*TINY, "data.train_size=128", "checkpoint=every_n_batches", "checkpoint.every=3", "training.epochs=2"))

    assert names(tmp_path / "job" / "checkpoints", "cp-*") == ["cp-step-000003.weights.h5", "cp-step-000006.weights.h5"]
    models = checkpoint_models(client, only_run(client))
    assert [(m.name, m.tags["file"], m.tags["step"]) for m in models] == [
        ("checkpoint-step-000003", "cp-step-000003.weights.h5", "3"),
        ("checkpoint-step-000006", "cp-step-000006.weights.h5", "6"),
    ]
    # Mid-epoch there is no validation: each carries the training metrics at its step, and the lower batch_loss is the best.
    for model in models:
        assert {m.key for m in model.metrics} == {"batch_loss", "batch_accuracy"} and {m.step for m in model.metrics} == {int(model.tags["step"])}
    losses = {m.model_id: next(x.value for x in m.metrics if x.key == "batch_loss") for m in models}
    assert [m.model_id for m in models if m.tags.get("best") == "true"] == [min(losses, key=losses.get)]
    report = json.loads((tmp_path / "job" / "reports" / "verify.json").read_text())
    checkpoint = next(a for a in report["artifacts"] if a["artifact"] == "checkpoint")
    assert checkpoint["ok"] and checkpoint["reference"] == "weights at epoch 1, step 6"


def test_best_only_writes_only_improvements(make_cfg, client, tmp_path):
    run(make_cfg(*TINY, "checkpoint=best_only", "training.epochs=12", "training.optimizer.learning_rate=0.05"))

    history = [m.value for m in sorted(client.get_metric_history(only_run(client).info.run_id, "val_loss"), key=lambda m: m.step)]
    improved = [epoch for epoch, value in enumerate(history, start=1) if value < min(history[: epoch - 1], default=float("inf"))]
    assert 1 < len(improved) < len(history)  # the high learning rate makes val_loss bounce
    assert names(tmp_path / "job" / "checkpoints", "cp-*") == [f"cp-{e:04d}.weights.h5" for e in improved]
    models = checkpoint_models(client, only_run(client))
    assert [m.tags["file"] for m in models] == [f"cp-{e:04d}.weights.h5" for e in improved]
    assert [m.tags["epoch"] for m in models if m.tags.get("best") == "true"] == [str(improved[-1])]  # each improvement took the tag over


def test_whole_model_checkpoints_restore_optimizer(make_cfg, client, tmp_path):
    run(make_cfg(*TINY, "checkpoint=every_epoch", "checkpoint.weights_only=false", "training.epochs=3"))

    assert names(tmp_path / "job" / "checkpoints", "cp-*") == ["cp-0001.keras", "cp-0002.keras", "cp-0003.keras"]
    report = json.loads((tmp_path / "job" / "reports" / "verify.json").read_text())
    checkpoint = next(a for a in report["artifacts"] if a["artifact"] == "checkpoint")
    assert checkpoint["ok"] and checkpoint["optimizer"] == "restored: 6 iterations, 10 variables"
    # The local artifact store holds bytes of its own: rewriting a checkpoint in the run's folder
    # (as `model.save(path)` would, in place) leaves its LoggedModel's file as it was written.
    (model, *_) = checkpoint_models(client, only_run(client))
    stored = Path(model.artifact_location.removeprefix("file://")) / "data" / "model.keras"
    checkpoint = tmp_path / "job" / "checkpoints" / model.tags["file"]
    assert stored.read_bytes() == checkpoint.read_bytes()
    with checkpoint.open("r+b") as file:
        file.write(b"rewritten")
    assert stored.read_bytes()[:9] != b"rewritten" and zipfile.is_zipfile(stored)


@pytest.mark.parametrize("weights_only", [True, False])
def test_tf_checkpoint_optimizer_only_when_whole(weights_only, make_cfg, tmp_path):
    run(make_cfg(*TINY, "checkpoint.format=tf_checkpoint", f"checkpoint.weights_only={weights_only}", "training.epochs=2"))

    report = json.loads((tmp_path / "job" / "reports" / "verify.json").read_text())
    checkpoint = next(a for a in report["artifacts"] if a["artifact"] == "checkpoint")
    assert checkpoint["ok"], checkpoint["problems"]
    assert checkpoint["optimizer"] == ("not carried" if weights_only else "restored: 4 iterations, 10 variables")


def test_none_writes_no_checkpoints(make_cfg, tmp_path):
    run(make_cfg(*TINY, "checkpoint=none", "training.epochs=2"))

    assert not (tmp_path / "job" / "checkpoints").exists()
    report = json.loads((tmp_path / "job" / "reports" / "verify.json").read_text())
    assert [a["artifact"] for a in report["artifacts"]] == ["keras"]


def test_callbacks_compose_with_the_checkpoint(make_cfg, client, tmp_path):
    metrics = run(
        make_cfg(
            *TINY,
            "callbacks=[early_stopping,tensorboard,lr_schedule]",
            "callbacks.early_stopping.patience=0",
            "callbacks.early_stopping.min_delta=10",  # nothing improves by 10: stop after the first epoch
            "callbacks.lr_schedule.every=1",
            "training.epochs=10",
        )
    )

    run_id = only_run(client).info.run_id
    assert len(client.get_metric_history(run_id, "loss")) == 2  # epoch 1, then patience 0 stops after epoch 2
    assert [m.value for m in sorted(client.get_metric_history(run_id, "learning_rate"), key=lambda m: m.step)] == pytest.approx([1e-3, 5e-4])
    assert names(tmp_path / "job" / "checkpoints", "cp-*") == ["cp-0001.weights.h5", "cp-0002.weights.h5"]
    assert {f.path for f in client.list_artifacts(run_id, "tensorboard")} >= {"tensorboard/train", "tensorboard/validation"}
    assert metrics["checkpoint/verified"] == 1.0
