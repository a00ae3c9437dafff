"""benchmarks/run.py on tiny workloads: every table, consistent numbers, the file and the MLflow run.
No timing is asserted: on tiny workloads the numbers mean nothing."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from conftest import PROJECT, mlp_factory

spec = importlib.util.spec_from_file_location("benchmarks_run", PROJECT / "benchmarks" / "run.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def rows(markdown: str, title: str) -> list[list[str]]:
    """The body rows of the table under the heading that starts with `title`."""
    section = markdown.split(f"### {title}", 1)[1]
    lines = [line for line in section.split("\n\n", 2)[1].splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def number(cell: str) -> float:
    return float(re.sub(r"[^0-9.eE+-]", "", cell))


def test_sides_alternate_and_flops_count_the_dense_kernels():
    calls = []
    a, b = bench.alternate(3, lambda: calls.append("A") or {"side": "A"}, lambda: calls.append("B") or {"side": "B"})
    assert calls == ["A", "B"] * 3 and len(a) == len(b) == 3

    model = mlp_factory((784,), 10, hidden_units=512)()
    macs = 784 * 512 + 512 * 10
    assert bench.training_flops(model, 60000, 10000) == 6 * macs * 60000 + 2 * macs * 10000


@pytest.mark.slow
def test_tiny_run_writes_every_table_and_logs_it_to_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path / 'benchmarks.db'}"
    command = [sys.executable, str(PROJECT / "benchmarks" / "run.py"), "--tiny", "--repeats", "1", "--out", str(tmp_path / "out"), "--mlflow", "--tracking-uri", uri]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert result.returncode == 0, result.stderr[-3000:]

    text = (tmp_path / "out" / "results.md").read_text()
    assert text.startswith("## Benchmarks\n\nMachine: ") and f"{os.cpu_count()} cores" in text
    tutorial = rows(text, "1. The tutorial's work")
    assert [r[0] for r in tutorial] == ["work after imports", "whole process (an existing store)", "whole process (a new store)", "work after imports, no system metrics", "whole process, no system metrics"]
    assert "System metrics on / off: work " in text
    for _, plain, pipeline, ratio, _target in tutorial:
        assert number(ratio) == pytest.approx(number(pipeline) / number(plain), rel=0.02)
    throughput = rows(text, "2. Training throughput")
    assert [(r[0], r[1]) for r in throughput] == [("32", "plain fit"), ("32", "pipeline, 1 step a call"), ("32", "pipeline (default: 16 steps a call)")]
    for row in throughput:  # first epoch and steady state apart; the ratio is of the steady rates
        assert number(row[2]) > 0 and number(row[4]) == pytest.approx(number(row[3]) / number(throughput[0][3]), rel=0.02)
    (options,) = rows(text, "Precision and compilation options")
    assert options[1].endswith("(1.00x)") and options[4] in ("float32", "mixed_bfloat16", "jit_compile (XLA)")
    formats = rows(text, "3. Save and load per format")
    assert [(r[0], r[2]) for r in formats] == [(m, f) for m in ("mlp 16", "mlp 800") for f in ("keras", "h5", "savedmodel", "weights", "tf_checkpoint", "onnx", "litert", "openvino")]
    for row in formats:
        assert number(row[7]) == pytest.approx(number(row[5]) / number(row[6]), rel=0.02)
    deploy = rows(text, "4. Deploy formats, each in its own runtime")
    runtimes = ["keras (trained model)", "onnx", "litert", "openvino"] + (["onnx_browser"] if "browser row is left out" not in text else [])
    assert [(r[0], r[2]) for r in deploy] == [(m, f) for m in ("mlp 16", "mlp 800") for f in runtimes]
    for row in deploy:  # each runtime reproduced the Keras model: the same accuracy, logits within the tolerance
        assert row[7] == next(r[7] for r in deploy if r[0] == row[0] and r[2].startswith("keras"))
        assert number(row[5]) <= 1e-5 and number(row[8]) > 0 and number(row[9]) > 0 and row[10] in ("reference", "OK")
    basic, joblib = rows(text, "5. Sweeps")
    assert number(basic[2]) == pytest.approx(2 * 60 / number(basic[1]), rel=0.02)
    assert number(joblib[3]) == pytest.approx(number(basic[1]) / number(joblib[1]), rel=0.02)
    large = rows(text, "6. Checkpoints of a large model")
    assert [r[0] for r in large] == [
        "plain fit, no checkpoints, on a tf.data Dataset without autotuning (the pipeline's input)", "plain fit, no checkpoints, on arrays (Keras's own dataset, autotuned)",
        "plain fit, no checkpoints, on the same Dataset, TensorFlow's default CPU allocator", "pipeline, checkpoint.background=false", "pipeline, checkpoint.background=true",
    ]  # fmt: skip
    for row in large:  # each side's steady epoch against plain fit's; a whole training outlasts its first epoch; memory was measured
        assert number(row[3]) == pytest.approx(number(row[2]) / number(large[0][2]), rel=0.02)
        assert number(row[5]) > number(row[1]) and number(row[6]) > 0.1
    servers = rows(text, "7. A team's tracking server under load")
    stores = ["sqlite", "postgresql"] if "PostgreSQL rows are left out" not in text else ["sqlite"]
    assert [(r[0], r[1]) for r in servers] == [("2", store) for store in stores]
    for row in servers:  # every write landed: no call failed, the server holds every run, value and artifact
        assert number(row[2]) > 0 and row[6] == "0" and row[7] == "0"
        assert number(row[3]) == pytest.approx(number(row[2]) / number(servers[0][2]), rel=0.02)
    assert "### 7. A team's tracking server under load" in result.stdout  # the tables are printed as well as written

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("benchmarks").experiment_id])
    assert {"tutorial/work_seconds_ratio", "tutorial/whole_ratio", "throughput/batch32_ratio", "throughput/batch32_default_ratio", "deploy/mlp800/litert/latency_ms_batch1", "sweeps/joblib_jobs_per_minute", "checkpoints/background_epoch_ratio", "servers/sqlite_2_metrics_per_second", "servers/sqlite_2_lost"} <= set(run.data.metrics)
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["results.md"]
