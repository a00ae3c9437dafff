"""Stage 5: load every saved artifact and the latest checkpoint afresh, and prove each one
predicts what the trained model predicted and brings back its optimizer state.

The report names each artifact, how far its predictions are from the reference,
its accuracy next to an untrained model's, and whether the optimizer came back.
Any artifact that does not round-trip fails the run.
"""

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import keras
import numpy as np

from pipeline.browser import CHECK, OnnxInBrowser
from pipeline.checkpoints import CheckpointRecord
from pipeline.config import VerifyConfig
from pipeline.context import RunContext
from pipeline.errors import ArtifactError, VerificationError, describe
from pipeline.files import disk_bytes
from pipeline.formats import LoadContext, SaveFormat, load
from pipeline.formats.base import predict_logits
from pipeline.markdown import markdown_table
from pipeline.paths import RunPaths
from pipeline.stages.data import Dataset
from pipeline.stages.save import SavedArtifact
from pipeline.tracking.tracker import Tracker

log = logging.getLogger(__name__)


# The evaluation stage, which runs next, writes these beside the report's folder.
EVALUATION_LINKS = """## Evaluation on the test set

The trained model judged class by class: [evaluation](../evaluation/evaluation.md),
[confusion matrix](../evaluation/confusion_matrix.png), [per-class precision, recall and F1](../evaluation/per_class.csv),
[misclassified examples](../evaluation/misclassified.png).
"""


@dataclass
class Reference:
    """What a restored artifact must reproduce."""

    description: str
    predictions: np.ndarray
    iterations: int
    optimizer_variables: list[np.ndarray]


@dataclass
class Check:
    artifact: str  # a save format's name, or "checkpoint"
    format: str
    path: str
    reference: str
    max_abs_diff: Optional[float] = None
    accuracy: Optional[float] = None
    optimizer: str = "not carried"
    load_seconds: Optional[float] = None
    bytes: Optional[int] = None
    raw_bytes: Optional[int] = None  # the uncompressed arrays the artifact stores
    save_seconds: Optional[float] = None
    atol: Optional[float] = None  # the tolerance it was held to
    runtime: Optional[str] = None  # a deploy format's own runtime, where it was run
    quantized: str = ""  # how, if it was: then held to the accuracy it may lose, not to atol
    latency_ms_batch1: Optional[float] = None  # milliseconds per example in that runtime, one example a call
    latency_ms_batch256: Optional[float] = None  # and 256 a call
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def compare_optimizer(restored: Any, reference: Reference) -> tuple[str, Optional[str]]:
    """A one-line summary of the restored optimizer state, and the problem if it did not come back."""
    if restored is None or not restored.built:
        return "missing", f"optimizer state not restored (expected {reference.iterations} iterations)"
    iterations = int(restored.iterations.numpy())
    values = [v.numpy() for v in restored.variables]
    if iterations != reference.iterations:
        return f"{iterations} iterations", f"optimizer iterations {iterations}, expected {reference.iterations}"
    shapes, expected_shapes = [v.shape for v in values], [v.shape for v in reference.optimizer_variables]
    if shapes != expected_shapes:
        return "mismatched", f"optimizer has {len(values)} variables of shapes {shapes}, expected {expected_shapes}"
    diff = max((float(np.max(np.abs(a - b), initial=0.0)) for a, b in zip(values, reference.optimizer_variables)), default=0.0)
    if diff > 0:
        return f"differs by {diff:.3g}", f"optimizer variables differ by up to {diff:.3g}"
    return f"restored: {iterations} iterations, {len(values)} variables", None


LATENCY_BATCHES = {1: 30, 256: 5}  # examples a call: timed calls


def latency_ms(predict: Callable[[np.ndarray], Any], x: np.ndarray, batch: int, seconds_per_call: Optional[Callable] = None) -> float:
    """Median milliseconds per example of `predict` on `batch` examples a call, after a warm-up call;
    or the mean, where the runtime times its own calls (`Restored.seconds_per_call`)."""
    sample = np.resize(x, (batch, *x.shape[1:]))  # the test set, repeated if it is smaller
    if seconds_per_call is not None:
        return 1000 * seconds_per_call(sample, LATENCY_BATCHES[batch]) / batch
    predict(sample)
    times = []
    for _ in range(LATENCY_BATCHES[batch]):
        start = time.perf_counter()
        predict(sample)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / batch


