"""Bad input once a run has started: a one-line error, the MLflow run ended FAILED with the error
and its traceback, nothing half-written under a complete-looking name, and everything already
produced kept in the output folder. (Bad config and output folders: test_config.py.)"""

from pathlib import Path

import numpy as np
import pytest
from conftest import EXPERIMENT, only_run, run_cli
from mlflow import MlflowClient

from pipeline.errors import ArtifactError, DataError
from pipeline.task import run

QUICK = ["data=digits", "training.epochs=2", "data.train_size=256", "data.test_size=128"]


def assert_failed_with(client: MlflowClient, tmp_path: Path, error: str, message: str) -> None:
    """The run ended FAILED, with the error as a tag and the traceback as an artifact."""
    failed = only_run(client)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["error"].startswith(f"{error}: ") and message in failed.data.tags["error"], failed.data.tags["error"]
    traceback = Path(client.download_artifacts(failed.info.run_id, "error/traceback.txt", str(tmp_path))).read_text()
    assert traceback.startswith("Traceback") and error in traceback


@pytest.mark.slow
def test_missing_dataset_is_refused_before_anything_starts(tmp_path):
    missing = tmp_path / "no" / "mnist.npz"
    result = run_cli(f"data.path={missing}", "training.epochs=1", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: data.path: no file at {missing}; give an npz in Keras's MNIST layout, or no path to download MNIST"]
    assert MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}").get_experiment_by_name(EXPERIMENT) is None  # no run
    assert not (tmp_path / "outputs" / "runs").exists()  # no folder


def test_npz_with_wrong_keys_is_refused_before_any_run(make_cfg, client, tmp_path):
    np.savez(tmp_path / "mnist.npz", images=np.zeros((4, 28, 28)), labels=np.zeros(4))

    with pytest.raises(DataError, match=r"mnist.npz lacks x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test: it holds images, labels \(set data.<role> to the key to use\)"):
        run(make_cfg(f"data.path={tmp_path / 'mnist.npz'}", "training.epochs=1"))
    assert client.get_experiment_by_name(EXPERIMENT) is None  # the file's keys are read before a run starts


def test_bad_data_from_a_users_function_fails_the_run(make_cfg, client, tmp_path):
    """A user's data function loads as it is called, inside the run: its bad labels end the run FAILED."""
    with pytest.raises(DataError, match=r"y_train must be 40 integer class labels from 0 \(got shape \(40,\), dtype float64\)"):
        run(make_cfg("data=custom", "data._target_=bad_data.float_labels", "training.epochs=1"))
    assert_failed_with(client, tmp_path, "DataError", "integer class labels")


@pytest.fixture
def trained_weights(make_cfg, tmp_path) -> Path:
    """The weights file of a finished digits MLP run, in its own MLflow store."""
    run(make_cfg(*QUICK, "save=[weights]", "checkpoint=none", root=tmp_path / "earlier"))
    return tmp_path / "earlier" / "job" / "saved" / "weights" / "model.weights.h5"


def test_truncated_checkpoint_fails_the_run(trained_weights, make_cfg, client, tmp_path):
    truncated = tmp_path / "truncated.weights.h5"
    truncated.write_bytes(trained_weights.read_bytes()[:5000])

    with pytest.raises(ArtifactError, match="is not a readable checkpoint"):
        run(make_cfg(*QUICK, f"model.init_weights={truncated}"))
    assert_failed_with(client, tmp_path, "ArtifactError", "truncated or corrupt")


def test_checkpoint_of_another_architecture_fails_the_run(trained_weights, make_cfg, client, tmp_path):
    with pytest.raises(ArtifactError, match="holds weights of a different architecture than cnn"):
        run(make_cfg(*QUICK, "model=cnn", f"model.init_weights={trained_weights}"))
    assert_failed_with(client, tmp_path, "ArtifactError", "different architecture")


def test_matching_checkpoint_starts_training_from_its_weights(trained_weights, make_cfg, client):
    metrics = run(make_cfg(*QUICK, "training.epochs=1", f"model.init_weights={trained_weights}", "save=[keras]"))

    assert only_run(client).info.status == "FINISHED"
    assert metrics["accuracy"] > 0.8  # one epoch from scratch reaches about 0.5 on 256 digits


@pytest.mark.parametrize(
    "read_only, reason",
    [(False, "No space left on device"), (True, "Read-only file system")],
    ids=["disk_full", "read_only"],
)
def test_failed_save_leaves_no_partial_artifact_and_keeps_the_rest(read_only, reason, tmpfs, make_cfg, client, tmp_path):
    """saved/ on its own small file system: the weights file (~480 kB) fits in 700 kB, the .keras after it does not."""
    saved = tmp_path / "job" / "saved"
    if read_only:
        tmpfs(saved, "700k", read_only=True)
    else:
        tmpfs(saved, "700k")

    with pytest.raises(ArtifactError, match=f"writing {saved}/.* failed: {reason}; nothing was written under that name"):
        run(make_cfg("data=digits", "training.epochs=1", "save=[weights,keras]"))

    assert_failed_with(client, tmp_path, "ArtifactError", reason)
    left = sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file())
    assert left == ([] if read_only else ["weights/model.weights.h5"])  # no .partial- file, no model.keras
    job = tmp_path / "job"
    assert (job / "checkpoints" / "cp-0001.weights.h5").exists() and (job / "model_summary.txt").exists()
    assert (job / "plots" / "training_curves.png").exists()
    if not read_only:
        assert (job / "reports" / "inspect" / "weights.txt").exists()
