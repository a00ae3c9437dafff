"""Same config, same weights; any run re-runnable from MLflow; an interrupted run resumes where it left off."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import EXPERIMENT, PROJECT, assert_only_pipeline_lines, only_run, run_cli
from pipeline.determinism import TrainingEpochs
from pipeline.errors import ConfigError
from pipeline.files import atomic_path
from pipeline.resume import saved_states
from pipeline.task import run
from pipeline.tracking.journal import STAGING
from pipeline.tracking.lifecycle import catch_up

QUICK = ["data=digits", "data.train_size=256", "data.test_size=128", "training.epochs=3", "checkpoint=none"]


def history(client, run_id, name="loss"):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)]


def test_same_config_twice_gives_bit_identical_weights(make_cfg, client, tmp_path):
    run(make_cfg(*QUICK, f"paths.output_dir={tmp_path / 'first'}"))
    run(make_cfg(*QUICK, f"paths.output_dir={tmp_path / 'second'}"))

    first, second = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], order_by=["attributes.start_time ASC"])
    assert first.data.tags["weights_sha256"] == second.data.tags["weights_sha256"]
    assert len(first.data.tags["weights_sha256"]) == 64
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert history(client, first.info.run_id, name) == history(client, second.info.run_id, name)
        assert len(history(client, first.info.run_id, name)) == 3
    assert first.data.tags["config_digest"] == second.data.tags["config_digest"]


def test_a_different_seed_gives_different_weights(make_cfg, client, tmp_path):
    run(make_cfg(*QUICK, f"paths.output_dir={tmp_path / 'a'}"))
    run(make_cfg(*QUICK, "seed=7", f"paths.output_dir={tmp_path / 'b'}"))

    a, b = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert a.data.tags["weights_sha256"] != b.data.tags["weights_sha256"]


def test_run_records_what_recreating_it_needs(make_cfg, client, tmp_path):
    run(make_cfg(*QUICK))

    logged = only_run(client)
    tags = logged.data.tags
    for key in ("version.python", "version.tensorflow", "version.keras", "version.mlflow", "version.hydra-core", "version.numpy", "platform"):
        assert tags[key], key
    assert tags["version.keras"].startswith("3.")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True)
    if head.returncode == 0:
        assert tags["git.commit"] == head.stdout.strip() and tags["git.dirty"] in ("True", "False")
    requirements = (tmp_path / "job" / "environment" / "requirements.txt").read_text()
    assert "tensorflow==" in requirements and "mlflow==" in requirements
    assert {"environment/requirements.txt", "config.yaml"} <= {f.path for f in client.list_artifacts(logged.info.run_id, "environment")} | {
        f.path for f in client.list_artifacts(logged.info.run_id)
    }

    inputs = {d.dataset.name: d for d in logged.inputs.dataset_inputs}
    assert set(inputs) == {"digits-train", "digits-test"}
    train = inputs["digits-train"]
    assert train.dataset.digest and "load_digits" in train.dataset.source
    assert json.loads(train.dataset.profile)["features_shape"] == [256, 8, 8, 1]
    assert json.loads(inputs["digits-test"].dataset.profile)["targets_shape"] == [128]
    assert {t.value for t in train.tags} == {"training"}


@pytest.mark.parametrize("seed", [0, 42])
def test_each_epochs_order_depends_only_on_seed_and_epoch(seed):
    """So a run resumed at epoch 1 sees the batches an uninterrupted run saw; seed 0 included."""
    x, y = np.arange(20, dtype="float32").reshape(10, 2), np.arange(10)
    epochs = TrainingEpochs(x, y, 4, seed)
    whole = [labels.numpy().tolist() for epoch in range(3) for _, labels in epochs.epoch(epoch)]
    resumed = [labels.numpy().tolist() for epoch in (1, 2) for _, labels in TrainingEpochs(x, y, 4, seed).epoch(epoch)]  # a new session
    mid_epoch = [labels.numpy().tolist() for _, labels in TrainingEpochs(x, y, 4, seed).epoch(1, first_batch=1)]

    assert resumed == whole[3:]  # three batches an epoch
    assert mid_epoch == whole[4:6]  # resumed after an epoch's first batch: the rest of it
    assert all((features.numpy()[:, 0] == 2 * labels.numpy()).all() for features, labels in epochs.epoch(0))  # each row with its label
    assert sorted(sum(whole[:3], [])) == list(range(10))  # an epoch is a permutation of the examples
    assert whole[:3] != whole[3:6]  # and each epoch has its own


def test_atomic_path_never_leaves_a_partial_file_under_the_final_name(tmp_path):
    folder = tmp_path / "checkpoints"
    final = folder / "cp-0003.weights.h5"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as temporary:
            temporary.write_bytes(b"half a chec")
            raise RuntimeError("killed mid-write")
    assert list(folder.iterdir()) == []

    with atomic_path(final) as temporary:
        assert temporary.name.startswith(".partial-") and temporary.name.endswith(".weights.h5")
        temporary.write_bytes(b"complete")
    assert final.read_bytes() == b"complete" and list(folder.iterdir()) == [final]


def reproduce_cli(run_id, uri, cwd):
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "pipeline.reproduce", run_id, "--tracking-uri", uri], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_reproduce_reruns_a_logged_run_and_reports_identical(make_cfg, client, tmp_path):
    run(make_cfg(*QUICK))
    source = only_run(client)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    result = reproduce_cli(source.info.run_id, uri, tmp_path)

    assert result.returncode == 0, result.stdout[-2000:]
    assert "identical: run" in result.stdout
    assert_only_pipeline_lines(result.stderr)  # the re-run's stage lines, quiet as the main command's
    (rerun,) = client.search_runs([source.info.experiment_id], f"tags.reproduced_from = '{source.info.run_id}'")
    assert rerun.info.status == "FINISHED" and rerun.info.run_name == f"reproduce-of-{source.info.run_name}"
    assert rerun.data.tags["weights_sha256"] == source.data.tags["weights_sha256"]

    # A source whose recorded digest does not match what its config produces is reported, with exit 1.
    client.set_tag(source.info.run_id, "weights_sha256", "0" * 64)
    result = reproduce_cli(source.info.run_id, uri, tmp_path)
    assert result.returncode == 1
    assert f"weights_sha256: {'0' * 64} -> {rerun.data.tags['weights_sha256']}" in result.stdout

    result = reproduce_cli("f" * 32, uri, tmp_path)
    assert result.returncode == 2 and f"cannot read run {'f' * 32}" in result.stderr


# --- resume -----------------------------------------------------------------------------------

RESUMABLE = ["data=digits", "data.train_size=400", "data.test_size=200", "training.epochs=20", "training.verbose=2", "checkpoint=every_n_epochs", "checkpoint.every=4"]


def deliverable_ctrl_c() -> None:
    """In the child: take SIGINT as a terminal would give it, whatever disposition or mask
    the test process (with its many library threads) would otherwise pass on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def start_cli(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "pipeline", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=deliverable_ctrl_c)


