"""The Optuna sweeper (hydra_plugins/pipeline_optuna_sweeper): Hydra's sweep syntax as Optuna
distributions, refusals before anything starts, a study that survives a killed search, and
pruning fed by each epoch's validation metric. Checked in the real journal file and MLflow store."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import CONF, EXPERIMENT, PROJECT, run_cli, sweep_report
from hydra_plugins.pipeline_optuna_sweeper.optuna_sweeper import OptunaSweeper, search_record, search_space
from pipeline.errors import ConfigError
from pipeline.optuna_trial import open_storage

SMALL = ["data=digits", "data.train_size=200", "data.test_size=100", "training.verbose=0", "checkpoint=none"]


def test_hydra_sweep_syntax_becomes_optuna_distributions():
    params = {"training.optimizer.learning_rate": "tag(log, interval(1e-4, 1e-2))", "model.hidden_units": "choice(64, 128)", "model.dropout": "interval(0.0, 0.5)"}
    fixed, space = search_space(["data=digits", "training.epochs=range(2, 8, 2)", "seed=tag(int, interval(1, 9))", "training.batch_size=tag(int, log, interval(8, 64))", "model.dropout=0.1"], params)
    assert fixed == ["data=digits", "model.dropout=0.1"]  # a plain value on the command line fixes a dimension of the file's space
    assert space == {
        "training.optimizer.learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
        "model.hidden_units": CategoricalDistribution([64, 128]),
        "training.epochs": IntDistribution(2, 6, step=2),  # range's end is exclusive, as in Hydra
        "seed": IntDistribution(1, 9),
        "training.batch_size": IntDistribution(8, 64, log=True),
    }


def compose_sweep(tmp_path: Path, *overrides: str, search: str = "hparams_search=mlp_optuna"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"paths.root={tmp_path}", search, *overrides], return_hydra_config=True)


@pytest.mark.parametrize(
    "override, message",
    [
        ("hydra.sweeper.direction=up", "hydra.sweeper.direction='up' is not an option; choose from: maximize, minimize"),
        ("hydra.sweeper.monitor=f1", "hydra.sweeper.monitor='f1' is not a metric every epoch logs; choose from: val_accuracy, val_loss, accuracy, loss"),
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be at least 1 (got 0 and 1)"),
        ("hydra/sweeper=optuna", "the Optuna sweeper has no search space: set hydra.sweeper.params, e.g. hparams_search=mlp_optuna"),
    ],
)
def test_bad_settings_are_refused(tmp_path, override, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        OptunaSweeper.preflight(compose_sweep(tmp_path, override) if override.startswith("hydra.") else compose_sweep(tmp_path, search=override))


@pytest.mark.parametrize("choice, pruner", [("median", optuna.pruners.MedianPruner), ("hyperband", optuna.pruners.HyperbandPruner), ("none", optuna.pruners.NopPruner)])
def test_pruner_choices_build_optunas_pruners(tmp_path, choice, pruner):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = compose_sweep(tmp_path, f"hydra/sweeper/pruner={choice}", "training.epochs=9")
    assert isinstance(instantiate(OmegaConf.to_container(config.hydra.sweeper.pruner, resolve=True)), pruner)  # as each job builds it
    if choice == "hyperband":
        assert config.hydra.sweeper.pruner.max_resource == 9  # epochs are the resource


def test_a_stored_study_is_continued_only_by_the_same_search_and_not_while_it_runs(tmp_path):
    config = compose_sweep(tmp_path, "data=digits")
    OptunaSweeper.preflight(config)  # no study yet
    storage = tmp_path / "optuna" / "mlp-learning-rate-width-dropout.journal"
    assert not storage.exists(), "the check created the storage"
    study = optuna.create_study(study_name="mlp-learning-rate-width-dropout", storage=open_storage(str(storage)))
    study.set_user_attr("search", search_record(*search_space(list(config.hydra.overrides.task), config.hydra.sweeper.params)))
    study.set_user_attr("owner", {"host": "elsewhere", "pid": 1})
    OptunaSweeper.preflight(config)  # the same search, its process gone: it continues

    with pytest.raises(ConfigError, match=r"^study 'mlp-learning-rate-width-dropout' in .* is another search \(overrides .*data=digits.*; space .*\); name a new one"):
        OptunaSweeper.preflight(compose_sweep(tmp_path, "data=mnist"))
    OptunaSweeper.preflight(compose_sweep(tmp_path, "data=mnist", "sweep.rerun=all"))  # replaces it

    import socket

    study.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid()})  # a live process runs it
    with pytest.raises(ConfigError, match=f"is being run by process {os.getpid()}"):
        OptunaSweeper.preflight(config)


def test_a_bad_setting_is_refused_on_the_command_line_before_anything_starts(tmp_path):
    result = run_cli("-m", "hparams_search=mlp_optuna", "hydra.sweeper.monitor=f1", *SMALL, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: hydra.sweeper.monitor='f1' is not a metric every epoch logs; choose from: val_accuracy, val_loss, accuracy, loss"
    assert not (tmp_path / "outputs" / "multirun").exists() and not (tmp_path / "outputs" / "optuna").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    assert client.get_experiment_by_name(EXPERIMENT) is None  # no parent run, no experiment


def load_study(tmp_path: Path, name: str):
    return optuna.load_study(study_name=name, storage=open_storage(str(tmp_path / "outputs" / "optuna" / f"{name}.journal")))


def children_by_trial(tmp_path: Path) -> tuple[MlflowClient, object, dict]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if r is not parent]
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in children}
    assert len(by_trial) == len(children), "a trial has more than one run"
    return client, parent, by_trial


@pytest.mark.slow
def test_a_killed_search_run_again_continues_to_n_trials(tmp_path):
    """Six trials; the whole search is killed (as a lost node would be) once three have finished and
    the fourth has started. The same command continues the same study and the same parent run up to
    six trials, the fourth run again as trial 3."""
    command = ["-m", "hparams_search=mlp_optuna", "hydra.sweeper.n_trials=6", "hydra/sweeper/pruner=none", *SMALL, "data.train_size=600", "training.epochs=4"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    search = subprocess.Popen([sys.executable, "-m", "pipeline", *command], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journal, deadline = tmp_path / "outputs" / "optuna" / "mlp-learning-rate-width-dropout.journal", time.monotonic() + 600
    while not journal.exists() or not started_fourth(load_study(tmp_path, "mlp-learning-rate-width-dropout").get_trials()):
        assert search.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(search.pid, signal.SIGKILL)
    search.wait()
    before = load_study(tmp_path, "mlp-learning-rate-width-dropout").get_trials()
    assert [t.state for t in before] == [TrialState.COMPLETE] * 3 + [TrialState.RUNNING]
    first = {t.number: t.params for t in before}

    result = run_cli(*command, cwd=tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "optuna  | continuing study 'mlp-learning-rate-width-dropout': 3 of 6 trials done; interrupted trials run again: 3" in output
    assert re.findall(r"optuna  \| trial (\d+):", output) == ["3", "4", "5"]  # and no more
    study = load_study(tmp_path, "mlp-learning-rate-width-dropout")
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(6)) and all(t.state is TrialState.COMPLETE for t in trials)
    assert all(trials[n].params == params for n, params in first.items())  # a trial run again is the same trial
    client, parent, by_trial = children_by_trial(tmp_path)  # one parent
    assert sorted(by_trial) == list(range(6)) and all(r.info.status == "FINISHED" for r in by_trial.values())
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.jobs"] == "6"
    for trial in trials:  # each trial names its run, and the run its trial and the value the study holds
        run = by_trial[trial.number]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.metrics["trained_accuracy"] == pytest.approx(trial.value)
        assert run.data.params["model.hidden_units"] == str(trial.params["model.hidden_units"])


def started_fourth(trials) -> bool:
    """Three trials done and the fourth running with its values drawn (a trial killed while they
    are being drawn draws the rest when it runs again)."""
    return [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.RUNNING] and len(trials[3].params) == 3


@pytest.mark.slow
def test_the_pruner_stops_poor_trials_after_an_epoch(tmp_path):
    """Built to prune: half the learning rates cannot learn in four epochs, the median pruner
    compares from the second trial on, after the first epoch."""
    result = run_cli(
        "-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=random", "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.pruner.n_warmup_steps=0", "hydra.sweeper.n_trials=5", "training.optimizer.learning_rate=choice(0.003,0.000001)",
        *SMALL, "training.epochs=4", cwd=tmp_path,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "retracing" not in output  # five jobs' models in one process: TensorFlow's warning about it is not the user's to act on

    trials = load_study(tmp_path, "pipeline").get_trials()
    pruned = [t for t in trials if t.state is TrialState.PRUNED]
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    assert len(trials) == 5 and pruned and complete
    good = max(t.intermediate_values[0] for t in complete)
    for trial in pruned:
        assert trial.params["training.optimizer.learning_rate"] == 0.000001 and list(trial.intermediate_values) == [0]
        assert trial.intermediate_values[0] < good
    client, parent, by_trial = children_by_trial(tmp_path)
    assert parent.info.status == "FINISHED"
    for trial in pruned:  # the run ends FINISHED, tagged pruned, after one epoch, with nothing saved
        run = by_trial[trial.number]
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "pruned" and run.data.tags["optuna.pruned_after"] == "1"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [0]
        assert "trained_accuracy" not in run.data.metrics and not (Path(run.data.tags["output_dir"]) / "saved").exists()
        assert f"optuna  | trial {trial.number} pruned after epoch 1: val_accuracy" in output
    for trial in complete:
        assert [m.step for m in client.get_metric_history(by_trial[trial.number].info.run_id, "val_accuracy")] == [0, 1, 2, 3]
    rows = {r["trial"]: r for r in sweep_report(client, parent, tmp_path)}
    assert {n for n, r in rows.items() if r["status"] == "PRUNED"} == {str(t.number) for t in pruned}