def verify_artifact(
    check: Check, fmt: SaveFormat, path: Path, ctx: LoadContext, reference: Reference, expect_optimizer: bool, data: Dataset, atol: float, max_accuracy_drop: float = 0.0
) -> Check:
    check.atol = atol
    start = time.perf_counter()
    try:
        restored = load(fmt, path, ctx)
        predictions = restored.predict(data.x_test)
    except Exception as error:  # a corrupt or incompatible file is a finding, not a crash
        check.problems.append(f"load failed: {error if isinstance(error, ArtifactError) else describe(error)}")
        check.runtime = fmt.runtime if fmt.deployed else None  # the deploy table lists it, failed
        return check
    check.load_seconds = time.perf_counter() - start
    check.max_abs_diff = float(np.max(np.abs(predictions - reference.predictions)))
    check.accuracy = accuracy(predictions, data.y_test)
    if fmt.quantized:  # its logits legitimately differ: it is held to the accuracy it may lose
        check.quantized = fmt.quantized
        drop = accuracy(reference.predictions, data.y_test) - check.accuracy
        if drop > max_accuracy_drop:
            check.problems.append(f"{fmt.quantized} quantization lost {drop:.2%} accuracy (> verify.max_accuracy_drop {max_accuracy_drop:.2%})")
    elif not check.max_abs_diff <= atol:
        check.problems.append(f"predictions differ by {check.max_abs_diff:.3g} (> atol {atol:g})")
    if fmt.deployed:  # what it costs to run there, per example
        check.runtime = fmt.runtime
        check.latency_ms_batch1, check.latency_ms_batch256 = (
            latency_ms(restored.predict, data.x_test, batch, restored.seconds_per_call) for batch in LATENCY_BATCHES
        )
    if expect_optimizer:
        check.optimizer, problem = compare_optimizer(restored.optimizer, reference)
        if problem:
            check.problems.append(problem)
    return check


def _trained_reference(model: keras.Model, data: Dataset) -> Reference:
    return Reference(
        description="trained model",
        predictions=predict_logits(model, data.x_test),
        iterations=int(model.optimizer.iterations.numpy()),
        optimizer_variables=[v.numpy() for v in model.optimizer.variables],
    )


def _checkpoint_reference(record: CheckpointRecord, fresh_model: Callable[[], keras.Model], data: Dataset) -> Reference:
    """The weights held in memory when the checkpoint was written."""
    model = fresh_model()
    model.set_weights(record.weights)
    return Reference(
        description=f"weights at epoch {record.epoch}, step {record.step}",
        predictions=predict_logits(model, data.x_test),
        iterations=record.step,
        optimizer_variables=[keras.ops.convert_to_numpy(v) for v in record.optimizer_variables],
    )


def deploy_table(report: "Report") -> tuple[list[str], list[list[str]]]:
    """Each deploy format in its own runtime next to the trained Keras model: size, fidelity, speed."""

    def ms(value):
        return "-" if value is None else f"{value:.3g}"

    header = ["format", "runtime", "bytes", "max abs diff", "tolerance", "accuracy", "ms/example, batch 1", "ms/example, batch 256", "result"]
    keras_row = ["keras (trained model)", "TensorFlow (Keras predict_on_batch)", "-", "0", "-", f"{report.trained_accuracy:.2%}"]
    rows = [keras_row + [ms(report.keras_latency_ms.get(1)), ms(report.keras_latency_ms.get(256)), "reference"]]
    for c in (c for c in report.checks if c.runtime):
        diff = "-" if c.max_abs_diff is None else f"{c.max_abs_diff:.3g}"
        accuracy_cell = "-" if c.accuracy is None else f"{c.accuracy:.2%}"
        tolerance = f"{c.quantized}: accuracy" if c.quantized else "-" if c.atol is None else f"{c.atol:g}"
        result = "OK" if c.ok else "FAILED: " + "; ".join(c.problems)
        rows.append([c.artifact, c.runtime, f"{c.bytes:,}" if c.bytes else "-", diff, tolerance, accuracy_cell, ms(c.latency_ms_batch1), ms(c.latency_ms_batch256), result])
    return header, rows


def _deploy_markdown(report: "Report") -> str:
    return f"## Deploy formats, each in its own runtime\n\n{markdown_table(*deploy_table(report))}\n\n"


