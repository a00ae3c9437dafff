"""The deploy formats: ONNX, LiteRT and OpenVINO, each exported with model.export, run back in its
own runtime (and the ONNX file in a browser), held to its own tolerance, timed there, described
without TensorFlow, asked for only with their packages installed, and failing alone, with the
runtime's reason, when a runtime cannot take the model. (Every architecture through them: test_formats.py.)"""

import json
import os
import subprocess
import sys

import pytest

from conftest import PROJECT, only_run
from pipeline import browser
from pipeline.errors import ExportError, VerificationError
from pipeline.formats import FORMATS
from pipeline.task import run

QUICK = ["data=digits", "training.epochs=2", "data.train_size=256", "data.test_size=128", "checkpoint=none"]
DEPLOY = ["onnx", "litert", "openvino"]


def test_each_runs_in_its_runtime_and_the_report_compares_them_with_keras(make_cfg, client, tmp_path):
    metrics = run(make_cfg(*QUICK, f"save=[keras,{','.join(DEPLOY)}]", "+verify.tolerance.litert=1e-3"))

    report = json.loads((tmp_path / "job" / "reports" / "verify.json").read_text())
    checks = {c["artifact"]: c for c in report["artifacts"]}
    assert {checks[name]["runtime"] for name in DEPLOY} == {"onnxruntime (CPU)", "LiteRT interpreter (ai_edge_litert)", "OpenVINO runtime (CPU, f32)"}
    assert (checks["onnx"]["atol"], checks["litert"]["atol"], checks["openvino"]["atol"]) == (1e-4, 1e-3, 1e-4)  # the override, and the runtimes' floor
    for name in DEPLOY:
        assert checks[name]["ok"] and checks[name]["max_abs_diff"] <= 1e-5 and checks[name]["accuracy"] == pytest.approx(report["trained_accuracy"])
        assert metrics[f"{name}/latency_ms_batch1"] > 0 and metrics[f"{name}/latency_ms_batch256"] > 0
    assert metrics["trained/latency_ms_batch1"] > 0 and set(report["keras_latency_ms"]) == {"1", "256"}
    table = (tmp_path / "job" / "reports" / "verify.md").read_text().split("## Deploy formats, each in its own runtime", 1)[1]
    assert [line.split("|")[1].strip() for line in table.strip().splitlines()[2:6]] == ["keras (trained model)", *DEPLOY]
    assert {a.path for a in client.list_artifacts(only_run(client).info.run_id, "saved/openvino/model")} == {"saved/openvino/model/model.xml", "saved/openvino/model/model.bin"}

    # described by their own readers, without TensorFlow
    script = (
        "import sys; from pipeline.inspect import main\n"
        f"for name in {[str(p) for p in (tmp_path / 'job' / 'saved').glob('*/model*') if not p.name.endswith('.keras')]!r}: main([name])\n"
        "print('tensorflow imported:', 'tensorflow' in sys.modules)"
    )
    inspected = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(PROJECT)}, capture_output=True, text=True, timeout=300)
    assert inspected.returncode == 0, inspected.stderr[-2000:]
    assert "tensorflow imported: False" in inspected.stdout
    assert "inputs: keras_tensor float[None, 8, 8, 1]" in inspected.stdout and "opset: ai.onnx" in inspected.stdout  # onnx
    assert "ops: 6 of 5 kinds: FULLY_CONNECTED x2" in inspected.stdout  # litert, the file's own ops
    assert "outputs: Identity:0 f32[None, 10]" in inspected.stdout  # openvino


def test_a_runtime_held_to_a_tighter_tolerance_fails_that_format_alone(make_cfg, tmp_path):
    with pytest.raises(VerificationError, match=r"reload-verify failed for 1 of 2 artifacts: onnx \(saved/onnx/model.onnx\): predictions differ by .* \(> atol 0\)"):
        run(make_cfg(*QUICK, "save=[onnx,openvino]", "+verify.tolerance.onnx=0"))
    report = json.loads((tmp_path / "job" / "reports" / "verify.json").read_text())
    assert [c["ok"] for c in report["artifacts"]] == [False, True]


@pytest.mark.parametrize("quantize, size_vs_float", [("dynamic", 0.4), ("float16", 0.6)])
def test_a_quantized_litert_model_is_smaller_and_held_to_the_accuracy_it_may_lose(quantize, size_vs_float, make_cfg, tmp_path):
    metrics = run(make_cfg(*QUICK, "save=[litert]", f"save.litert.quantize={quantize}"))

    report = json.loads((tmp_path / "job" / "reports" / "verify.json").read_text())
    (check,) = report["artifacts"]
    assert check["ok"] and check["quantized"] == quantize
    assert check["max_abs_diff"] > 1e-4  # its logits differ: held to the float tolerance, it would have failed
    assert report["trained_accuracy"] - check["accuracy"] <= 0.01  # verify.max_accuracy_drop
    assert metrics["litert/bytes_vs_raw"] < size_vs_float  # against the float32 weights


