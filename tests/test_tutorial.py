"""End to end through the real CLI: the tutorial's numbers, and everything a user finds in MLflow."""

import json
import re
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import EXPERIMENT, PROJECT, assert_only_pipeline_lines, checkpoint_models, run_cli

pytestmark = pytest.mark.slow


def artifact_paths(client: MlflowClient, run_id: str, folder: str = "") -> set[str]:
    """Every artifact file under a folder, recursively."""
    found = set()
    for item in client.list_artifacts(run_id, folder or None):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def finished_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.status == "FINISHED"
    return client, run


def readme_sample() -> list[str]:
    """The README's sample of a run's output, a pattern a line: `…` stands for anything, and a number for any number."""
    block = (PROJECT / "README.md").read_text().split("A run prints", 1)[1].split("```\n", 1)[1].split("```", 1)[0]

    def pattern(line: str) -> str:
        parts = re.split(r"(\w*…|\d(?:[\d.,]*\d)?)", line)  # "1d1b8a1e…" is an abridged id
        return "".join(".*" if part.endswith("…") else r"\d[\d.,]*" if part[:1].isdigit() else re.escape(part) for part in parts)

    return [pattern(line) for line in block.splitlines()]


def test_default_experiment_reproduces_the_tutorial(tmp_path):
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert_only_pipeline_lines(output)  # (so no "retracing" warning: loading each artifact into a fresh model retraces predict)
    # The README shows this output as it is, but for what differs between runs: ids, times, folders, numbers.
    logged_model = re.compile("mlflow  \\| logged the model")  # from the tracking thread: its place among the lines varies
    lines = [line for line in output.strip().splitlines() if not logged_model.match(line)]
    expected = [pattern for pattern in readme_sample() if not logged_model.match(pattern.replace("\\", ""))]
    assert len(output.strip().splitlines()) == len(lines) + 1
    assert len(lines) == len(expected), (lines, expected)
    for line, pattern in zip(lines, expected):
        assert re.fullmatch(pattern, line), (line, pattern)

    (log,) = tmp_path.glob("outputs/runs/*/pipeline.log")  # the full record, with times
    assert re.search(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[pipeline\.stages\.fit\]\[INFO\] - fit     \| epoch 1/10", log.read_text(), re.M)

    client, run = finished_run(tmp_path)
    assert run.info.run_name == "mlp-every_epoch-keras"
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    assert 0.05 <= metrics["untrained_accuracy"] <= 0.15
    assert metrics["keras/restored_accuracy"] >= 0.84
    assert metrics["checkpoint/restored_accuracy"] >= 0.84
    assert metrics["keras/max_abs_diff"] <= 1e-5 and metrics["keras/file_bytes"] > 0
    assert {"keras/save_seconds", "keras/load_seconds"} <= set(metrics)

    assert params["model._target_"] == "pipeline.architectures.mlp" and params["model.hidden_units"] == "512"
    assert params["training.epochs"] == "10" and params["data.train_size"] == "1000"
    assert params["checkpoint.policy"] == "every_epoch"
    assert (tags["architecture"], tags["checkpoint_policy"], tags["save_formats"]) == ("mlp", "every_epoch", "keras")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True)
    assert tags.get("git.commit") == (head.stdout.strip() if head.returncode == 0 else None)

    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == list(range(10)), name

    files = artifact_paths(client, run.info.run_id)
    assert [m.tags["file"] for m in checkpoint_models(client, run)] == [f"cp-{e:04d}.weights.h5" for e in range(1, 11)]
    assert {
        "config.yaml",
        "hydra/config.yaml",
        "hydra/overrides.yaml",
        "hydra/hydra.yaml",
        "model_summary.txt",
        "saved/keras/model.keras",
        "reports/verify.json",
        "reports/verify.md",
        "plots/training_curves.png",
    } <= files
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "reports/verify.json", str(tmp_path))).read_text())
    assert report["ok"] and {a["artifact"] for a in report["artifacts"]} == {"keras", "checkpoint"}


def test_cnn_every_five_epochs_in_three_formats(tmp_path):
    result = run_cli("model=cnn", "checkpoint=every_n_epochs", "checkpoint.every=5", "save=[keras,h5,savedmodel]", cwd=tmp_path)  # as in the README
    assert result.returncode == 0, result.stderr[-3000:]
    assert_only_pipeline_lines(result.stdout + result.stderr)

    client, run = finished_run(tmp_path)
    assert run.data.tags["overrides"] == "model=cnn checkpoint=every_n_epochs checkpoint.every=5 save=[keras,h5,savedmodel]"
    files = artifact_paths(client, run.info.run_id)
    assert [m.tags["file"] for m in checkpoint_models(client, run)] == ["cp-0000.weights.h5", "cp-0005.weights.h5", "cp-0010.weights.h5"]
    assert {"saved/keras/model.keras", "saved/h5/model.h5", "saved/savedmodel/model/saved_model.pb"} <= files
    for name in ("keras", "h5", "savedmodel", "checkpoint"):
        assert run.data.metrics[f"{name}/verified"] == 1.0
        assert run.data.metrics[f"{name}/restored_accuracy"] >= 0.84
    assert run.data.tags["save_formats"] == "keras,h5,savedmodel"
