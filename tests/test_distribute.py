"""Training on several devices: `distribute=mirrored` over logical CPU devices, in a process of its
own (TensorFlow sets its devices once per process), and `distribute=multi_worker` refused."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from conftest import EXPERIMENT, PROJECT, run_cli
from pipeline.config import MULTI_WORKER_REFUSED
from pipeline.errors import ConfigError
from pipeline.validation import validate
from test_reproduce_resume import client_for, history, signal_when

EVERY_FORMAT = "save=[keras,h5,weights,savedmodel,tf_checkpoint,onnx,litert,openvino]"
MIRRORED = ["distribute=mirrored", "distribute.devices=2", "data=digits", "training.epochs=3", "training.verbose=2", "tracking.system_metrics=false"]


def only_run(cwd):
    client = client_for(cwd)
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    return client, run


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("mirrored")
    result = run_cli(*MIRRORED, EVERY_FORMAT, cwd=cwd)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return cwd, result.stdout, *only_run(cwd)


def test_mirrored_over_two_cpu_devices_trains_and_every_format_reloads(mirrored):
    _, output, client, run = mirrored
    assert "build   | mirrored over 2 devices (device:CPU:0, device:CPU:1), each taking 16 of a batch of 32" in output
    assert run.info.status == "FINISHED" and run.data.tags["replicas"] == "2" and run.data.params["distribute.strategy"] == "mirrored"
    formats = ["keras", "h5", "weights", "savedmodel", "tf_checkpoint", "onnx", "litert", "openvino", "checkpoint"]
    assert {name: run.data.metrics[f"{name}/verified"] for name in formats} == dict.fromkeys(formats, 1.0)  # reloaded, each in its runtime
    checkpoints = client.search_logged_models([run.info.experiment_id], filter_string="tags.kind = 'checkpoint'")
    assert sorted(m.name for m in checkpoints) == ["checkpoint-epoch-0001", "checkpoint-epoch-0002", "checkpoint-epoch-0003"]  # one an epoch, each a LoggedModel


def test_two_mirrored_runs_give_the_same_weights_and_one_device_close_ones(mirrored, tmp_path):
    """What is promised: mirrored runs of one config are bit-identical (the save formats do not
    touch training); one device is not, since the replicas' gradients are summed in another order."""
    _, _, _, first = mirrored
    for folder, command in (("again", MIRRORED), ("single", [o for o in MIRRORED if not o.startswith("distribute")])):
        (tmp_path / folder).mkdir()
        result = run_cli(*command, "save=[keras]", cwd=tmp_path / folder)
        assert result.returncode == 0, result.stderr[-3000:]
    (_, second), (_, one_device) = only_run(tmp_path / "again"), only_run(tmp_path / "single")

    assert second.data.tags["weights_sha256"] == first.data.tags["weights_sha256"]
    assert one_device.data.tags["replicas"] == "1" and one_device.data.tags["weights_sha256"] != first.data.tags["weights_sha256"]
    assert abs(one_device.data.metrics["trained_accuracy"] - first.data.metrics["trained_accuracy"]) <= 0.02


