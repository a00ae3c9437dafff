"""Preemption: a signal mid-epoch stops the job at the end of a training step, with the whole
training state of that step written, and the same command resumes at the next batch, to the
weights, metrics, checkpoints and early stop of a run that was never interrupted; a kill that
gives no signal loses at most `resume_every_seconds` of training."""

import json
import os
import signal
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from conftest import EXPERIMENT, mlp_factory, run_cli
from pipeline.resume import TrainingState, restore
from test_reproduce_resume import client_for, history, start_cli

# 1200 one-example steps an epoch (about 2 s here), so a signal lands well inside one. The early
# stop depends on what it remembers: val_loss is lowest after epoch 4, so patience 2 stops after
# epoch 6 and puts back epoch 4's weights; had a resume mid-epoch 5 forgotten that, it would
# take epoch 5 as its first best and stop later, on other weights.
LONG_EPOCHS = [
    "data=digits", "training.batch_size=1", "training.epochs=8", "training.verbose=2", "tracking.system_metrics=false",
    "checkpoint=every_n_batches", "checkpoint.every=500",
    "callbacks=[early_stopping]", "callbacks.early_stopping.patience=2", "callbacks.early_stopping.restore_best_weights=true",
]  # fmt: skip


def test_the_callbacks_memory_goes_into_the_state_and_back_into_fresh_callbacks(tmp_path):
    """What fit() resets at its start: EarlyStopping's and ReduceLROnPlateau's counters, bests and best weights."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype("float32")
    keras.utils.set_random_seed(0)
    model = mlp_factory((64,), 10)()
    stop, plateau = keras.callbacks.EarlyStopping(patience=9, restore_best_weights=True), keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=9, min_delta=1.0)
    model.fit(x, y, validation_data=(x, y), epochs=3, callbacks=[stop, plateau, TrainingState(tmp_path, "run", [stop, plateau], dict, lambda step: None)], verbose=0)
    assert plateau.wait == 2 and stop.best_weights is not None  # it had something to remember

    fresh = mlp_factory((64,), 10)()
    point = restore(tmp_path, fresh)
    again_stop, again_plateau = keras.callbacks.EarlyStopping(patience=9, restore_best_weights=True), keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=9, min_delta=1.0)
    resumed = TrainingState(tmp_path, "run", [again_stop, again_plateau], dict, lambda step: None, resumed=point)
    for callback in (again_stop, again_plateau, resumed):  # in fit()'s order: theirs reset, then ours restores
        callback.set_model(fresh)
        callback.on_train_begin()

    assert (point.epoch, point.batch) == (3, 0)
    for name in ("wait", "best", "best_epoch", "stopped_epoch"):
        assert getattr(again_stop, name) == getattr(stop, name), name
    for name in ("wait", "best", "cooldown_counter"):
        assert getattr(again_plateau, name) == getattr(plateau, name), name
    assert all(np.array_equal(a, b) for a, b in zip(again_stop.best_weights, stop.best_weights, strict=True))
    assert [v.numpy().tolist() for v in fresh.weights] == [v.numpy().tolist() for v in model.weights]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("uninterrupted")
    result = run_cli(*LONG_EPOCHS, cwd=cwd)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "fit     | epoch 6/8" in output and "fit     | epoch 7/8" not in output  # stopped early
    client = client_for(cwd)
    (finished,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    return cwd, client, finished


def stop_during(command, cwd, epoch: int, sig=signal.SIGTERM, after: float = 0.5, inside: str | None = None) -> tuple[int, float, str]:
    """Start the command and send `sig` `after` seconds into `epoch`, counted from when a file
    matching `inside` (under the run folder) shows training is inside it, since a loaded machine can
    take its time to start an epoch; returns the exit code, the seconds from the signal to the
    exit, and the output."""
    process, lines = start_cli(command, cwd), []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(f"fit     | epoch {epoch - 1}/"):
            deadline = time.monotonic() + 60
            while inside and not list(cwd.glob(f"outputs/runs/*/{inside}")):
                assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
                time.sleep(0.05)
            time.sleep(after)
            sent = time.monotonic()
            process.send_signal(sig)
            break
    lines += process.stdout.readlines()
    process.wait(timeout=60)
    return process.returncode, time.monotonic() - sent, "".join(lines)


def stopped_state(client, cwd, stop: tuple[int, float, str], epoch: int) -> dict:
    """Check the job stopped within seconds, its run KILLED, with a state written mid-`epoch`; returns that state."""
    code, seconds, output = stop
    assert code == 143 and seconds < 5, (code, seconds, output[-2000:])
    (stopped,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert stopped.info.status == "KILLED" and stopped.data.tags["error"].startswith(f"Interrupted: SIGTERM during fit, epoch {epoch}, step ")
    (state,) = [json.loads(p.read_text()) for p in cwd.glob(f"outputs/runs/*/resume/epoch-{epoch - 1:04d}-batch-*.json")]
    assert 0 < state["batch"] < 1200 and state["step"] == 1200 * (epoch - 1) + state["batch"]
    return state


@pytest.mark.slow
def test_sigterm_mid_epoch_stops_at_a_step_and_resumes_at_the_next_batch_to_the_same_run(uninterrupted, tmp_path):
    reference_cwd, reference_client, reference = uninterrupted
    client = client_for(tmp_path)

    command = [*LONG_EPOCHS, "checkpoint.background=false"]  # written on the training thread, to the weights of the reference written in the background
    stopped_state(client, tmp_path, stop_during(command, tmp_path, epoch=3, inside="checkpoints/cp-step-002500*"), epoch=3)
    second = stop_during(command, tmp_path, epoch=5, inside="checkpoints/cp-step-005000*")  # the same command resumes it, and is stopped again
    state = stopped_state(client, tmp_path, second, epoch=5)
    assert "continuing from epoch 3 at batch " in second[2]
    assert state["callbacks"]["0.best"] == pytest.approx(0.0916, abs=1e-3)  # EarlyStopping's memory (epoch 4's val_loss) is kept
    result = run_cli(*command, cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    assert f"continuing from epoch 5 at batch {state['batch'] + 1} (step {state['step']})" in result.stdout
    (finished,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])  # one run throughout
    assert finished.info.status == "FINISHED"
    assert finished.data.tags["weights_sha256"] == reference.data.tags["weights_sha256"]  # epoch 4's, put back by the early stop
    for name in ("loss", "accuracy", "val_loss", "val_accuracy", "batch_loss"):  # each step once, with the same values
        assert history(client, finished.info.run_id, name) == history(reference_client, reference.info.run_id, name), name
    assert [step for step, _ in history(client, finished.info.run_id)] == list(range(6))
    checkpoints = sorted(p.name for p in tmp_path.glob("outputs/runs/*/checkpoints/cp-step-*"))
    assert checkpoints == sorted(p.name for p in reference_cwd.glob("outputs/runs/*/checkpoints/cp-step-*"))
    assert checkpoints == [f"cp-step-{step:06d}.weights.h5" for step in range(500, 7201, 500)]


@pytest.mark.slow
def test_a_kill_without_a_signal_resumes_from_the_state_kept_every_few_seconds(uninterrupted, tmp_path):
    _, _, reference = uninterrupted
    command = [*LONG_EPOCHS, "resume_every_seconds=0.2"]  # killed whatever is being written in the background

    code, _, output = stop_during(command, tmp_path, epoch=3, sig=signal.SIGKILL, after=0.3, inside="resume/epoch-0002-batch-*.json")
    assert code == -signal.SIGKILL
    result = run_cli(*command, cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "fit     | epoch 3/8" not in output  # killed mid-epoch 3
    assert "restored epoch-0002-batch-" in result.stdout and "continuing from epoch 3 at batch " in result.stdout  # not from epoch 2's end
    client = client_for(tmp_path)
    (finished,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert finished.data.tags["weights_sha256"] == reference.data.tags["weights_sha256"]


@pytest.mark.slow
def test_a_submitit_job_signalled_mid_training_requeues_itself_and_finishes_with_the_uninterrupted_weights(uninterrupted, tmp_path):
    """submitit's preemption signal (SIGUSR2, sent before a SLURM job's time runs out) to the job's
    process mid-epoch 3: the step finishes, the state is written, submitit requeues the job, and the
    job resumes its run at the next batch, to the weights of the run that was never interrupted."""
    _, reference_client, reference = uninterrupted
    sweep = start_cli(["-m", "hydra/launcher=submitit_local", *LONG_EPOCHS], tmp_path)  # a sweep of one job
    client, deadline = client_for(tmp_path), time.monotonic() + 300
    while not ((job := job_in_epoch(client, epoch=3)) and list(Path(job.data.tags["output_dir"]).glob("checkpoints/cp-step-002500*"))):
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.stdout.read()[-3000:]
        time.sleep(0.2)
    os.kill(int(job.data.tags["pid"]), signal.SIGUSR2)
    output, _ = sweep.communicate(timeout=600)

    assert sweep.returncode == 0, output[-3000:]
    (finished,) = [r for r in client.search_runs([job.info.experiment_id]) if "sweep" not in r.data.tags]  # one run throughout
    assert finished.info.status == "FINISHED" and finished.data.tags["interrupted_by"].startswith("Interrupted: SIGUSR2 during fit, epoch 3, step ")
    assert finished.data.tags["pid"] != job.data.tags["pid"]  # a new process: the requeued job
    log = (Path(finished.data.tags["output_dir"]) / "pipeline.log").read_text()
    assert "submitit requeues the job, which resumes it" in log and "continuing from epoch 3 at batch " in log
    assert finished.data.tags["weights_sha256"] == reference.data.tags["weights_sha256"]
    for name in ("loss", "val_loss", "batch_loss"):
        assert history(client, finished.info.run_id, name) == history(reference_client, reference.info.run_id, name), name


def job_in_epoch(client, epoch: int):
    """The sweep's job run, once it has logged the epoch before `epoch`."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "sweep" not in r.data.tags] if experiment else []
    if runs and any(m.step == epoch - 2 for m in client.get_metric_history(runs[0].info.run_id, "val_loss")):
        return runs[0]
    return None