def _markdown(checks: list[Check], untrained: float, trained: float, atol: float, deploy: str = "") -> str:
    def cell(value, spec=""):
        return "-" if value is None else format(value, spec)

    header = ["artifact", "format", "path", "max abs diff", "accuracy", "optimizer", "bytes", "x raw", "save s", "load s", "result"]
    rows = []
    for c in checks:
        result = "OK" if c.ok else "FAILED: " + "; ".join(c.problems)
        vs_raw = c.bytes / c.raw_bytes if c.bytes and c.raw_bytes else None
        rows.append(
            [c.artifact, c.format, c.path, cell(c.max_abs_diff, ".3g"), cell(c.accuracy, ".2%"), c.optimizer]
            + [cell(c.bytes, ","), cell(vs_raw, ".2f"), cell(c.save_seconds, ".2f"), cell(c.load_seconds, ".2f"), result]
        )
    summary = f"Untrained model accuracy: {untrained:.2%}. Trained model accuracy: {trained:.2%}. Tolerance: {atol:g}."
    return f"{summary}\n\n{markdown_table(header, rows)}\n\n{deploy}{EVALUATION_LINKS}"


@dataclass
class Report:
    untrained_accuracy: float
    trained_accuracy: float
    atol: float
    checks: list[Check]
    keras_latency_ms: dict = field(default_factory=dict)  # the trained Keras model's, per example, by batch size

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def reload_verify(
    model: keras.Model,
    data: Dataset,
    saved: list[SavedArtifact],
    checkpoint: Optional[CheckpointRecord],
    fresh_model: Callable[[], keras.Model],
    cfg: VerifyConfig,
    ctx: RunContext,
    declared: tuple = (),
) -> Report:
    """Verify every saved artifact against the trained model, and the last checkpoint against the
    state it was written from; raises VerificationError, after the report is written, if any fails.
    `declared` are the user's modules (`imports`, the model's own): names in them pass the trust scan."""
    paths = ctx.paths
    loading = LoadContext(fresh_model=fresh_model, safe_mode=not cfg.trust, declared=declared)
    report = verify_saved(model, data, saved, loading, cfg, paths.root)
    if checkpoint is not None:
        report.checks.append(_verify_checkpoint(checkpoint, fresh_model, loading, data, cfg.atol, paths))
    _record(report, paths, ctx.tracker)
    if report.failures:
        details = "; ".join(f"{c.artifact} ({c.path}): {', '.join(c.problems)}" for c in report.failures)
        raise VerificationError(f"reload-verify failed for {len(report.failures)} of {len(report.checks)} artifacts: {details}. Report: {paths.reports / 'verify.md'}")
    return report


def verify_saved(model: keras.Model, data: Dataset, saved: list[SavedArtifact], loading: LoadContext, cfg: VerifyConfig, root: Path) -> Report:
    """Every saved artifact against the trained model, and with `cfg.browser` the `.onnx` in a
    browser too; paths in the report are relative to `root`. It records nothing: `reload_verify`
    does, and the benchmarks tabulate it."""
    trained = _trained_reference(model, data)
    untrained = accuracy(predict_logits(loading.fresh_model(), data.x_test), data.y_test)  # first, so the save list does not change it
    checks = []
    for artifact in saved:
        check = Check(artifact.format.name, artifact.format.name, str(artifact.path.relative_to(root)), trained.description)
        check.bytes, check.raw_bytes, check.save_seconds = artifact.bytes or None, artifact.raw_bytes, artifact.save_seconds
        if artifact.error:  # the converter could not take the model: nothing to load
            check.problems.append(artifact.error)
            check.runtime = artifact.format.runtime  # only deploy formats fail this way; their table lists it, failed
            checks.append(check)
            continue
        tolerance = _tolerance(cfg, artifact.format)
        checks.append(verify_artifact(check, artifact.format, artifact.path, loading, trained, artifact.format.carries_optimizer, data, tolerance, cfg.max_accuracy_drop))
    if cfg.browser:
        checks.append(_verify_in_browser(next(a for a in saved if a.format.name == "onnx"), cfg, loading, trained, data, root))
    report = Report(untrained, accuracy(trained.predictions, data.y_test), cfg.atol, checks)
    if any(c.runtime for c in checks):  # the deploy table compares each runtime with Keras itself
        report.keras_latency_ms = {batch: latency_ms(model.predict_on_batch, data.x_test, batch) for batch in LATENCY_BATCHES}
    return report