@pytest.mark.parametrize("fmt, missing", [("onnx", "tf2onnx"), ("litert", "ai-edge-litert"), ("openvino", "openvino")])
def test_a_deploy_format_without_its_package_stops_before_anything_with_the_install_command(fmt, missing, tmp_path):
    """Run as if the package were not installed (Python finds no module where sys.modules holds None)."""
    module = missing.replace("-", "_")
    script = f"import runpy, sys; sys.modules[{module!r}] = None; sys.argv = ['pipeline', 'save=[keras,{fmt}]']; runpy.run_module('pipeline', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(PROJECT)}, capture_output=True, text=True, timeout=300)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: save=[{fmt}] needs {missing}, not installed: pip install 'keras-save-pipeline[deploy]' (or pip install {missing})"
    assert "tensorflow" not in result.stderr.lower() and not (tmp_path / "outputs" / "runs").exists()


def test_a_model_a_runtime_cannot_take_fails_that_format_alone_with_the_runtimes_reason(make_cfg, client, tmp_path):
    """A cumulative product: ONNX runs it, LiteRT's interpreter lacks its kernel, OpenVINO cannot convert it."""
    with pytest.raises(VerificationError, match=r"reload-verify failed for 2 of 4 artifacts: litert .*; openvino "):
        run(make_cfg(*QUICK, "model=custom", "model._target_=unconvertible.model", f"save=[keras,{','.join(DEPLOY)}]"))

    checks = {c["artifact"]: c for c in json.loads((tmp_path / "job" / "reports" / "verify.json").read_text())["artifacts"]}
    assert checks["keras"]["ok"] and checks["onnx"]["ok"] and checks["onnx"]["max_abs_diff"] <= 1e-5  # the others still verify
    (litert,) = checks["litert"]["problems"]
    assert litert.startswith("load failed: LiteRT interpreter (ai_edge_litert) failed to run the model: RuntimeError: Select TensorFlow op(s)")
    assert litert.endswith("Make sure you apply/link the Flex delegate before inference.")
    assert checks["openvino"]["problems"] == ["model.export(format='openvino') cannot convert the model: OpConversionFailure: No conversion rule found for operations: Cumprod"]
    assert not any((tmp_path / "job" / "saved" / "openvino").iterdir())  # nothing half-converted under the final name
    run_id = only_run(client).info.run_id
    assert client.get_run(run_id).info.status == "FAILED"
    assert client.get_run(run_id).data.metrics["openvino/verified"] == 0.0 and client.get_run(run_id).data.metrics["onnx/verified"] == 1.0


def test_an_op_tf2onnx_cannot_convert_fails_the_onnx_export_in_one_line(tmp_path):
    """tf2onnx logs what it cannot convert and writes a graph no runtime loads: that is one failed export, not a traceback."""
    import keras

    from unconvertible import CumulativeProduct

    class NegativeAxis(CumulativeProduct):  # tf2onnx 1.17 fails on a cumulative product along axis -1
        def call(self, x):
            return keras.ops.cumprod(x, axis=-1)

    inputs = keras.Input((4,))
    model = keras.Model(inputs, NegativeAxis()(inputs))
    model(keras.ops.zeros((1, 4)))  # model.export takes a model that has been called
    with pytest.raises(ExportError, match=r"^model.export\(format='onnx'\) cannot convert the model: tf2onnx: Failed to convert node '.*Cumprod': ValueError: negative dimensions are not allowed$"):
        FORMATS["onnx"].save(model, tmp_path / "model.onnx")


def test_the_onnx_export_runs_in_headless_chromium_through_onnxruntime_web(make_cfg, client, tmp_path):
    if browser.problems(None, "~/.cache/keras-save-pipeline"):
        pytest.skip(f"verify.browser needs {browser.problems(None, '~/.cache/keras-save-pipeline')} (.ci/run installs Chromium)")
    metrics = run(make_cfg(*QUICK, "save=[onnx]", "verify.browser=true"))

    report = json.loads((tmp_path / "job" / "reports" / "verify.json").read_text())
    checks = {c["artifact"]: c for c in report["artifacts"]}
    page = checks["onnx_browser"]
    assert page["ok"] and page["path"] == checks["onnx"]["path"] == "saved/onnx/model.onnx"
    assert page["runtime"].startswith("onnxruntime-web 1.30.0 in headless Chromium ") and page["runtime"].endswith("(wasm)")
    assert 0 < page["max_abs_diff"] <= 1e-5  # computed in the page (wasm), not by a copy of the logits
    assert page["accuracy"] == pytest.approx(report["trained_accuracy"])
    assert metrics["onnx_browser/verified"] == 1.0 and metrics["onnx_browser/latency_ms_batch1"] > 0 and metrics["onnx_browser/latency_ms_batch256"] > 0
    table = (tmp_path / "job" / "reports" / "verify.md").read_text().split("## Deploy formats, each in its own runtime", 1)[1]
    assert [line.split("|")[1].strip() for line in table.strip().splitlines()[2:5]] == ["keras (trained model)", "onnx", "onnx_browser"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["save=[keras]", "verify.browser=true"], "error: verify.browser=true runs the onnx export in the browser: add it, e.g. save=[keras,onnx]"),
        (["save=[onnx]", "verify.browser=true", "verify.chromium=/nonexistent/chromium"], "error: verify.browser=true: verify.chromium=/nonexistent/chromium does not exist"),
        (["save=[onnx]", "+verify.tolerance.browser=1e-4"], "error: verify.tolerance='browser' is not one of: h5, keras, litert, onnx, onnx_browser, openvino, savedmodel, tf_checkpoint, weights"),
    ],
)
def test_browser_settings_that_cannot_work_are_refused_before_anything_starts(overrides, message, tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline", *overrides], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(PROJECT)}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == message
    assert not (tmp_path / "outputs" / "runs").exists()
