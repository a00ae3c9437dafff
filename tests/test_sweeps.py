"""Multirun sweeps through the real CLI, checked in the MLflow store: one parent run per sweep,
one nested run per job, a sweep report, and failed jobs handled without stopping the others."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from conftest import EXPERIMENT, PROJECT, run_cli, sweep_report

pytestmark = pytest.mark.slow

SMALL = ["data=digits", "data.train_size=200", "data.test_size=100", "training.epochs=2", "training.verbose=0", "checkpoint=none"]


def sweep_runs(cwd: Path):
    """The sweep's parent run and its children, as a user's script would find them."""
    client = MlflowClient(f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if r is not parent]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    return client, parent, children


def test_grid_sweep_in_parallel_is_one_parent_with_a_run_per_job(tmp_path):
    """Through joblib's worker processes; the other sweep tests use the basic launcher."""
    result = run_cli("-m", "model=mlp,cnn", "save=[keras],[h5,weights]", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SMALL, cwd=tmp_path)  # as in the README
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "database is locked" not in output
    for job in range(4):  # parallel jobs' lines tell which job they come from
        assert re.search(rf"^\[{job}\] done    \| run ", result.stdout, re.M), job

    client, parent, children = sweep_runs(tmp_path)
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == ["model=cnn,save=[h5,weights]", "model=cnn,save=[keras]", "model=mlp,save=[h5,weights]", "model=mlp,save=[keras]"]
    assert parent.data.tags["sweep.jobs"] == "4"
    assert "model=mlp,cnn" in parent.data.params["sweep.overrides"] and "save=[keras],[h5,weights]" in parent.data.params["sweep.overrides"]
    assert len({c.data.tags["pid"] for c in children}) == 2  # two worker processes shared the four jobs
    assert "Joblib" in parent.data.params["sweep.launcher"]

    rows = sweep_report(client, parent, tmp_path)
    assert sorted(r["job"] for r in rows) == sorted(c.info.run_name for c in children)
    by_job = {r["job"]: r for r in rows}
    assert by_job["model=mlp,save=[h5,weights]"]["h5/verified"] == "1.0" and by_job["model=mlp,save=[h5,weights]"]["keras/verified"] == ""
    for job, fmt in (("model=cnn,save=[keras]", "keras"), ("model=mlp,save=[h5,weights]", "weights")):
        assert float(by_job[job][f"{fmt}/file_bytes"]) > 0 and float(by_job[job][f"{fmt}/save_seconds"]) > 0 and float(by_job[job][f"{fmt}/load_seconds"]) > 0
        assert 0 < float(by_job[job]["trained_accuracy"]) <= 1
    table = Path(client.download_artifacts(parent.info.run_id, "sweep/report.md", str(tmp_path))).read_text()
    assert all(f"| {c.info.run_name} |" in table for c in children)
    mlp_h5 = next(line for line in table.splitlines() if line.startswith("| model=mlp,save=[h5,weights] |"))
    cells = [c.strip() for c in mlp_h5.strip("|").split("|")]
    header = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    row = dict(zip(header, cells))
    assert re.fullmatch(r"\d+\.\d%", row["trained_accuracy"]) and row["h5/verified"] == "yes"
    assert re.fullmatch(r"[\d.]+ kB", row["weights/file_bytes"]) and re.fullmatch(r"\d+\.\d\d s", row["h5/save_seconds"])
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").iterdir()
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    assert all((sweep_dir / str(i) / "saved").is_dir() for i in range(4))


