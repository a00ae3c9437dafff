"""The pipeline's cost against plain Keras doing the same work, measured in one run.

    python benchmarks/run.py [--repeats 3] [--sections tutorial,throughput,formats,deploy,sweeps,checkpoints,servers]
                             [--out outputs/benchmarks] [--mlflow] [--tiny]

1. tutorial:   benchmarks/plain_keras.py against `python -m pipeline` on the tutorial's work,
               saved as .keras, .h5 and SavedModel and reloaded: the whole process (with an existing
               MLflow store, and with a new one) and the work after imports.
2. throughput: 4 epochs of full MNIST at batch 32 and 256, the pipeline's fit stage (a checkpoint
               and the training state every epoch, MLflow logging), at one step a call and at its
               default steps_per_execution, against plain `model.fit`: the first epoch and the
               steady state apart; FLOP/s against a matmul peak.
3. formats:    save and load seconds and bytes on disk per format, for the tutorial's model and
               one about 50x larger, against the raw bytes of the weights plus optimizer state.
4. deploy:     reload-verify's deploy table for the same two models: each deploy format in its own
               runtime (and the .onnx in Chromium) against Keras: size, fidelity, accuracy, latency.
5. sweeps:     8 jobs through Hydra's basic launcher against the joblib launcher: jobs per minute.
6. checkpoints: an MLP of 100 million parameters checkpointing every epoch, written on the training
               thread and in the background, against plain `fit` writing nothing: steady epoch
               seconds and peak memory, each side in its own process.
7. servers:    2, 4 and 8 jobs logging metrics and artifacts at once to `mlflow server` on a sqlite
               file and on PostgreSQL: metric values per second, call latency, failures, and
               what the server does not hold afterwards.

Plain Keras (A) and the pipeline (B) alternate, each is repeated, and the tables give
medians and B/A ratios. They are printed as Markdown, written to OUT/results.md and, with
--mlflow, logged to an MLflow run. --tiny shrinks every workload so the tests can check the
script end to end in seconds; its numbers mean nothing.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project, when run as a script

from pipeline.markdown import markdown_table  # noqa: E402
from pipeline.paths import CONF_DIR, PROJECT_DIR  # noqa: E402



@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # the headline numbers, for MLflow

    def markdown(self) -> str:
        def cell(value) -> str:
            if isinstance(value, float):
                return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
            return f"{value:,}" if isinstance(value, int) else str(value)

        table = markdown_table(self.header, [[cell(v) for v in row] for row in self.rows])
        return "\n".join([f"### {self.title}", "", table, "", *self.notes]) + "\n"


@dataclass
class Sizes:
    """The workloads: the issue's by default, a few seconds' worth with --tiny."""

    tutorial_examples: int = 1000
    tutorial_epochs: int = 10
    throughput_train: int = 60000
    throughput_test: int = 10000
    throughput_epochs: int = 4
    batch_sizes: tuple = (32, 256)
    hidden_units: tuple = (512, 25600)  # the tutorial's MLP and one 50x its size (20 million parameters)
    deploy_epochs: int = 5
    sweep_jobs: int = 8
    large_hidden_units: int = 126000  # 100 million parameters
    large_examples: int = 6144  # about 22 s an epoch here
    large_epochs: int = 4
    server_writers: tuple = (2, 4, 8)
    server_steps: int = 100
    server_artifact_every: int = 10

    @classmethod
    def tiny(cls) -> "Sizes":
        return cls(
            tutorial_examples=100, tutorial_epochs=2, throughput_train=512, throughput_test=128, throughput_epochs=2, batch_sizes=(32,), hidden_units=(16, 800),
            deploy_epochs=1, sweep_jobs=2, large_hidden_units=64, large_examples=512, large_epochs=3,
            server_writers=(2,), server_steps=4, server_artifact_every=2,
        )  # fmt: skip


def median(values: list[float]) -> float:
    return statistics.median(values)


def alternate(repeats: int, *sides: Callable[[], dict]) -> tuple[list[dict], ...]:
    """Run A, B, A, B, ... (or A, B, C, ...) so that drift in the machine's speed hits every side alike."""
    results: tuple[list[dict], ...] = tuple([] for _ in sides)
    for _ in range(repeats):
        for side, found in zip(sides, results):
            found.append(side())
    return results