def signal_when(args, cwd, state: str, sig) -> None:
    """Start the CLI and send `sig` once a training state matching `state` (under the run's
    `resume/`) is on disk, before training ends; returns when the process has ended."""
    process = start_cli(args, cwd)
    deadline = time.monotonic() + 300
    while not list(cwd.glob(f"outputs/runs/*/resume/{state}")):
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(sig)
    process.wait(timeout=60)


def interrupt_after(args, cwd, epoch: int, sig) -> None:
    """Start the CLI and send `sig` once the training state of `epoch` is on disk, before training ends."""
    signal_when(args, cwd, f"epoch-{epoch:04d}.json", sig)
    states = sorted(p.name for p in cwd.glob("outputs/runs/*/resume/epoch-*.json"))
    assert states and int(states[-1][6:10]) < 20, "training finished before the interrupt"


def client_for(cwd):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")


@pytest.fixture(scope="module")
def uninterrupted_digest(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("uninterrupted")
    result = run_cli(*RESUMABLE, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    (finished,) = client_for(cwd).search_runs([client_for(cwd).get_experiment_by_name(EXPERIMENT).experiment_id])
    return finished.data.tags["weights_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "policy, by_run_id",
    [
        ([], False),  # every_n_epochs, keras weights
        (["checkpoint=every_n_batches", "checkpoint.every=5"], False),
        (["checkpoint=best_only"], False),
        (["checkpoint=none"], True),
        (["checkpoint.format=tf_checkpoint", "checkpoint.weights_only=false"], False),
    ],
    ids=["every_n_epochs", "every_n_batches", "best_only", "none-resume_by_run_id", "tf_checkpoint"],
)
def test_sigkill_then_same_command_resumes_to_the_same_weights(policy, by_run_id, uninterrupted_digest, tmp_path):
    """The training state is backed up apart from the checkpoint policy, so any policy resumes;
    checkpoints never change training, so every policy ends with the uninterrupted run's weights.
    The rerun is the same command, or once the same command with an explicit `resume=<run id>`."""
    command = [*RESUMABLE, *policy]
    interrupt_after(command, tmp_path, epoch=5, sig=signal.SIGKILL)
    (killed,) = client_for(tmp_path).search_runs([client_for(tmp_path).get_experiment_by_name(EXPERIMENT).experiment_id])
    assert killed.info.status == "RUNNING"  # SIGKILL leaves no chance to end it

    result = run_cli(*command, *([f"resume={killed.info.run_id}"] if by_run_id else []), cwd=tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"resumed run {killed.info.run_id}" in output
    assert "resume  | restored epoch-00" in output
    client = client_for(tmp_path)
    (finished,) = client.search_runs([killed.info.experiment_id])  # the same run, no orphan
    assert finished.info.run_id == killed.info.run_id and finished.info.status == "FINISHED"
    assert finished.data.tags["weights_sha256"] == uninterrupted_digest
    steps = sorted({step for step, _ in history(client, finished.info.run_id)})
    assert steps == list(range(20))
    assert len(list(tmp_path.glob("outputs/runs/*/resume/epoch-*.weights.h5"))) == 2
    assert finished.data.metrics.get("checkpoint/verified", 1.0) == 1.0


@pytest.mark.slow
def test_crash_then_same_command_resumes_the_failed_run(uninterrupted_digest, tmpfs, tmp_path):
    """A crash mid-training (here a full disk at epoch 8's checkpoint) fails the run; once space
    is freed, the same command continues that run instead of starting over, and the run no
    longer reads as failed."""
    command = [*RESUMABLE, "hydra.run.dir=outputs/runs/crashing"]
    checkpoints = tmp_path / "outputs" / "runs" / "crashing" / "checkpoints"
    tmpfs(checkpoints, "900k")  # room for cp-0000 (160 kB, no optimizer yet) and cp-0004 (480 kB), not cp-0008

    crashed = run_cli(*command, cwd=tmp_path)

    assert crashed.returncode == 1
    # One line, the last: the half-written HDF5 file Keras left open is closed, not flushed again at exit.
    assert crashed.stderr.strip().splitlines()[-1].startswith(f"error: writing {checkpoints}/cp-0008.weights.h5 failed: No space left on device")
    client = client_for(tmp_path)
    (failed,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert failed.info.status == "FAILED" and "No space left on device" in failed.data.tags["error"]

    tmpfs(checkpoints, "20m")  # space freed
    result = run_cli(*command, cwd=tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"resumed run {failed.info.run_id}" in output and "restored epoch-0007.weights.h5: continuing from epoch 8" in output
    (finished,) = client.search_runs([failed.info.experiment_id])
    assert finished.info.run_id == failed.info.run_id and finished.info.status == "FINISHED"
    assert "error" not in finished.data.tags and "No space left on device" in finished.data.tags["interrupted_by"]
    assert finished.data.tags["weights_sha256"] == uninterrupted_digest
    assert sorted({step for step, _ in history(client, finished.info.run_id)}) == list(range(20))
    assert sorted(p.name for p in checkpoints.glob("cp-*")) == [f"cp-{e:04d}.weights.h5" for e in range(0, 21, 4)]


# val_loss improves by less than 0.02 in epochs 13 and 14: stopped there, with epoch 12's weights put back.
STOPS_EARLY = ["callbacks=[early_stopping]", "callbacks.early_stopping.patience=2", "callbacks.early_stopping.min_delta=0.02", "callbacks.early_stopping.restore_best_weights=true"]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [[], STOPS_EARLY], ids=["trained to the end", "stopped early"])
def test_a_run_that_fails_after_training_resumes_without_training_again(stop, uninterrupted_digest, tmpfs, tmp_path, tmp_path_factory):
    """Stopped after its training ended (here a full disk while saving): the same command saves and
    verifies, and trains nothing; an early stop's best weights are put back as they were."""
    digest = uninterrupted_digest
    if stop:
        reference = tmp_path_factory.mktemp("reference")
        assert run_cli(*RESUMABLE, *stop, cwd=reference).returncode == 0
        (uninterrupted,) = client_for(reference).search_runs([client_for(reference).get_experiment_by_name(EXPERIMENT).experiment_id])
        digest = uninterrupted.data.tags["weights_sha256"]
    command = [*RESUMABLE, *stop, "hydra.run.dir=outputs/runs/crashing"]
    saved = tmp_path / "outputs" / "runs" / "crashing" / "saved"
    tmpfs(saved, "100k")  # model.keras is about 490 kB
    failed = run_cli(*command, cwd=tmp_path)
    assert failed.returncode == 1 and ("fit     | epochs 1-14 of 20 done (stopped early)" in failed.stdout) == bool(stop)

    tmpfs(saved, "20m")  # space freed
    result = run_cli(*command, cwd=tmp_path)

    output = result.stdout + result.stderr
    epochs = 14 if stop else 20
    assert result.returncode == 0, output[-3000:]
    assert f"restored epoch-{epochs:04d}.weights.h5: continuing from epoch {epochs + 1}" in output
    assert f"the training had ended before the interruption, after epoch {epochs} of 20" in output
    assert "fit     | epoch " not in output
    (finished,) = client_for(tmp_path).search_runs([client_for(tmp_path).get_experiment_by_name(EXPERIMENT).experiment_id])
    assert finished.info.status == "FINISHED" and finished.data.tags["weights_sha256"] == digest
    assert finished.data.metrics["keras/verified"] == 1.0


def test_steps_per_execution_changes_speed_not_weights(make_cfg, client, tmp_path):
    """Keras's calls of several steps (7 here: epochs end mid-call) give the weights and metrics of one step a call."""
    for steps in (1, 7):
        run(make_cfg(*QUICK, f"training.steps_per_execution={steps}", f"paths.output_dir={tmp_path / str(steps)}"))

    one, seven = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], order_by=["attributes.start_time ASC"])
    assert one.data.params["training.steps_per_execution"] == "1" and seven.data.params["training.steps_per_execution"] == "7"
    assert one.data.tags["weights_sha256"] == seven.data.tags["weights_sha256"]
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert history(client, one.info.run_id, name) == history(client, seven.info.run_id, name)


def test_explicit_resume_refuses_a_different_config(make_cfg, client, tmp_path):
    run(make_cfg(*QUICK))
    source = only_run(client)

    with pytest.raises(ConfigError, match=f"run {source.info.run_id} has a different config"):
        run(make_cfg(*QUICK, "seed=1", f"resume={source.info.run_id}", f"paths.output_dir={tmp_path / 'other'}"))
    with pytest.raises(ConfigError, match="is neither an output folder nor a run id"):
        run(make_cfg(*QUICK, "resume=no-such-run", f"paths.output_dir={tmp_path / 'other'}"))


def test_resume_uploads_what_a_killed_session_had_staged(make_cfg, client, tmp_path):
    """A checkpoint queued for upload and then deleted by a keep policy before a kill exists
    only in the staging folder; the resumed session sends it."""
    run(make_cfg(*QUICK))
    run_id = only_run(client).info.run_id
    job = tmp_path / "job"
    staged = job / STAGING / "queued-before-the-kill" / "checkpoints" / "cp-1.index"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"rotated away since")

    catch_up(client, run_id, job)

    assert list((job / STAGING).iterdir()) == []
    assert Path(client.download_artifacts(run_id, "checkpoints/cp-1.index", str(tmp_path))).read_bytes() == b"rotated away since"


@pytest.mark.slow
def test_ctrl_c_then_truncated_checkpoint_falls_back_to_the_previous_state(uninterrupted_digest, tmp_path):
    interrupt_after(RESUMABLE, tmp_path, epoch=5, sig=signal.SIGINT)
    client = client_for(tmp_path)
    (stopped,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert stopped.info.status == "KILLED"
    (output_dir,) = tmp_path.glob("outputs/runs/*")
    # Two states are kept (the newest written at the step Ctrl-C stopped); a third may remain if the interrupt came between writing one and pruning.
    newest, previous = [output_dir / "resume" / f"{state.stem}.weights.h5" for state in saved_states(output_dir / "resume")[:2]]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])  # as a kill mid-write without atomic renames would

    result = run_cli(*RESUMABLE, f"resume={output_dir}", cwd=tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"{newest.name} is unreadable" in output and "falling back to the previous state" in output
    assert f"restored {previous.name}" in output
    (finished,) = client.search_runs([stopped.info.experiment_id])
    assert finished.info.run_id == stopped.info.run_id and finished.info.status == "FINISHED"
    assert finished.data.tags["weights_sha256"] == uninterrupted_digest
