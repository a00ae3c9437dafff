"""What a person sees on the console: a clean stop on Ctrl-C or SIGTERM that says how to resume,
the libraries' lines back on request, and Hydra's standard flags. (That a run prints only the
pipeline's own lines is checked on every run of test_tutorial.py and test_readme.py: the
default run, the residual model with TF checkpoints, and .keras, .h5 and SavedModel saves.)"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from conftest import EXPERIMENT, PROJECT, assert_only_pipeline_lines, run_cli

pytestmark = pytest.mark.slow

QUICK = ["data=digits", "data.train_size=300", "data.test_size=100", "training.epochs=2"]


def test_verbose_brings_the_libraries_back(tmp_path):
    result = run_cli(*QUICK, "checkpoint=none", "hydra.verbose=true", cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "cudart_stub" in result.stderr or "mlflow.store.db.utils" in result.stderr + result.stdout


def start(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL), signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})),
    )  # fmt: skip


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGUSR1, 138)], ids=["ctrl_c", "sigusr1"])  # SIGTERM: test_preemption.py
def test_a_signal_mid_fit_stops_cleanly_and_the_same_command_resumes(sig, code, tmp_path):
    command = ["data=digits", "data.train_size=400", "training.epochs=30", "checkpoint=none"]
    process = start(command, tmp_path)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("fit     | epoch 3/30"):
            sent = time.monotonic()
            process.send_signal(sig)
            break
    lines += process.stdout.readlines()
    process.wait(timeout=60)

    assert process.returncode == code
    assert time.monotonic() - sent < 10  # "within a few seconds", with room for a loaded 2-core machine: most of it is Python and TensorFlow shutting down
    output = "".join(lines)
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (stopped,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert stopped.info.status == "KILLED"
    last = output.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"interrupted by {sig.name} during fit, epoch \d+, step \d+: run {stopped.info.run_id} is marked KILLED; "
        rf"run the same command to resume it: \S*python\S* -m pipeline {' '.join(command)}",
        last,
    ), last
    assert_only_pipeline_lines("\n".join(output.strip().splitlines()[:-1]))

    result = run_cli(*command, cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    (finished,) = client.search_runs([stopped.info.experiment_id])
    assert finished.info.run_id == stopped.info.run_id and finished.info.status == "FINISHED"
    (folder,) = (tmp_path / "outputs" / "runs").iterdir()  # one folder, and one log that goes on
    log = (folder / "pipeline.log").read_text()
    assert log.index(f"run {stopped.info.run_id} is marked KILLED") < log.index(f"resume  | resuming in {folder}") < log.index("done    |")


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--cfg", "job", "--resolve"], "run_name: ''"),
        (["--cfg", "hydra"], "job_logging:"),
        (["--cfg", "all"], "hydra:"),
        (["--info"], "Config search path"),
        (["--help"], "== Configuration groups =="),
        (["--hydra-help"], "Hydra (1.3"),
        (["--shell-completion", "install=bash"], "complete -o nospace"),
    ],
)
def test_hydras_standard_flags_work(flags, expected, tmp_path):
    result = run_cli(*flags, cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout
    assert not (tmp_path / "outputs" / "runs").exists()
