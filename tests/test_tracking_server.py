"""A real `mlflow server` on 127.0.0.1 instead of the sqlite file: the same run content,
a clear error when it is unreachable, nothing lost when it goes away, and `sync` afterwards."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import EXPERIMENT, PROJECT, checkpoint_models, free_port, run_cli, start_mlflow_server, stop

pytestmark = pytest.mark.slow

SMALL = ["data=digits", "data.train_size=300", "data.test_size=100", "training.epochs=3", "training.verbose=2", "save=[keras,h5]"]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    folder.mkdir(parents=True, exist_ok=True)
    return start_mlflow_server(f"sqlite:///{folder / 'server.db'}", folder / "artifacts")


@pytest.fixture
def server(tmp_path):
    process, url = start_server(tmp_path / "server")
    yield url
    stop(process)


def all_artifacts(client: MlflowClient, run_id: str, folder: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, folder or None):
        found |= all_artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def single_run(client: MlflowClient):
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    return run


def content(client: MlflowClient, run) -> tuple:
    """What a run holds, less what differs between any two runs (paths, ids, timings, store)."""
    varying = ("paths.", "tracking.")
    params = {k: v for k, v in run.data.params.items() if not k.startswith(varying)}
    compared = [k for k in run.data.metrics if not k.endswith("_seconds") and not k.startswith("system/")]
    histories = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in compared}
    checkpoints = [(m.name, m.tags["file"], m.tags["file_sha256"], sorted((x.key, x.value) for x in m.metrics)) for m in checkpoint_models(client, run)]
    return params, histories, all_artifacts(client, run.info.run_id), {k for k in run.data.tags if not k.startswith("mlflow.")}, checkpoints


def test_a_tracking_server_receives_what_the_sqlite_store_does(server, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    assert run_cli(*SMALL, cwd=local).returncode == 0
    remote = tmp_path / "remote"
    remote.mkdir()
    result = run_cli(*SMALL, f"tracking.uri={server}", cwd=remote)
    assert result.returncode == 0, result.stderr[-3000:]

    local_client = MlflowClient(f"sqlite:///{local / 'outputs' / 'mlflow.db'}")
    remote_client = MlflowClient(server)
    local_run, remote_run = single_run(local_client), single_run(remote_client)
    assert remote_run.info.status == "FINISHED" and remote_run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert content(remote_client, remote_run) == content(local_client, local_run)
    assert {"saved/keras/model.keras", "saved/h5/model.h5", "reports/verify.json", "evaluation/confusion_matrix.png"} <= all_artifacts(remote_client, remote_run.info.run_id)
    assert [m.tags["file"] for m in checkpoint_models(remote_client, remote_run)] == ["cp-0001.weights.h5", "cp-0002.weights.h5", "cp-0003.weights.h5"]
    assert (tmp_path / "server" / "artifacts").is_dir()  # proxied: the server, not the client, wrote the files


def test_unreachable_server_fails_before_training(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    result = run_cli(*SMALL, f"tracking.uri={uri}", cwd=tmp_path)

    assert result.returncode != 0
    assert f"error: tracking server {uri} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr and "Epoch 1/" not in result.stdout


def checkpoint_epochs(files) -> set[int]:
    return {int(Path(f).name[3:-6]) for f in files if Path(f).name.startswith("cp-") and Path(f).name.endswith(".index")}


def test_server_gone_mid_run_keeps_everything_and_sync_uploads_it_later(tmp_path):
    """TF checkpoints keeping the latest 5: the ones deleted after the server went are kept
    staged for `sync`, so between the two servers every checkpoint written arrives."""
    process, url = start_server(tmp_path / "first")
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    command = [sys.executable, "-m", "pipeline", *SMALL, "training.epochs=25", "checkpoint.format=tf_checkpoint", "checkpoint.keep.latest=5", f"tracking.uri={url}"]
    job = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while not list(tmp_path.glob("outputs/runs/*/checkpoints/cp-3.index")):
            assert job.poll() is None, job.stdout.read()[-3000:]
            time.sleep(0.05)
    finally:
        stop(process)  # the server goes away mid-training
    output = job.communicate(timeout=300)[0]

    assert job.returncode != 0
    (folder,) = tmp_path.glob("outputs/runs/*")
    assert f"every output is in {folder}" in output and f"python -m pipeline.sync {folder}" in output
    assert "lost the tracking store" in output
    for produced in ("saved/keras/model.keras", "saved/h5/model.h5", "checkpoints/cp-25.index", "reports/verify.json", "plots/training_curves.png"):
        assert (folder / produced).exists(), produced
    assert checkpoint_epochs(folder.glob("checkpoints/*")) == set(range(21, 26))
    before_the_loss = checkpoint_epochs((tmp_path / "first" / "artifacts").rglob("*.index"))

    process, url = start_server(tmp_path / "second")
    try:
        sync = subprocess.run([sys.executable, "-m", "pipeline.sync", str(folder), "--tracking-uri", url], env=env, capture_output=True, text=True, timeout=300)
        assert sync.returncode == 0, sync.stderr[-3000:]
        client = MlflowClient(url)
        run = single_run(client)
        assert run.info.status == "FINISHED" and run.data.tags["synced_from"] == str(folder)
        assert run.data.params["model._target_"] == "pipeline.architectures.mlp" and run.data.metrics["keras/verified"] == 1.0
        assert [m.step for m in sorted(client.get_metric_history(run.info.run_id, "val_loss"), key=lambda m: m.step)] == list(range(25))
        uploaded = all_artifacts(client, run.info.run_id)
        assert {"saved/keras/model.keras", "checkpoints/checkpoint", "reports/verify.md", "config.yaml", "hydra/overrides.yaml"} <= uploaded
        assert before_the_loss | checkpoint_epochs(uploaded) == set(range(1, 26))
        assert checkpoint_epochs(uploaded) - set(range(21, 26))  # rotated away locally, sent from staging
        assert not list(folder.glob(".uploading/*")) and not list(folder.glob(".uploading-models/*/checkpoints"))

        again = subprocess.run([sys.executable, "-m", "pipeline.sync", str(folder), "--tracking-uri", url], env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 1
        assert again.stderr.strip().splitlines() == [f"error: {folder} is already in {url} as run {run.info.run_id}; nothing was uploaded"]
        assert single_run(client).info.run_id == run.info.run_id  # no duplicate
    finally:
        stop(process)
