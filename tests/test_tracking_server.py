"""A real `mlflow server` on 127.0.0.1 instead of the sqlite file, over a sqlite store and over
PostgreSQL (a team's store): the same run content, a sweep of parallel jobs, a killed job
resumed, a clear error when the server is unreachable, nothing lost when it goes away or
restarts, and `sync` afterwards."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from conftest import EXPERIMENT, PROJECT, checkpoint_models, free_port, run_cli, start_mlflow_server, stop
from test_reproduce_resume import signal_when, start_cli

pytestmark = pytest.mark.slow

SMALL = ["data=digits", "data.train_size=300", "data.test_size=100", "training.epochs=3", "training.verbose=2", "save=[keras,h5]"]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Callable[[], str]:
    """Makes a new, empty backend store for a server: a sqlite file, or a database on a throwaway PostgreSQL."""
    if request.param == "sqlite":
        return lambda: f"sqlite:///{tmp_path / f'server-{uuid.uuid4().hex[:8]}.db'}"
    postgresql = request.getfixturevalue("postgresql")
    return lambda: postgresql.database(f"mlflow_{uuid.uuid4().hex[:12]}")


class Server:
    """`mlflow server` over one store, which can be stopped and started again on the same port."""

    def __init__(self, store_uri: str, artifacts: Path):
        self.store_uri, self.artifacts = store_uri, artifacts
        self.process, self.url = start_mlflow_server(store_uri, artifacts)

    def stop(self) -> None:
        stop(self.process)

    def restart(self) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        self.process, _ = start_mlflow_server(self.store_uri, self.artifacts, port)


@pytest.fixture
def server(store, tmp_path):
    running = Server(store(), tmp_path / "artifacts")
    yield running
    running.stop()


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
    result = run_cli(*SMALL, f"tracking.uri={server.url}", cwd=remote)
    assert result.returncode == 0, result.stderr[-3000:]

    local_client = MlflowClient(f"sqlite:///{local / 'outputs' / 'mlflow.db'}")
    remote_client = MlflowClient(server.url)
    local_run, remote_run = single_run(local_client), single_run(remote_client)
    assert remote_run.info.status == "FINISHED" and remote_run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert content(remote_client, remote_run) == content(local_client, local_run)
    assert {"saved/keras/model.keras", "saved/h5/model.h5", "reports/verify.json", "evaluation/confusion_matrix.png"} <= all_artifacts(remote_client, remote_run.info.run_id)
    assert [m.tags["file"] for m in checkpoint_models(remote_client, remote_run)] == ["cp-0001.weights.h5", "cp-0002.weights.h5", "cp-0003.weights.h5"]
    assert server.artifacts.is_dir()  # proxied: the server, not the client, wrote the files


def test_unreachable_server_fails_before_training(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    result = run_cli(*SMALL, f"tracking.uri={uri}", cwd=tmp_path)

    assert result.returncode != 0
    assert f"error: tracking server {uri} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr and "Epoch 1/" not in result.stdout


def checkpoint_epochs(files) -> set[int]:
    return {int(Path(f).name[3:-6]) for f in files if Path(f).name.startswith("cp-") and Path(f).name.endswith(".index")}


def test_server_gone_mid_run_keeps_everything_and_sync_uploads_it_later(store, tmp_path):
    """TF checkpoints keeping the latest 5: the ones deleted after the server went are kept
    staged for `sync`, so between the two servers every checkpoint written arrives."""
    first = Server(store(), tmp_path / "first")
    url = first.url
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    command = [sys.executable, "-m", "pipeline", *SMALL, "training.epochs=25", "checkpoint.format=tf_checkpoint", "checkpoint.keep.latest=5", f"tracking.uri={url}"]
    job = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while not list(tmp_path.glob("outputs/runs/*/checkpoints/cp-3.index")):
            assert job.poll() is None, job.stdout.read()[-3000:]
            time.sleep(0.05)
    finally:
        first.stop()  # the server goes away mid-training
    output = job.communicate(timeout=300)[0]

    assert job.returncode != 0
    (folder,) = tmp_path.glob("outputs/runs/*")
    assert f"every output is in {folder}" in output and f"python -m pipeline.sync {folder}" in output
    assert "lost the tracking store" in output
    for produced in ("saved/keras/model.keras", "saved/h5/model.h5", "checkpoints/cp-25.index", "reports/verify.json", "plots/training_curves.png"):
        assert (folder / produced).exists(), produced
    assert checkpoint_epochs(folder.glob("checkpoints/*")) == set(range(21, 26))
    before_the_loss = checkpoint_epochs((tmp_path / "first").rglob("*.index"))

    second = Server(store(), tmp_path / "second")
    url = second.url
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
        second.stop()


def test_a_sweep_of_eight_jobs_in_two_worker_processes_loses_nothing(server, tmp_path):
    result = run_cli("-m", "seed=1,2,3,4,5,6,7,8", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SMALL, "training.epochs=2", "save=[keras]", f"tracking.uri={server.url}", cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    client = MlflowClient(server.url)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    (parent,) = [r for r in runs if "sweep.jobs" in r.data.tags]
    children = [r for r in runs if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent.info.run_id]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.jobs"] == "8" and len(runs) == 9
    assert sorted(int(c.data.params["seed"]) for c in children) == list(range(1, 9)) and {c.info.status for c in children} == {"FINISHED"}
    for child in children:  # each job's whole run: its metrics, files, checkpoints and model
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")] == [0, 1]
        assert {"saved/keras/model.keras", "reports/verify.json", "config.yaml"} <= all_artifacts(client, child.info.run_id)
        assert len(checkpoint_models(client, child)) == 2 and child.data.tags["mlflow_model_uri"].startswith("models:/")
    assert {"sweep/report.csv", "sweep/comparison.png"} <= all_artifacts(client, parent.info.run_id)


def test_a_job_killed_without_a_signal_resumes_its_run_on_the_server(server, tmp_path):
    command = ["data=digits", "training.batch_size=1", "training.epochs=3", "training.verbose=2", "resume_every_seconds=0.2", "save=[keras]", f"tracking.uri={server.url}"]
    (tmp_path / "whole").mkdir()
    whole = run_cli(*command, cwd=tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]

    signal_when(command, tmp_path, "epoch-0001-batch-*.json", signal.SIGKILL)  # inside epoch 2
    client = MlflowClient(server.url)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (killed,) = [r for r in client.search_runs([experiment_id]) if r.info.status == "RUNNING"]  # as a kill leaves it
    resumed = run_cli(*command, cwd=tmp_path)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing from epoch 2 at batch " in resumed.stdout
    reference, finished = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
    assert finished.info.run_id == killed.info.run_id and finished.info.status == "FINISHED"  # the killed run, resumed: not a new one
    assert finished.data.tags["weights_sha256"] == reference.data.tags["weights_sha256"]
    assert [m.step for m in client.get_metric_history(finished.info.run_id, "val_loss")] == [0, 1, 2]


def test_a_server_restarted_mid_run_gets_the_whole_run_from_sync(server, tmp_path):
    """The server goes down mid-training and comes back on the same store: the job carries on
    locally to the end; `sync` then gives the job's own run what it missed, and ends it."""
    command = [*SMALL, "training.epochs=25", f"tracking.uri={server.url}"]
    job, deadline = start_cli(command, tmp_path), time.monotonic() + 300
    while not list(tmp_path.glob("outputs/runs/*/checkpoints/cp-0003.weights.h5")):
        assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()[-3000:]
        time.sleep(0.05)
    server.stop()
    time.sleep(2)
    server.restart()
    output = job.communicate(timeout=300)[0]
    assert job.returncode == 1 and "lost the tracking store" in output, output[-3000:]
    (folder,) = tmp_path.glob("outputs/runs/*")

    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    command = [sys.executable, "-m", "pipeline.sync", str(folder), "--tracking-uri", server.url]
    client = MlflowClient(server.url)
    left = single_run(client)
    assert left.info.status == "RUNNING"  # as the lost server left it
    client.set_tag(left.info.run_id, "pid", str(os.getpid()))  # as if its job were still going: this process is alive
    busy = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert busy.returncode == 1 and busy.stderr.strip().splitlines() == [
        f"error: run {left.info.run_id} of {folder} is still running (process {os.getpid()} on {left.data.tags['host']}); sync it once that process has ended"
    ]
    client.set_tag(left.info.run_id, "pid", left.data.tags["pid"])  # the job's own process, which has ended
    sync = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    assert sync.returncode == 0, sync.stderr[-3000:]
    run = single_run(client)  # the job's own run, completed: not a second one
    assert run.info.status == "FINISHED" and "synced_from" not in run.data.tags
    assert [m.step for m in sorted(client.get_metric_history(run.info.run_id, "val_loss"), key=lambda m: m.step)] == list(range(25))
    assert run.data.metrics["keras/verified"] == 1.0 and run.data.tags["weights_sha256"]
    assert {"saved/keras/model.keras", "saved/h5/model.h5", "reports/verify.json", "plots/training_curves.png"} <= all_artifacts(client, run.info.run_id)