def test_multi_worker_is_refused_in_one_line_before_anything_starts(tmp_path):
    result = run_cli("distribute=multi_worker", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {MULTI_WORKER_REFUSED}"]
    assert "keras-team/keras/issues/20585" in MULTI_WORKER_REFUSED and "distribute=mirrored" in MULTI_WORKER_REFUSED
    assert not (tmp_path / "outputs" / "runs").exists()
    assert client_for(tmp_path).search_runs(["0"]) == [] and client_for(tmp_path).get_experiment_by_name(EXPERIMENT) is None


def test_devices_cannot_change_once_tensorflow_has_set_them(make_cfg):
    """This test process's TensorFlow runs on one CPU device: a job asking for two is refused, naming what to do."""
    import tensorflow as tf

    assert len(tf.config.list_logical_devices("CPU")) == 1  # (listing them sets them up)
    with pytest.raises(ConfigError, match=r"distribute.devices=2: TensorFlow already runs on 1 CPU device\(s\) in this process.*hydra/launcher=joblib"):
        validate(make_cfg("distribute=mirrored", "distribute.devices=2", "data=digits"))
    with pytest.raises(ConfigError, match="distribute.devices applies to distribute=mirrored, not none"):
        validate(make_cfg("distribute.devices=2", "data=digits"))


@pytest.mark.slow
def test_killed_mid_epoch_a_mirrored_run_resumes_to_the_uninterrupted_weights(tmp_path):
    command = [*MIRRORED, "training.epochs=4", "training.batch_size=4", "resume_every_seconds=0.2", "checkpoint=every_n_batches", "checkpoint.every=100"]
    (tmp_path / "whole").mkdir()
    whole = run_cli(*command, cwd=tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]

    signal_when(command, tmp_path, "epoch-0001-batch-*.json", signal.SIGKILL)  # inside epoch 2
    resumed = run_cli(*command, cwd=tmp_path)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "restored epoch-0001-batch-" in resumed.stdout and "continuing from epoch 2 at batch " in resumed.stdout
    (client, finished), (reference_client, reference) = only_run(tmp_path), only_run(tmp_path / "whole")
    assert finished.data.tags["weights_sha256"] == reference.data.tags["weights_sha256"]
    assert history(client, finished.info.run_id, "val_loss") == history(reference_client, reference.info.run_id, "val_loss")


WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    import keras
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        model.compile(optimizer="adam", loss="mse")
    try:
        model.fit(np.zeros((64, 8), "float32"), np.zeros((64, 4), "float32"), epochs=1, batch_size=16, verbose=0)
    except Exception as error:
        print(json.dumps({"trained": False, "error": f"{type(error).__name__}: {error}"[:300]}))
    else:
        print(json.dumps({"trained": True}))
    """
)


@pytest.mark.slow
def test_keras_fit_still_fails_under_multi_worker_mirrored_strategy():
    """Why distribute=multi_worker is refused: two workers on this machine, and Keras's fit fails
    under the strategy (keras-team/keras#20585). When a Keras upgrade makes this test fail, the
    refusal can go."""
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER],
            env={**os.environ, "PYTHONPATH": str(PROJECT), "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    try:
        results = [json.loads(worker.communicate(timeout=300)[0].strip().splitlines()[-1]) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert not any(r["trained"] for r in results), "Keras's fit now trains under MultiWorkerMirroredStrategy: lift the distribute=multi_worker refusal"
    assert all("PerReplica" in r["error"] for r in results), results


def test_several_steps_a_call_is_refused_under_mirrored(make_cfg):
    with pytest.raises(ConfigError, match=r"training.steps_per_execution=4 does not run under distribute=mirrored: .*keras/issues/19246\); leave it unset"):
        validate(make_cfg("distribute=mirrored", "training.steps_per_execution=4", "data=digits"))


@pytest.mark.slow
def test_a_sweep_over_every_checkpoint_policy_on_the_training_thread_trains_as_the_plain_mirrored_run(mirrored, tmp_path):
    """A joblib sweep of mirrored jobs, each with another checkpoint policy, written on the
    training thread: every job finishes with its checkpoint reloaded, and with the weights of the
    mirrored run that wrote its checkpoints in the background (the default)."""
    _, _, _, reference = mirrored
    policies = ["every_epoch", "best_only", "every_n_batches", "every_n_epochs"]
    command = ["-m", *MIRRORED, f"checkpoint={','.join(policies)}", "checkpoint.background=false", "save=[keras]", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    result = run_cli(*command, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    client = client_for(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    jobs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.params["checkpoint.policy"] for r in jobs) == sorted(policies) and len(runs) == len(jobs) + 1
    for job in jobs:
        assert job.info.status == "FINISHED" and job.data.tags["replicas"] == "2" and job.data.metrics["checkpoint/verified"] == 1.0
        assert job.data.tags["weights_sha256"] == reference.data.tags["weights_sha256"]