def test_a_failing_job_fails_alone(tmp_path):
    result = run_cli("-m", *SMALL, "data.train_size=5000,100", cwd=tmp_path)  # digits has 1797 examples
    # (refused as its job starts, before any data is loaded: its run records that it failed, and why)

    assert result.returncode != 0
    client, parent, children = sweep_runs(tmp_path)
    status = {c.info.run_name: c.info.status for c in children}
    assert status == {"data.train_size=5000": "FAILED", "data.train_size=100": "FINISHED"}
    failed = next(c for c in children if c.info.status == "FAILED")
    assert "digits has 1797 examples" in failed.data.tags["error"]
    assert parent.info.status == "FAILED" and parent.data.metrics["sweep/failed_jobs"] == 1
    rows = {r["job"]: r for r in sweep_report(client, parent, tmp_path)}
    assert rows["data.train_size=5000"]["status"] == "FAILED" and "digits has 1797 examples" in rows["data.train_size=5000"]["error"]
    assert rows["data.train_size=100"]["status"] == "FINISHED" and float(rows["data.train_size=100"]["trained_accuracy"]) > 0

    # The same command continues that sweep: the finished job is not trained again, the other is refused again; one run each.
    again = run_cli("-m", *SMALL, "data.train_size=5000,100", cwd=tmp_path)
    assert again.returncode != 0 and "this job finished in run" in again.stdout + again.stderr
    client, continued, children = sweep_runs(tmp_path)
    assert continued.info.run_id == parent.info.run_id and len(children) == 2
    # sweep.rerun=all starts a fresh one
    fresh = run_cli("-m", *SMALL, "data.train_size=5000,100", "sweep.rerun=all", cwd=tmp_path)
    assert fresh.returncode != 0 and "this job finished in run" not in fresh.stdout + fresh.stderr
    runs = client.search_runs([parent.info.experiment_id])
    assert len([r for r in runs if r.data.tags.get("sweep") == "parent"]) == 2 and len(runs) == 6


def test_optuna_search_nests_every_trial(tmp_path):
    result = run_cli("-m", "hparams_search=mlp_optuna", "hydra.sweeper.n_trials=20", *SMALL, "hydra.sweeper.n_trials=3", cwd=tmp_path)  # the README's, smaller
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    client, parent, children = sweep_runs(tmp_path)
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert "Optuna" in parent.data.params["sweep.sweeper"] and "model.dropout" in parent.data.params["sweep.search_space"]
    for child in children:
        assert {"training.optimizer.learning_rate=", "model.hidden_units=", "model.dropout="} <= {p.split("=")[0] + "=" for p in child.info.run_name.split(",")}
    assert sorted(c.data.tags["optuna.trial"] for c in children) == ["0", "1", "2"] and {c.data.tags["optuna.study"] for c in children} == {"mlp-learning-rate-width-dropout"}
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").iterdir()
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(c.data.metrics["trained_accuracy"] for c in children))


def test_submitit_local_launcher(tmp_path):
    result = run_cli("-m", "model=mlp,cnn", "hydra/launcher=submitit_local", *SMALL, cwd=tmp_path)  # as in the README
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    _, parent, children = sweep_runs(tmp_path)
    assert sorted(c.info.run_name for c in children) == ["model=cnn", "model=mlp"]
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
    assert parent.data.params["sweep.launcher"].endswith("submitit_launcher.LocalLauncher")


def test_slurm_launcher_config_composes(tmp_path):
    result = run_cli("hydra/launcher=slurm", "hydra.launcher.partition=cpu", "--cfg", "hydra", "--package", "hydra.launcher", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    launcher = yaml.safe_load(result.stdout)  # just the hydra.launcher package
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["partition"] == "cpu" and launcher["cpus_per_task"] == 4


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]], ids=["basic", "joblib"])
def test_a_killed_sweep_run_again_trains_only_the_jobs_that_had_not_finished(launcher, tmp_path):
    """Killed (every process of it, as a lost node would be) once two jobs had finished; the same
    command then continues the same sweep: one parent, each job's run once, the finished ones untouched."""
    command = ["-m", "seed=1,2,3,4", "data=digits", "data.train_size=600", "training.epochs=4", "training.verbose=0", "checkpoint=none", *launcher]
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    sweep = subprocess.Popen([sys.executable, "-m", "pipeline", *command], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client, deadline = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"), time.monotonic() + 600
    while len(finished := finished_jobs(client)) < 2:
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    assert len(finished) == 2, "more than two jobs had finished before the kill"

    result = run_cli(*command, cwd=tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "sweep   | continuing the stopped sweep" in output
    assert output.count("this job finished in run") == 2 and output.count("done    | run ") == 2  # exactly two jobs trained
    client, parent, children = sweep_runs(tmp_path)  # one parent
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.jobs"] == "4"
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert len({c.data.tags["config_digest"] for c in children}) == 4  # each job's run once
    again = {c.info.run_id: c for c in children}
    assert all(again[r.info.run_id].info.end_time == r.info.end_time for r in finished)  # not run again
    assert sorted(r["job"] for r in sweep_report(client, parent, tmp_path)) == [f"seed={seed}" for seed in range(1, 5)]


def finished_jobs(client) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return [r for r in runs if r.info.status == "FINISHED" and "sweep" not in r.data.tags]