def _verify_checkpoint(record: CheckpointRecord, fresh_model, loading: LoadContext, data: Dataset, atol: float, paths: RunPaths) -> Check:
    """The newest checkpoint on disk, found as a user would find it, must be the last one
    written and must hold the state it was written from."""
    latest = record.format.latest_checkpoint(record.path.parent)
    check = Check("checkpoint", record.format.name, str(latest.relative_to(paths.root)) if latest else "-", "")
    reference = _checkpoint_reference(record, fresh_model, data)
    check.reference = reference.description
    if latest != record.path:
        check.problems.append(f"newest checkpoint on disk is {latest}, but the last one written was {record.path}")
        return check
    check.bytes = sum(disk_bytes(f) for f in record.format.files(latest))
    return verify_artifact(check, record.format, latest, loading, reference, record.carries_optimizer, data, atol)


def _verify_in_browser(onnx: SavedArtifact, cfg: VerifyConfig, loading: LoadContext, trained: Reference, data: Dataset, root: Path) -> Check:
    """The `.onnx` artifact again, run by onnxruntime-web in headless Chromium (validation made sure it was asked for)."""
    check = Check(CHECK, onnx.format.name, str(onnx.path.relative_to(root)), trained.description, bytes=onnx.bytes or None)
    if onnx.error:
        check.problems.append("not run: the onnx export failed")
        return check
    with OnnxInBrowser(cfg.chromium, cfg.browser_cache) as in_browser:
        return verify_artifact(check, in_browser, onnx.path, loading, trained, False, data, _tolerance(cfg, in_browser))


def _tolerance(cfg: VerifyConfig, fmt: SaveFormat) -> float:
    """What a format's logits are held to: its own setting, else verify.atol, or its runtime's floor if that is larger."""
    return cfg.tolerance.get(fmt.name, max(cfg.atol, fmt.tolerance_floor))


def _record(report: Report, paths: RunPaths, tracker: Tracker) -> None:
    paths.reports.mkdir(parents=True, exist_ok=True)
    payload = {
        "untrained_accuracy": report.untrained_accuracy,
        "trained_accuracy": report.trained_accuracy,
        "atol": report.atol,
        "keras_latency_ms": report.keras_latency_ms,
        "ok": not report.failures,
        "artifacts": [{**asdict(c), "ok": c.ok} for c in report.checks],
    }
    (paths.reports / "verify.json").write_text(json.dumps(payload, indent=2))
    deploy = _deploy_markdown(report) if report.keras_latency_ms else ""
    table = _markdown(report.checks, report.untrained_accuracy, report.trained_accuracy, report.atol, deploy)
    (paths.reports / "verify.md").write_text("# Reload-verify report\n\n" + table)
    tracker.log_folder(paths.reports)

    metrics = {"untrained_accuracy": report.untrained_accuracy, "trained_accuracy": report.trained_accuracy}
    for c in report.checks:
        for key in ("max_abs_diff", "accuracy", "load_seconds", "latency_ms_batch1", "latency_ms_batch256"):
            value = getattr(c, key)
            if value is not None:
                metrics[f"{c.artifact}/{'restored_accuracy' if key == 'accuracy' else key}"] = value
        metrics[f"{c.artifact}/verified"] = float(c.ok)
    metrics.update({f"trained/latency_ms_batch{batch}": value for batch, value in report.keras_latency_ms.items()})
    tracker.log_metrics(metrics)
    for c in report.checks:
        if c.max_abs_diff is None:  # nothing came back to compare: say why
            log.info("verify  | %-13s FAILED: %s", c.artifact, "; ".join(c.problems))
            continue
        quantized = f", {c.quantized}-quantized" if c.quantized else ""
        where = f"run in {c.runtime}{quantized}, {c.latency_ms_batch256:.3f} ms/example at batch 256" if c.runtime and c.latency_ms_batch256 else f"optimizer {c.optimizer}"
        log.info(
            "verify  | %-13s %s: max abs diff %.3g, accuracy %.1f%% (untrained %.1f%%), %s",
            c.artifact,
            "OK" if c.ok else "FAILED",
            c.max_abs_diff,
            100 * c.accuracy,
            100 * report.untrained_accuracy,
            where,
        )