def environment() -> dict:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def timed_process(command: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=environment(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return seconds, result.stdout


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import tensorflow as tf

    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, TensorFlow {tf.__version__}, {platform.system()} {platform.release()}"


def settings(overrides: list[str], root: Path):
    """The pipeline's validated config for `overrides`, its outputs and MLflow store under `root`."""
    from hydra import compose, initialize_config_dir

    from pipeline.validation import validate

    where = [f"paths.root={root}", f"paths.output_dir={root / 'job'}", f"tracking.uri=sqlite:///{root / 'mlflow.db'}", "tracking.run_name=benchmark"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return validate(compose("config", overrides=[*overrides, *where]))


# --- 1. the tutorial's work -----------------------------------------------------------------------


def tutorial(repeats: int, sizes: Sizes, scratch: Path) -> Table:
    from mlflow import MlflowClient

    n, epochs = sizes.tutorial_examples, sizes.tutorial_epochs

    def plain() -> dict:
        folder = Path(tempfile.mkdtemp(dir=scratch))
        seconds, stdout = timed_process([sys.executable, str(PROJECT_DIR / "benchmarks" / "plain_keras.py"), str(folder), str(n), str(epochs)], folder)
        return {"whole": seconds, **json.loads(stdout.strip().splitlines()[-1])}

    # One MLflow store for the pipeline's runs, as in a project; a new store's tables are made once.
    project = scratch / "tutorial-project"
    client = MlflowClient(f"sqlite:///{project / 'outputs' / 'mlflow.db'}")
    client.search_experiments()

    def pipeline(*extra: str, new_store: bool = False) -> Callable[[], dict]:
        def job() -> dict:
            folder = Path(tempfile.mkdtemp(dir=scratch)) if new_store else project
            overrides = [f"data.train_size={n}", f"data.test_size={n}", f"training.epochs={epochs}", "save=[keras,h5,savedmodel]", "training.verbose=0", *extra]
            seconds, _ = timed_process([sys.executable, "-m", "pipeline", *overrides], folder)
            store = MlflowClient(f"sqlite:///{folder / 'outputs' / 'mlflow.db'}") if new_store else client
            run = store.search_runs([store.get_experiment_by_name("save-and-load").experiment_id], order_by=["attributes.start_time DESC"])[0]
            return {"whole": seconds, "work_seconds": run.data.metrics["run_seconds"], "restored_accuracy": run.data.metrics["keras/restored_accuracy"]}

        return job

    # The pipeline's default samples system metrics; the third side shows what that costs, the
    # fourth what a new user's first run costs, whose store does not exist yet.
    plains, pipelines, unsampled, first_runs = alternate(repeats, plain, pipeline(), pipeline("tracking.system_metrics=false"), pipeline(new_store=True))
    table = Table(
        f"1. The tutorial's work: {n} MNIST examples, {epochs} epochs, a checkpoint every epoch, saved as .keras, .h5 and SavedModel and reloaded",
        ["measure", "plain Keras s", "pipeline s", "pipeline / plain", "target"],
    )
    for key, label, target in (("work_seconds", "work after imports", "-"), ("whole", "whole process (an existing store)", "<= 1.15")):
        a, b = median([r[key] for r in plains]), median([r[key] for r in pipelines])
        table.rows.append([label, a, b, b / a, target])
        table.metrics[f"tutorial/{key}_ratio"] = b / a
    a, d = median([r["whole"] for r in plains]), median([r["whole"] for r in first_runs])
    table.rows.append(["whole process (a new store)", a, d, d / a, "<= 1.25"])
    table.metrics["tutorial/whole_new_store_ratio"] = d / a
    for key, label in (("work_seconds", "work after imports, no system metrics"), ("whole", "whole process, no system metrics")):
        a, c = median([r[key] for r in plains]), median([r[key] for r in unsampled])
        table.rows.append([label, a, c, c / a, "-"])
        table.metrics[f"tutorial/system_metrics_{key}_ratio"] = median([r[key] for r in pipelines]) / c
    table.notes.append(
        f"Restored accuracy: plain {median([r['restored_accuracy'] for r in plains]):.1%}, pipeline {median([r['restored_accuracy'] for r in pipelines]):.1%}. "
        f"Medians of {repeats} runs each, alternating. System metrics on / off: work {table.metrics['tutorial/system_metrics_work_seconds_ratio']:.3f}x, "
        f"whole process {table.metrics['tutorial/system_metrics_whole_ratio']:.3f}x."
    )
    return table


# --- 2. training throughput -----------------------------------------------------------------------


def matmul_peak_flops(seconds: float = 2.0) -> float:
    """FLOP/s of float32 matmuls on this machine, the best of short bursts."""
    import tensorflow as tf

    n = 1024
    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    tf.matmul(a, b).numpy()  # warm up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(10):
            c = tf.matmul(a, b)
        c.numpy()
        best = max(best, 10 * 2 * n**3 / (time.perf_counter() - start))
    return best


def training_flops(model, n_train: int, n_test: int) -> float:
    """Multiply-adds of the dense kernels: forward 2 FLOPs each, backward 4; validation forward only."""
    macs = sum(int(w.shape[0]) * int(w.shape[1]) for w in model.trainable_weights if len(w.shape) == 2)
    return 6.0 * macs * n_train + 2.0 * macs * n_test


def epoch_timer():
    """A callback noting when each epoch of a plain fit ends, and the list it notes into. An epoch
    hook alone: Keras goes on dispatching the batch hooks asynchronously, as with no callback."""
    import keras

    ends: list[float] = []
    return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(time.time())), ends


def first_and_steady(start: float, ends: list[float]) -> tuple[float, float]:
    """Seconds of the first epoch (tracing and set-up included) and the median of the others."""
    return ends[0] - start, median([b - a for a, b in zip(ends, ends[1:])])


def fit_as_a_run(settings, data) -> tuple[float, list[float], float]:
    """The fit stage as a run does it (checkpoints and the training state as `settings` say, MLflow
    logging): when it started, when each epoch ended (when its metrics were logged), and when the
    stage returned, its checkpoints all written."""
    import keras

    from pipeline.context import RunContext
    from pipeline.models import ModelFactory
    from pipeline.paths import RunPaths
    from pipeline.stages.fit import fit
    from pipeline.tracking.lifecycle import tracked_run
    from pipeline.tracking.store import connect

    client, experiment_id = connect(settings.tracking, settings.paths.root)
    paths = RunPaths(Path(settings.paths.output_dir))
    paths.root.mkdir(parents=True)
    with tracked_run(client, experiment_id, settings.tracking, paths.root, {}) as tracker:
        keras.utils.set_random_seed(settings.seed)
        model = ModelFactory(settings.model, settings.training, data.input_shape, data.num_classes)()
        start = time.time()
        fit(model, data, settings.training, settings.checkpoint, settings.callbacks, settings.seed, RunContext(paths, tracker), resuming=False)
        done = time.time()
    return start, [m.timestamp / 1000 for m in sorted(client.get_metric_history(tracker.run_id, "loss"), key=lambda m: m.step)], done


def throughput(repeats: int, sizes: Sizes, scratch: Path) -> Table:
    import keras

    from pipeline.config import DEFAULT_STEPS_PER_EXECUTION
    from pipeline.models import ModelFactory
    from pipeline.stages.data import load_data

    epochs = sizes.throughput_epochs
    table = Table(
        f"2. Training throughput: {epochs} epochs of {sizes.throughput_train} MNIST examples (validation on {sizes.throughput_test})",
        ["batch", "side", "first epoch s", "steady examples/s", "steady vs plain", "target", "GFLOP/s", "% of matmul peak"],
    )
    peak = matmul_peak_flops(0.5 if sizes.throughput_train < 10000 else 2.0)

    def settings_for(batch_size: int, root: Path, steps_per_execution=None):
        overrides = [
            f"data.train_size={sizes.throughput_train}", f"data.test_size={sizes.throughput_test}", f"training.epochs={epochs}",
            f"training.batch_size={batch_size}", "training.verbose=0", "checkpoint=every_epoch",
            *([f"training.steps_per_execution={steps_per_execution}"] if steps_per_execution else []),
        ]  # fmt: skip
        return settings(overrides, root)

    data = load_data(settings_for(32, scratch).data)
    n = len(data.x_train)
    for batch_size in sizes.batch_sizes:

        def plain() -> dict:
            settings = settings_for(batch_size, scratch)
            keras.utils.set_random_seed(settings.seed)
            model = ModelFactory(settings.model, settings.training, data.input_shape, data.num_classes)()
            (timer, ends), start = epoch_timer(), time.time()
            model.fit(data.x_train, data.y_train, batch_size=batch_size, epochs=epochs, validation_data=(data.x_test, data.y_test), callbacks=[timer], verbose=0)
            return {"times": first_and_steady(start, ends), "flops": training_flops(model, n, len(data.x_test))}

        def pipeline(steps_per_execution=None) -> Callable[[], dict]:
            return lambda: {"times": first_and_steady(*fit_as_a_run(settings_for(batch_size, Path(tempfile.mkdtemp(dir=scratch)), steps_per_execution), data)[:2])}

        sides = {"plain fit": plain, "pipeline, 1 step a call": pipeline(1), f"pipeline (default: {DEFAULT_STEPS_PER_EXECUTION} steps a call)": pipeline()}
        results = dict(zip(sides, alternate(repeats, *sides.values())))
        steady = {name: median([r["times"][1] for r in found]) for name, found in results.items()}
        flops = results["plain fit"][0]["flops"] / steady["plain fit"]
        for (name, found), target in zip(results.items(), ("", ">= 1.00", ">= 1.3" if batch_size == 32 else ">= 1.00")):
            ratio = steady["plain fit"] / steady[name]
            row_flops = flops * ratio
            table.rows.append([batch_size, name, median([r["times"][0] for r in found]), n / steady[name], ratio, target, row_flops / 1e9, f"{row_flops / peak:.1%}"])
        table.metrics[f"throughput/batch{batch_size}_ratio"] = steady["plain fit"] / steady["pipeline, 1 step a call"]
        table.metrics[f"throughput/batch{batch_size}_default_ratio"] = steady["plain fit"] / steady[list(sides)[-1]]
    table.notes.append(
        f"Steady: the median epoch after the first; the first epoch includes tracing and set-up. Medians of {repeats} runs of each side, "
        f"alternating. Matmul peak (float32 1024x1024, tf.matmul): {peak / 1e9:.1f} GFLOP/s."
    )
    table.notes.append("")
    table.notes.append(precision_options(repeats, sizes, data, settings_for(32, scratch)).markdown())
    return table


def precision_options(repeats: int, sizes: Sizes, data, settings) -> Table:
    """training.mixed_precision, and Keras's jit_compile (XLA), against float32, on plain model.fit."""
    import dataclasses

    import keras

    from pipeline.models import ModelFactory

    n = min(10000, len(data.x_train))
    variants = {"float32": (False, False), "mixed_bfloat16": (True, False), "jit_compile (XLA)": (False, True)}
    table = Table(f"Precision and compilation options: plain model.fit on {n} examples, after a warm-up", ["batch", *variants, "best"])
    for batch_size in sizes.batch_sizes:
        models = {}
        for name, (mixed, jit) in variants.items():
            keras.utils.set_random_seed(settings.seed)
            training = dataclasses.replace(settings.training, mixed_precision=mixed)
            models[name] = ModelFactory(settings.model, training, data.input_shape, data.num_classes)()
            if jit:
                models[name].jit_compile = True
            models[name].fit(data.x_train[:1024], data.y_train[:1024], batch_size=batch_size, epochs=1, verbose=0)  # tracing and compiling
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):  # round robin, like A/B
            for name, model in models.items():
                start = time.perf_counter()
                model.fit(data.x_train[:n], data.y_train[:n], batch_size=batch_size, epochs=1, verbose=0)
                times[name].append(time.perf_counter() - start)
        seconds = {name: median(t) for name, t in times.items()}
        table.rows.append([batch_size, *(f"{n / s:,.0f}/s ({seconds['float32'] / s:.2f}x)" for s in seconds.values()), min(seconds, key=seconds.get)])
    return table


# --- 3. save and load per format ------------------------------------------------------------------


def formats(repeats: int, sizes: Sizes, scratch: Path) -> Table:
    import keras
    import numpy as np

    from pipeline.config import ModelConfig, TrainingConfig
    from pipeline.models import ModelFactory
    from pipeline.files import disk_bytes
    from pipeline.formats import FORMATS, LoadContext, load
    from pipeline.formats.base import raw_state_bytes

    table = Table("3. Save and load per format", ["model", "parameters", "format", "save s", "load s", "bytes on disk", "raw bytes", "disk / raw"])
    rng = np.random.default_rng(0)
    for hidden_units in sizes.hidden_units:
        fresh = ModelFactory(ModelConfig("pipeline.architectures.mlp", {"hidden_units": hidden_units}), TrainingConfig(epochs=1, batch_size=32), (784,), 10)

        keras.utils.set_random_seed(0)
        model = fresh()
        model.train_on_batch(rng.random((32, 784), dtype="float32"), rng.integers(0, 10, 32))  # optimizer state exists
        for name, fmt in FORMATS.items():
            saves, loads = [], []
            for _ in range(repeats):
                path = Path(tempfile.mkdtemp(dir=scratch)) / f"model{fmt.suffix}"
                start = time.perf_counter()
                fmt.save(model, path)
                saves.append(time.perf_counter() - start)
                start = time.perf_counter()
                load(fmt, path, LoadContext(fresh_model=fresh))
                loads.append(time.perf_counter() - start)
            raw = raw_state_bytes(model, fmt.carries_optimizer)
            table.rows.append([f"mlp {hidden_units}", model.count_params(), name, median(saves), median(loads), disk_bytes(path), raw, disk_bytes(path) / raw])
    table.notes.append(f"Raw bytes: the weights, plus the optimizer's variables for the formats that carry them. Medians of {repeats}.")
    return table


# --- 4. deploy formats ----------------------------------------------------------------------------


def deploy(repeats: int, sizes: Sizes, scratch: Path) -> Table:
    """Reload-verify's deploy table for the tutorial's model and one about 50x larger: each deploy
    format in its own runtime (and the .onnx in Chromium, where one is installed) against Keras."""
    import dataclasses

    import keras

    from pipeline import browser
    from pipeline.config import ModelConfig
    from pipeline.files import disk_bytes
    from pipeline.formats import FORMATS, LoadContext
    from pipeline.formats.base import raw_state_bytes
    from pipeline.models import ModelFactory
    from pipeline.stages.data import load_data
    from pipeline.stages.reload_verify import deploy_table, verify_saved
    from pipeline.stages.save import SavedArtifact

    n, epochs = sizes.tutorial_examples, sizes.deploy_epochs
    config = settings([f"data.train_size={n}", f"data.test_size={n}"], scratch)
    data = load_data(config.data)
    in_browser = not browser.problems(config.verify.chromium, config.verify.browser_cache)
    verify = dataclasses.replace(config.verify, browser=in_browser)
    table = Table(f"4. Deploy formats, each in its own runtime: the MLP trained on {n} MNIST examples for {epochs} epochs", [])
    for hidden_units in sizes.hidden_units:
        fresh = ModelFactory(ModelConfig("pipeline.architectures.mlp", {"hidden_units": hidden_units}), config.training, data.input_shape, data.num_classes)
        keras.utils.set_random_seed(config.seed)
        model = fresh()
        model.fit(data.x_train, data.y_train, batch_size=config.training.batch_size, epochs=epochs, verbose=0)
        folder, saved = scratch / f"deploy-{hidden_units}", []
        for fmt in (fmt for fmt in FORMATS.values() if fmt.deployed):
            path = folder / fmt.name / f"model{fmt.suffix}"
            path.parent.mkdir(parents=True)
            start = time.perf_counter()
            fmt.save(model, path)
            saved.append(SavedArtifact(fmt, path, disk_bytes(path), time.perf_counter() - start, raw_state_bytes(model, False)))
        report = verify_saved(model, data, saved, LoadContext(fresh_model=fresh), verify, folder)
        header, rows = deploy_table(report)
        table.header = ["model", "parameters", *header]
        table.rows += [[f"mlp {hidden_units}", model.count_params(), *row] for row in rows]
        for check in report.checks:
            key = f"deploy/mlp{hidden_units}/{check.artifact}"
            measured = {"max_abs_diff": check.max_abs_diff, "latency_ms_batch1": check.latency_ms_batch1, "latency_ms_batch256": check.latency_ms_batch256}
            table.metrics.update({f"{key}/{name}": value for name, value in measured.items() if value is not None})
    table.notes.append(
        "Milliseconds per example: the median of 30 calls at batch 1 and of 5 at batch 256, after a warm-up call; in the browser, the mean "
        "of those calls timed inside the page. Each runtime on the CPU, as reload-verify runs it." + ("" if in_browser else " No Chromium here: the browser row is left out.")
    )
    return table


# --- 5. sweeps ------------------------------------------------------------------------------------


def sweeps(repeats: int, sizes: Sizes, scratch: Path) -> Table:
    jobs = sizes.sweep_jobs
    overrides = ["-m", "data=digits", "training.epochs=2", "checkpoint=none", "training.verbose=0", f"seed=range(1,{jobs + 1})"]

    def launcher(extra: list[str]) -> Callable[[], dict]:
        def sweep() -> dict:
            folder = Path(tempfile.mkdtemp(dir=scratch))
            seconds, _ = timed_process([sys.executable, "-m", "pipeline", *overrides, *extra], folder)
            return {"seconds": seconds}

        return sweep

    repeats = min(repeats, 2)  # a minute a sweep: two of each keeps the whole script within ten minutes
    basics, joblibs = alternate(repeats, launcher([]), launcher(["hydra/launcher=joblib"]))
    a, b = median([r["seconds"] for r in basics]), median([r["seconds"] for r in joblibs])
    table = Table(f"5. Sweeps: {jobs} jobs (digits, 2 epochs)", ["launcher", "seconds", "jobs per minute", "vs basic"])
    table.rows.append(["basic (one process, in turn)", a, jobs * 60 / a, 1.0])
    table.rows.append([f"joblib ({os.cpu_count()} worker processes)", b, jobs * 60 / b, a / b])
    table.metrics.update({"sweeps/basic_jobs_per_minute": jobs * 60 / a, "sweeps/joblib_jobs_per_minute": jobs * 60 / b})
    table.notes.append(f"Whole command, including each worker's start-up. Medians of {repeats}, alternating.")
    return table


# --- 6. checkpoints of a large model ----------------------------------------------------------------

LARGE_SIDES = {  # name: (row, how it trains, overrides); plain fit is fed arrays as Keras's tutorial does, or the pipeline's input
    "plain": ("plain fit, no checkpoints, on a tf.data Dataset without autotuning (the pipeline's input)", "dataset", []),
    "plain_arrays": ("plain fit, no checkpoints, on arrays (Keras's own dataset, autotuned)", "arrays", []),
    "plain_malloc": ("plain fit, no checkpoints, on the same Dataset, TensorFlow's default CPU allocator", "dataset", ["training.cpu_allocator=malloc"]),
    "synchronous": ("pipeline, checkpoint.background=false", "pipeline", ["checkpoint.background=false"]),
    "background": ("pipeline, checkpoint.background=true", "pipeline", ["checkpoint.background=true"]),
}


def large_model_side(side: str, hidden_units: int, examples: int, epochs: int, root: Path) -> dict:
    """One side of section 6, in a process of its own so that its peak memory is its own: when
    training started, when each epoch ended, and the process's peak resident memory."""
    import resource

    import keras
    import tensorflow as tf

    from pipeline.determinism import validation_dataset, without_autotuning
    from pipeline.models import ModelFactory
    from pipeline.stages.data import load_data

    _, trains, overrides = LARGE_SIDES[side]
    config = settings(
        [
            f"model.hidden_units={hidden_units}", f"data.train_size={examples}", "data.test_size=256", f"training.epochs={epochs}", "training.batch_size=256",
            "training.verbose=0", "checkpoint=every_epoch", "tracking.system_metrics=false", *overrides,
        ],
        root,
    )  # fmt: skip
    data = load_data(config.data)
    if trains == "pipeline":
        (start, ends, done), parameters = fit_as_a_run(config, data), None
    else:
        keras.utils.set_random_seed(config.seed)
        model = ModelFactory(config.model, config.training, data.input_shape, data.num_classes)()
        if trains == "arrays":
            inputs = {"x": data.x_train, "y": data.y_train, "batch_size": 256, "validation_data": (data.x_test, data.y_test)}
        else:  # shuffled each epoch and batched as plain fit does, without tf.data's autotuning (pipeline.determinism says why)
            batches = tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train)).shuffle(len(data.x_train), seed=config.seed).batch(256)
            inputs = {"x": without_autotuning(batches), "validation_data": validation_dataset(data.x_test, data.y_test, 256)}
        (timer, ends), start = epoch_timer(), time.time()
        model.fit(epochs=epochs, callbacks=[timer], verbose=0, **inputs)
        done, parameters = time.time(), model.count_params()
    return {"start": start, "ends": ends, "done": done, "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "parameters": parameters}


def drop_page_cache() -> bool:
    """Empty the kernel's page cache, where allowed (root on Linux), so that the gigabytes one side
    wrote do not slow the next side's memory; whether it could."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        return False
    return True


def checkpoints(repeats: int, sizes: Sizes, scratch: Path) -> Table:
    """A model of about 100 million parameters checkpointing every epoch (its weights and Adam's
    state, 1.2 GB a checkpoint, and the training state, a hard link to it), written on the
    training thread or in the background, against the same training writing nothing."""
    hidden, examples, epochs = sizes.large_hidden_units, sizes.large_examples, sizes.large_epochs

    dropped = []

    def side(name: str) -> Callable[[], dict]:
        def run() -> dict:
            root = Path(tempfile.mkdtemp(dir=scratch))
            dropped.append(drop_page_cache())
            _, output = timed_process([sys.executable, __file__, "--large-side", name, str(hidden), str(examples), str(epochs), str(root)], root)
            shutil.rmtree(root)
            return json.loads(output.strip().splitlines()[-1])

        return run

    results = dict(zip(LARGE_SIDES, alternate(repeats, *(side(name) for name in LARGE_SIDES))))
    parameters = results["plain"][0]["parameters"]
    table = Table(
        f"6. Checkpoints of a large model: an MLP of {parameters:,} parameters, {epochs} epochs of {examples} MNIST examples at batch 256, a checkpoint every epoch",
        ["side", "first epoch s", "steady epoch s", "vs no checkpoints", "target", "training s, all written", "peak memory GB"],
    )
    steady = {name: median([first_and_steady(r["start"], r["ends"])[1] for r in found]) for name, found in results.items()}
    for name, found in results.items():
        ratio = steady[name] / steady["plain"]
        target = "<= 1.05" if name == "background" else ""
        first, whole = median([first_and_steady(r["start"], r["ends"])[0] for r in found]), median([r["done"] - r["start"] for r in found])
        table.rows.append([LARGE_SIDES[name][0], first, steady[name], ratio, target, whole, median([r["peak_bytes"] for r in found]) / 1e9])
        table.metrics[f"checkpoints/{name}_epoch_ratio"] = ratio
    table.notes.append(
        f"Steady: the median epoch after the first, each epoch's end taken when its metrics were logged. Training s: from the start of "
        f"training until `fit` returned, the last checkpoint written. Each side in a process of its own (peak memory: its maximum resident "
        f"set), {'after emptying the page cache' if all(dropped) else 'without emptying the page cache (not root)'}; medians of {repeats}, "
        "alternating. The pipeline's sides also log to MLflow and write the training state every epoch (a hard link to the epoch's "
        "checkpoint); the checkpoint LoggedModels are uploaded on the tracking thread. 'vs no checkpoints' is against plain fit on the "
        "pipeline's input, the faster of the two plain sides: on arrays, each epoch's iterator waits out tf.data's autotuning thread as it "
        "is replaced, with every core idle. Every side but one runs with TensorFlow's BFC allocator on the CPU, the pipeline's default "
        "(`training.cpu_allocator`); the one with TensorFlow's own default shows what that choice is worth."
    )
    return table


# --- 7. a team's tracking server under load ---------------------------------------------------------

LOGGED_EACH_STEP = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")  # an epoch's metrics, as a run logs them


def writer(url: str, experiment_id: str, name: str, steps: int, artifact_every: int) -> dict:
    """One job's logging, in a process of its own: a run, one batch of metrics a step, a small
    artifact every `artifact_every` steps, the run ended. Waits for a line on stdin before it
    starts, so that every writer's imports are done before the clock runs. A call that fails
    (after MLflow's own retries) is counted and the writer goes on."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(url)
    with tempfile.TemporaryDirectory() as folder:
        artifact = Path(folder) / "state.json"
        artifact.write_text(json.dumps({"values": list(range(2000))}))  # about 10 KB, a checkpoint's note or a plot's size
        print("ready", flush=True)
        sys.stdin.readline()
        run_id = client.create_run(experiment_id, run_name=name).info.run_id
        latencies, failures = [], []
        for step in range(steps):
            start = time.perf_counter()
            try:
                client.log_batch(run_id, metrics=[Metric(key, step / (i + 1), int(time.time() * 1000), step) for i, key in enumerate(LOGGED_EACH_STEP)])
                if (step + 1) % artifact_every == 0:
                    client.log_artifact(run_id, str(artifact), artifact_path=f"step-{step:04d}")
            except Exception as error:  # noqa: BLE001  (a failed call is what this measures)
                failures.append(f"{type(error).__name__}: {str(error).splitlines()[0][:300]}")
            latencies.append(time.perf_counter() - start)
    client.set_terminated(run_id, "FINISHED")
    return {"run_id": run_id, "latencies": latencies, "failures": failures}


def lost(client, runs: list[dict], steps: int, artifact_every: int) -> int:
    """Runs not FINISHED, metric values and artifacts the server does not hold, counted."""
    missing = 0
    for run in runs:
        info = client.get_run(run["run_id"]).info
        missing += info.status != "FINISHED"
        missing += sum(steps - len(client.get_metric_history(run["run_id"], key)) for key in LOGGED_EACH_STEP)
        missing += steps // artifact_every - len(client.list_artifacts(run["run_id"]))
    return missing


def servers(repeats: int, sizes: Sizes, scratch: Path) -> Table:
    """N jobs logging at once to `mlflow server` on a sqlite file and on PostgreSQL, alternating."""
    from mlflow import MlflowClient

    from benchmarks.servers import PostgreSQL, Unavailable, start_mlflow_server, stop

    steps, artifact_every = sizes.server_steps, sizes.server_artifact_every
    stores, started, notes, errors = {}, [], [], set()
    try:
        stores["sqlite"] = f"sqlite:///{scratch / 'team.db'}"
        try:
            postgresql = PostgreSQL(durable=True)
            started.append(postgresql.stop)
            stores["postgresql"] = postgresql.database("mlflow")
        except Unavailable as missing:
            notes.append(f"The PostgreSQL rows are left out: {missing}.")
        urls = {}
        for store, uri in stores.items():
            process, urls[store] = start_mlflow_server(uri, scratch / f"{store}-artifacts")
            started.append(lambda process=process: stop(process))

        def load(store: str, n: int) -> Callable[[], dict]:
            def side() -> dict:
                client = MlflowClient(urls[store])
                experiment_id = client.create_experiment(f"load-{n}-{time.time_ns()}")
                command = [sys.executable, __file__, "--writer", urls[store], experiment_id, str(steps), str(artifact_every)]
                env = {**environment(), "MLFLOW_DISABLE_TELEMETRY": "true"}  # see the note below
                jobs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) for _ in range(n)]
                for job in jobs:
                    if job.stdout.readline().strip() != "ready":
                        raise RuntimeError(f"a writer failed to start:\n{job.communicate()[0][-3000:]}")
                start = time.perf_counter()
                for job in jobs:
                    job.stdin.write("go\n")
                    job.stdin.flush()
                runs = [json.loads(job.communicate()[0].strip().splitlines()[-1]) for job in jobs]
                seconds = time.perf_counter() - start
                latencies = sorted(t for run in runs for t in run["latencies"])
                return {
                    "rate": n * steps * len(LOGGED_EACH_STEP) / seconds, "p50": latencies[len(latencies) // 2], "p95": latencies[int(len(latencies) * 0.95)],
                    "failures": [f for run in runs for f in run["failures"]], "lost": lost(client, runs, steps, artifact_every),
                }  # fmt: skip

            return side

        table = Table(
            f"7. A team's tracking server under load: N jobs at once, each logging {steps} steps of {len(LOGGED_EACH_STEP)} metrics and an artifact every {artifact_every} steps",
            ["jobs at once", "store", "metric values/s", "vs sqlite", "call p50 ms", "call p95 ms", "failed calls", "lost"],
        )
        for n in sizes.server_writers:
            results = dict(zip(stores, alternate(min(repeats, 3), *(load(store, n) for store in stores))))
            for store, found in results.items():
                rate = median([r["rate"] for r in found])
                sqlite_rate = median([r["rate"] for r in results["sqlite"]])
                failures, missing = [f for r in found for f in r["failures"]], sum(r["lost"] for r in found)
                table.rows.append([n, store, rate, rate / sqlite_rate, median([r["p50"] for r in found]) * 1000, median([r["p95"] for r in found]) * 1000, len(failures), missing])
                table.metrics.update({f"servers/{store}_{n}_metrics_per_second": rate, f"servers/{store}_{n}_lost": missing, f"servers/{store}_{n}_failed_calls": len(failures)})
                errors.update(f"{store}, {n} jobs: {failure}" for failure in failures)
    finally:
        for stopping in reversed(started):
            stopping()
    table.notes += [
        f"Each job a process of its own with its own MlflowClient, started before the clock; `mlflow server --workers 1` on each store, on this "
        f"machine beside the jobs; PostgreSQL {'with fsync on, as a real server has it' if 'postgresql' in stores else ''}. A call: one `log_batch` of a "
        f"step's metrics (with that step's artifact upload, where there is one). Failed calls: calls that raised after MLflow's own retries. Lost: runs "
        f"not FINISHED, metric values and artifacts the server does not hold when all jobs are done. Medians of {min(repeats, 3)}, alternating; "
        "failed and lost summed over them.",
        "The jobs run with MLFLOW_DISABLE_TELEMETRY=true: on a machine that cannot reach MLflow's telemetry endpoint, MLflow's telemetry thread "
        "removes an environment variable (_MLFLOW_TELEMETRY_SESSION_ID) while `requests` reads the environment; with telemetry on, "
        "3 jobs of 180 here had one call fail with that KeyError, on either store: a race in the client, not load on the server.",
        *notes,
        *(f"- Failed: {error}" for error in sorted(errors)),
    ]
    return table


SECTION_RUNNERS: dict[str, Callable[[int, Sizes, Path], Table]] = {"tutorial": tutorial, "throughput": throughput, "formats": formats, "deploy": deploy, "sweeps": sweeps, "checkpoints": checkpoints, "servers": servers}


def log_to_mlflow(tables: list[Table], results: Path, tracking_uri: str, params: dict) -> str:
    """One run in experiment "benchmarks", made through its own client like every pipeline run."""
    from mlflow.entities import Metric

    from pipeline.config import TrackingConfig
    from pipeline.tracking.journal import log_batches
    from pipeline.tracking.store import connect

    client, experiment_id = connect(TrackingConfig(uri=tracking_uri, experiment="benchmarks"), str(PROJECT_DIR / "outputs"))
    run_id = client.create_run(experiment_id, run_name=f"benchmarks {time.strftime('%Y-%m-%d %H:%M')}").info.run_id
    now = int(time.time() * 1000)
    log_batches(client, run_id, params=params, metrics=[Metric(k, v, now, 0) for t in tables for k, v in t.metrics.items()])
    client.log_artifact(run_id, str(results))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def main(argv=None) -> int:
    from pipeline.tracking.store import command_line_tracking_uri

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side per comparison (default 3)")
    parser.add_argument("--sections", default=",".join(SECTION_RUNNERS), help=f"comma-separated, from: {', '.join(SECTION_RUNNERS)}")
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "outputs" / "benchmarks", help="where results.md goes")
    parser.add_argument("--mlflow", action="store_true", help="log the results to an MLflow run in experiment 'benchmarks'")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else outputs/mlflow.db")
    parser.add_argument("--tiny", action="store_true", help="tiny workloads, to check the script itself")
    parser.add_argument("--large-side", nargs=5, metavar=("SIDE", "HIDDEN", "EXAMPLES", "EPOCHS", "ROOT"), help=argparse.SUPPRESS)  # section 6's own processes
    parser.add_argument("--writer", nargs=4, metavar=("URL", "EXPERIMENT_ID", "STEPS", "ARTIFACT_EVERY"), help=argparse.SUPPRESS)  # section 7's
    args = parser.parse_args(argv)
    if args.writer:
        url, experiment_id, steps, artifact_every = args.writer
        print(json.dumps(writer(url, experiment_id, f"writer {os.getpid()}", int(steps), int(artifact_every))))
        return 0
    if args.large_side:
        side, hidden, examples, epochs, root = args.large_side
        print(json.dumps(large_model_side(side, int(hidden), int(examples), int(epochs), Path(root))))
        return 0
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTION_RUNNERS))
    if unknown or args.repeats < 1:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTION_RUNNERS)}" if unknown else "--repeats must be at least 1")

    sizes = Sizes.tiny() if args.tiny else Sizes()
    started = time.perf_counter()
    tables = []
    with tempfile.TemporaryDirectory(prefix="pipeline-benchmarks-") as scratch:
        for name in chosen:
            print(f"benchmark | {name} ...", file=sys.stderr, flush=True)
            tables.append(SECTION_RUNNERS[name](args.repeats, sizes, Path(scratch)))
            print(tables[-1].markdown(), flush=True)
    header = f"## Benchmarks\n\nMachine: {machine()}. Run {time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s in all" + (" (--tiny: not meaningful)" if args.tiny else "") + ".\n\n"
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.md"
    results.write_text(header + "\n".join(t.markdown() for t in tables))
    print(f"benchmark | results in {results}", file=sys.stderr)
    if args.mlflow:
        run_id = log_to_mlflow(tables, results, args.tracking_uri or command_line_tracking_uri(), {"repeats": args.repeats, "tiny": args.tiny, "machine": machine()})
        print(f"benchmark | logged to MLflow run {run_id}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
