"""The MLflow store in its own process: a drop-in client, errors as MLflow raises them, and a
process that outlives neither its job nor a signal meant for the job."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode

from conftest import PROJECT, run_cli
from pipeline.plots import plot_confusion_matrix
from pipeline.tracking import service
from pipeline.tracking.service import StoreClient


def service_processes(marker: str) -> list[int]:
    """The store processes started by jobs whose environment holds `marker`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            serving = b"\0-m\0pipeline.tracking.service\0" in (proc / "cmdline").read_bytes() if proc.name.isdigit() else False
            if serving and marker.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return found


def wait_until_gone(marker: str, seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    while service_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return service_processes(marker)


def test_a_call_returns_and_raises_what_the_client_does(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = StoreClient(uri)
    experiment_id = store.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    run = store.create_run(experiment_id, run_name="r", tags={"t": "1"})
    store.log_metric(run.info.run_id, "m", 0.5, step=3)
    (tmp_path / "f.txt").write_text("hello")
    store.log_artifact(run.info.run_id, str(tmp_path / "f.txt"), "folder")

    direct = MlflowClient(uri).get_run(run.info.run_id)  # what a user's own client reads
    assert (direct.info.run_name, direct.data.tags["t"], direct.data.metrics["m"]) == ("r", "1", 0.5)
    assert [m.step for m in store.get_metric_history(run.info.run_id, "m")] == [3]
    assert [f.path for f in store.list_artifacts(run.info.run_id, "folder")] == ["folder/f.txt"]
    assert store.tracking_uri == uri

    with pytest.raises(MlflowException) as missing:
        store.get_run("0" * 32)
    assert missing.value.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)
    with pytest.raises(MlflowException) as again:
        store.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    assert again.value.error_code == ErrorCode.Name(RESOURCE_ALREADY_EXISTS)
    assert store.get_experiment_by_name("e").experiment_id == experiment_id  # the pipe is in step after errors


def test_work_beside_runs_in_the_store_process_and_returns_or_raises_there(tmp_path):
    """The tracking's own CPU work (drawing, listing packages) runs in the store's process, not on
    the job's interpreter lock; its result and its error come back as a call's do."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    StoreClient(uri).search_experiments()
    assert service.beside(os.getpid) == service._service().process.pid != os.getpid()
    picture = service.beside(plot_confusion_matrix, np.array([[3, 1], [0, 4]]), tmp_path / "cm.png", "two classes")
    assert picture == tmp_path / "cm.png" and picture.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError):
        service.beside(os.stat, str(tmp_path / "missing"))
    assert [e.name for e in StoreClient(uri).search_experiments()] == ["Default"]  # the pipe is in step after errors


def test_opened_ahead_a_new_store_is_made_while_the_job_goes_on(tmp_path):
    database = tmp_path / "new" / "mlflow.db"
    service.open_ahead(f"sqlite:///{database}")
    store = StoreClient(f"sqlite:///{database}")
    assert store.get_experiment_by_name("Default") is not None  # the answer to the call made ahead was not taken for this one
    assert database.exists()
    service.open_ahead("sqlite:////proc/no-store-here/mlflow.db")  # fails in the store's process, unread
    assert store.get_experiment_by_name("nope") is None


def test_a_killed_store_process_fails_its_call_and_the_next_call_starts_a_new_one(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = StoreClient(uri)
    store.search_experiments()
    first = service._service()
    first.process.kill()
    with pytest.raises(MlflowException, match=r"the tracking process ended \(exit code -9\)"):
        first.call(uri, "search_experiments", (), {})  # as a call in flight when it died
    assert [e.name for e in store.search_experiments()] == ["Default"]
    assert service._service().process.pid != first.process.pid


def test_the_store_process_ignores_the_jobs_signals_and_ends_with_the_job(tmp_path):
    """Ctrl-C reaches every process of the terminal's group: the job ends its run through the store
    process, so that one must not die first. Killed outright, the job still takes it along."""
    marker = f"STORE_TEST_{os.getpid()}_{time.monotonic_ns()}"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pipeline.tracking.service import StoreClient
        store = StoreClient("sqlite:///{tmp_path / 'mlflow.db'}")
        store.search_experiments()
        print("ready", flush=True)
        sys.stdin.readline()
        print(len(store.search_experiments()), flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, marker: "1", "PYTHONPATH": str(PROJECT)}
    job = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        assert job.stdout.readline().strip() == "ready"
        [store_process] = service_processes(marker)
        os.kill(store_process, signal.SIGINT)
        os.kill(store_process, signal.SIGTERM)
        job.stdin.write("\n")
        job.stdin.flush()
        assert job.stdout.readline().strip() == "1"  # it answered after both signals
        os.kill(job.pid, signal.SIGKILL)
        job.wait()
        assert wait_until_gone(marker) == []
    finally:
        job.kill()


def test_a_job_on_the_command_line_leaves_no_store_process_behind(tmp_path):
    marker = f"STORE_TEST_{os.getpid()}_{time.monotonic_ns()}"
    os.environ[marker] = "1"
    try:
        result = run_cli("data=digits", "training.epochs=1", "training.verbose=0", cwd=tmp_path)
    finally:
        del os.environ[marker]
    assert result.returncode == 0, result.stderr
    assert service_processes(marker) == []  # gone by the time the command returned
    [run] = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}").search_runs(["0", "1"])
    assert run.info.status == "FINISHED"
