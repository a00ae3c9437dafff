"""The typed schema every composed config is checked against: the lowest layer of the package.

Hydra merges the YAML files in conf/ into these dataclasses, so an unknown key
or a value of the wrong type fails at composition. Each part's `check` tests the
ranges it can judge alone; `pipeline.validation` adds the checks that need a
registry (architectures, datasets, formats, optimizers) and runs them all.
(The checks are not in `__post_init__` because OmegaConf instantiates the
schema with placeholder values while composing.)
"""

import dataclasses
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from pipeline.errors import ConfigError


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


class CheckpointPolicy(Enum):
    every_epoch = "every_epoch"
    every_n_epochs = "every_n_epochs"
    every_n_batches = "every_n_batches"
    best_only = "best_only"
    none = "none"


class CheckpointFormat(Enum):
    keras = "keras"  # one Keras file per checkpoint: .weights.h5, or .keras for the whole model
    tf_checkpoint = "tf_checkpoint"  # tf.train.Checkpoint: index + data shards


class CpuAllocator(Enum):
    bfc = "bfc"  # TensorFlow's BFC allocator and glibc's heap: freed buffers kept for the next step (pipeline.allocator)
    malloc = "malloc"  # TensorFlow's default on the CPU: each buffer from the system, and back to it


class Mode(Enum):
    min = "min"
    max = "max"


# Keys of the `data` and `model` groups the pipeline reads itself; every other key is an argument of `_target_`.
TARGET = "_target_"


def split_target(group: str, node: Dict[str, Any], own: tuple) -> tuple[str, dict, dict]:
    """`{"_target_": t, own keys..., arguments...}` -> (t, own keys, arguments)."""
    node = dict(node)
    target = node.pop(TARGET, None)
    require(isinstance(target, str) and bool(target), f"{group}._target_ must name a function, e.g. my_pkg.{group}:build (got {target!r})")
    return target, {k: node.pop(k) for k in own if k in node}, node


@dataclass
class DataConfig:
    """The `data` group: `_target_` loads the data, called with the group's other keys."""

    target: str
    arguments: Dict[str, Any]
    name: str  # names the MLflow datasets (`<name>-train`); by default the target's own name

    @classmethod
    def parse(cls, node: Dict[str, Any]) -> "DataConfig":
        target, own, arguments = split_target("data", node, ("name",))
        return cls(target, arguments, own.get("name") or target.replace(":", ".").rsplit(".", 1)[-1].lower())


@dataclass
class ModelConfig:
    """The `model` group: `_target_` builds the model, called with `input_shape`, `num_classes`
    and the group's other keys."""

    target: str
    arguments: Dict[str, Any]
    init_weights: Optional[str] = None  # start from these weights (.weights.h5, .keras, .h5 or a TF checkpoint)

    @classmethod
    def parse(cls, node: Dict[str, Any]) -> "ModelConfig":
        target, own, arguments = split_target("model", node, ("init_weights",))
        return cls(target, arguments, **own)

    @property
    def short_name(self) -> str:
        """`pipeline.architectures.mlp` -> `mlp`: for run names and tags."""
        return self.target.replace(":", ".").rsplit(".", 1)[-1]


@dataclass
class KeepConfig:
    """Which checkpoints stay on disk (pipeline.keep): any that a set policy keeps, and always the newest. None everywhere: all."""

    latest: Optional[int] = None  # the newest N
    best: Optional[int] = None  # the N best by checkpoint.monitor, in checkpoint.mode
    every: Optional[int] = None  # each one at a multiple of K epochs (steps, for every_n_batches)

    def check(self) -> None:
        for name in ("latest", "best", "every"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"checkpoint.keep.{name} must be at least 1, or null for no such policy (got {value})")


@dataclass
class CheckpointConfig:
    policy: CheckpointPolicy = MISSING
    every: int = 1  # epochs for every_n_epochs, batches for every_n_batches
    save_initial: bool = False  # also write the untrained weights as epoch 0, as the tutorial does
    weights_only: bool = True
    format: CheckpointFormat = CheckpointFormat.keras
    keep: KeepConfig = field(default_factory=KeepConfig)
    monitor: str = "val_loss"  # best_only, and keep.best
    mode: Mode = Mode.min  # best_only, and keep.best
    background: bool = True  # write checkpoints and training-state backups on another thread, from a copy taken at the step (memory for the model and optimizer once more)

    @property
    def ranked_by(self) -> str:
        """The logged metric checkpoints are ranked by: `monitor`, or by batch, where there is no
        validation yet, its training-set twin (`loss` for `val_loss`)."""
        return self.monitor.removeprefix("val_") if self.policy is CheckpointPolicy.every_n_batches else self.monitor

    def check(self) -> None:
        require(self.every >= 1, f"checkpoint.every must be at least 1 (got {self.every})")
        self.keep.check()


class Quantize(Enum):
    none = "none"
    dynamic = "dynamic"  # int8 weights, float activations: about a quarter of the size
    float16 = "float16"  # float16 weights: about half


class Compression(Enum):
    gzip = "gzip"  # everywhere HDF5 is; level 0-9
    lzf = "lzf"  # faster, lighter; h5py's own filter


@dataclass
class SaveOptions:
    filename: str = "model"  # the artifact's name inside saved/<format>/, before the format's suffix
    compression: Optional[Compression] = None  # HDF5 formats (h5, weights) only
    compression_level: int = 4  # gzip: 0 (fastest) to 9 (smallest)
    shuffle: bool = False  # HDF5's byte-shuffle filter before compressing: float weights often shrink more
    chunk_kib: Optional[int] = None  # target size of a dataset chunk; None lets h5py choose
    quantize: Quantize = Quantize.none  # litert only: post-training quantization, verified on accuracy
    max_shard_size: Optional[float] = None  # weights only: GB a shard; the weights are then a folder of Keras's .weights.json and its shards
    zipped: bool = True  # keras only: false writes the .keras archive's contents as a folder (config.json, metadata.json, model.weights.h5)

    @property
    def rewrites_hdf5(self) -> bool:
        """Keras's HDF5 writers store every array contiguous and uncompressed; these options need a rewrite."""
        return self.compression is not None or self.chunk_kib is not None

    def check(self, format_name: str) -> None:
        key = f"save.{format_name}"
        require(bool(self.filename) and "/" not in self.filename, f"{key}.filename must be a plain name (got {self.filename!r})")
        require(0 <= self.compression_level <= 9, f"{key}.compression_level must be 0-9 (got {self.compression_level})")
        require(self.chunk_kib is None or self.chunk_kib >= 1, f"{key}.chunk_kib must be at least 1 (got {self.chunk_kib})")
        require(self.max_shard_size is None or self.max_shard_size > 0, f"{key}.max_shard_size is in GB and must be positive (got {self.max_shard_size})")


@dataclass
class EarlyStoppingConfig:
    monitor: str = "val_loss"
    patience: int = 3
    min_delta: float = 0.0
    restore_best_weights: bool = False

    def check(self) -> None:
        require(self.patience >= 0, f"callbacks.early_stopping.patience must be >= 0 (got {self.patience})")


@dataclass
class TensorBoardConfig:
    histogram_freq: int = 1
    update_freq: str = "epoch"


@dataclass
class LRScheduleConfig:
    """Step decay: multiply the learning rate by `factor` every `every` epochs."""

    factor: float = 0.5
    every: int = 5

    def check(self) -> None:
        require(0.0 < self.factor <= 1.0, f"callbacks.lr_schedule.factor must be in (0, 1] (got {self.factor})")
        require(self.every >= 1, f"callbacks.lr_schedule.every must be at least 1 (got {self.every})")


@dataclass
class ReduceLRConfig:
    """Multiply the learning rate by `factor` when `monitor` has not improved for `patience` epochs."""

    monitor: str = "val_loss"
    factor: float = 0.5
    patience: int = 2
    min_delta: float = 1e-4
    cooldown: int = 0
    min_lr: float = 0.0

    def check(self) -> None:
        require(0.0 < self.factor < 1.0, f"callbacks.reduce_lr.factor must be in (0, 1) (got {self.factor})")
        require(self.patience >= 0 and self.cooldown >= 0, f"callbacks.reduce_lr.patience and cooldown must be >= 0 (got {self.patience}, {self.cooldown})")


@dataclass
class CallbacksConfig:
    early_stopping: Optional[EarlyStoppingConfig] = None
    tensorboard: Optional[TensorBoardConfig] = None
    lr_schedule: Optional[LRScheduleConfig] = None
    reduce_lr: Optional[ReduceLRConfig] = None


@dataclass
class OptimizerConfig:
    name: str = "adam"
    learning_rate: float = 1e-3

    def check(self) -> None:
        require(self.learning_rate > 0, f"training.optimizer.learning_rate must be positive (got {self.learning_rate})")


DEFAULT_STEPS_PER_EXECUTION = 16  # benchmarks/run.py: about 1.5x the examples a second of one step a call, at batch 32


@dataclass
class TrainingConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    # How a model that comes back from its `_target_` uncompiled is compiled: a Keras loss for
    # integer labels, on logits or on probabilities. A model that compiles itself keeps its own.
    loss: str = "sparse_categorical_crossentropy"
    from_logits: bool = True
    verbose: int = 1  # 0 silent; 1 Keras's progress bar on a terminal, one line per epoch elsewhere; 2 one line per epoch
    # Keras's "mixed_bfloat16" policy: bf16 compute, float32 weights. Faster on a CPU with
    # AVX512_BF16 (benchmarks/run.py measures it); off by default, as the tutorial trains in float32.
    # (XLA's jit_compile was measured too, and was 2-7x slower here, so it is not offered.)
    mixed_precision: bool = False
    # Training steps Keras runs in one call (compile's steps_per_execution): fewer trips from Python
    # to TensorFlow, the same weights. None: 16, or 1 with checkpoint=every_n_batches, which writes
    # at exact steps between calls.
    steps_per_execution: Optional[int] = None
    # Where TensorFlow takes CPU memory from: bfc keeps freed buffers for the next step, where malloc
    # (TensorFlow's default, glibc's heap as it is) maps a large one afresh each step. The same weights (pipeline.allocator).
    cpu_allocator: CpuAllocator = CpuAllocator.bfc

    def steps_per_call(self, policy: "CheckpointPolicy", distributed: bool) -> int:
        """`steps_per_execution` as set, or the default for this checkpoint policy (one step, distributed: below)."""
        if self.steps_per_execution is not None:
            return self.steps_per_execution
        return 1 if distributed or policy is CheckpointPolicy.every_n_batches else DEFAULT_STEPS_PER_EXECUTION

    def check(self) -> None:
        require(self.epochs >= 1, f"training.epochs must be at least 1 (got {self.epochs})")
        require(self.steps_per_execution is None or self.steps_per_execution >= 1, f"training.steps_per_execution must be at least 1 (got {self.steps_per_execution})")
        require(self.batch_size >= 1, f"training.batch_size must be at least 1 (got {self.batch_size})")
        require(self.verbose in (0, 1, 2), f"training.verbose must be 0, 1 or 2 (got {self.verbose})")


@dataclass
class VerifyConfig:
    atol: float = 1e-5  # largest absolute difference in logits accepted as "the same model"
    max_accuracy_drop: float = 0.01  # a quantized model's logits legitimately differ: it may lose this much accuracy, no more
    tolerance: Dict[str, float] = field(default_factory=dict)  # per format, e.g. {litert: 1e-4}: its own atol
    trust: bool = False  # load with Keras's safe_mode off: only for files you trust to run code
    browser: bool = False  # also run the .onnx export in headless Chromium through onnxruntime-web (needs save=[...,onnx])
    chromium: Optional[str] = None  # the Chromium to drive; None: one on PATH, else Playwright's own
    browser_cache: str = "~/.cache/keras-save-pipeline"  # where onnxruntime-web is installed from the npm registry

    def check(self) -> None:
        require(self.atol >= 0, f"verify.atol must be >= 0 (got {self.atol})")
        require(0 <= self.max_accuracy_drop <= 1, f"verify.max_accuracy_drop is a fraction of the test set, in [0, 1] (got {self.max_accuracy_drop})")
        for name, tolerance in self.tolerance.items():
            require(tolerance >= 0, f"verify.tolerance.{name} must be >= 0 (got {tolerance})")


class Strategy(Enum):
    none = "none"  # TensorFlow's default device
    mirrored = "mirrored"  # tf.distribute.MirroredStrategy: a replica of the model per local device
    multi_worker = "multi_worker"  # refused, below


MULTI_WORKER_REFUSED = (
    "distribute=multi_worker: Keras 3's fit does not train under tf.distribute.MultiWorkerMirroredStrategy "
    "(https://github.com/keras-team/keras/issues/20585); use distribute=mirrored within a machine, and a sweep across machines (hydra/launcher=slurm)"
)


@dataclass
class DistributeConfig:
    strategy: Strategy = Strategy.none
    devices: Optional[int] = None  # mirrored: None for every local GPU (the CPU if none); N for N logical CPU devices

    def check(self) -> None:
        require(self.strategy is not Strategy.multi_worker, MULTI_WORKER_REFUSED)
        require(self.devices is None or self.strategy is Strategy.mirrored, f"distribute.devices applies to distribute=mirrored, not {self.strategy.value}")
        require(self.devices is None or self.devices >= 1, f"distribute.devices must be at least 1 (got {self.devices})")

    @property
    def distributed(self) -> bool:
        return self.strategy is not Strategy.none


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # None: a sqlite store under paths.root
    experiment: str = "save-and-load"
    run_name: Optional[str] = None  # None or "": MLflow picks a name
    parent_run_id: Optional[str] = None  # nest the run under this one (a sweep's parent run)
    tags: Dict[str, str] = field(default_factory=dict)  # extra tags on the run
    system_metrics: bool = True  # CPU, memory, disk, network (GPU where present) as system/* metrics
    system_metrics_interval: float = 10.0  # seconds between samples; one more when the run ends

    def check(self) -> None:
        require(self.system_metrics_interval > 0, f"tracking.system_metrics_interval must be positive (got {self.system_metrics_interval})")


class RegistrySource(Enum):
    final = "final"  # the trained model
    best = "best"  # the run's best checkpoint by checkpoint.monitor


@dataclass
class RegistryConfig:
    name: Optional[str] = None  # register a model of the run under this name
    model: RegistrySource = RegistrySource.final  # which one
    alias: str = "candidate"  # every new version gets this alias
    champion_alias: str = "champion"  # and this one only if it beats the current holder on this run's test set
    min_improvement: float = 0.0  # accuracy the new version must gain over the champion, e.g. 0.005 for half a point

    def check(self) -> None:
        require(-1.0 < self.min_improvement < 1.0, f"registry.min_improvement is a difference in accuracy, in (-1, 1) (got {self.min_improvement})")
        require(self.alias != self.champion_alias, f"registry.alias and registry.champion_alias must differ (both {self.alias!r})")


@dataclass
class PathsConfig:
    root: str = "outputs"  # run folders and the default MLflow store live here
    output_dir: Optional[str] = None  # this job's folder; Hydra's run dir when started from the CLI


class Rerun(Enum):
    unfinished = "unfinished"  # the same -m command again continues its stopped sweep: finished jobs are not trained again
    all = "all"  # a fresh sweep: every job trains, under a new parent run


@dataclass
class SweepConfig:
    rerun: Rerun = Rerun.unfinished


@dataclass
class Config:
    # While composing, `data` and `model` are open mappings, since their keys are the arguments
    # of whatever `_target_` names; `pipeline.validation` turns them into DataConfig and ModelConfig.
    data: Dict[str, Any] = MISSING
    model: Dict[str, Any] = MISSING
    imports: List[str] = field(default_factory=list)  # modules imported before anything is built or loaded
    checkpoint: CheckpointConfig = MISSING
    save: Dict[str, SaveOptions] = field(default_factory=dict)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    distribute: DistributeConfig = MISSING
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 42
    deterministic: bool = True  # TensorFlow op determinism: same config, same weights
    # "auto": continue an interrupted run of the same config; a run id or output folder:
    # continue that run; null: always start a new run.
    resume: Optional[str] = "auto"
    resume_every_seconds: Optional[float] = None  # also keep the training state this often, for preemptions that give no signal

    def check(self) -> None:
        for name, options in self.save.items():
            options.check(name)
        for part in (self.checkpoint, self.training, self.distribute, self.verify, self.training.optimizer, self.tracking, self.registry):
            part.check()
        require(
            not (self.distribute.distributed and (self.training.steps_per_execution or 1) > 1),
            f"training.steps_per_execution={self.training.steps_per_execution} does not run under distribute=mirrored: Keras 3's loop of several steps "
            "a call fails on a distributed dataset (https://github.com/keras-team/keras/issues/19246); leave it unset (one step a call)",
        )
        if self.registry.model is RegistrySource.best:
            require(self.checkpoint.policy is not CheckpointPolicy.none, "registry.model=best registers the best checkpoint, but checkpoint=none writes none; use registry.model=final")
            require(
                self.checkpoint.format is CheckpointFormat.keras,
                "registry.model=best needs Keras checkpoints (checkpoint.format=keras): TF checkpoints are not MLflow models; use registry.model=final",
            )
        require(self.resume_every_seconds is None or self.resume_every_seconds > 0, f"resume_every_seconds must be positive, or null for none (got {self.resume_every_seconds})")
        require(
            self.checkpoint.policy is not CheckpointPolicy.every_n_batches or self.training.steps_per_execution in (None, 1),
            f"checkpoint=every_n_batches writes at exact steps, between Keras's calls, but training.steps_per_execution={self.training.steps_per_execution} "
            "runs that many steps in one call: leave it unset (1 with this policy) or set it to 1",
        )
        for callback in (self.callbacks.early_stopping, self.callbacks.lr_schedule, self.callbacks.reduce_lr):
            if callback is not None:
                callback.check()


ConfigStore.instance().store(name="schema", node=Config)


def _unwrap_optional(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation


def check_override(key: str, value: Any) -> None:
    """Check one command-line `key=value` against the schema, in a line that names what is valid.

    Hydra refuses the same overrides, but in several lines of OmegaConf detail and
    without the valid keys; this runs before Hydra, so nothing starts on bad input.
    """
    owner, annotation = Config, Config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        annotation = _unwrap_optional(annotation)
        if typing.get_origin(annotation) in (dict, Dict):  # a free-form key, e.g. save.keras or tracking.tags.team
            owner, annotation = None, typing.get_args(annotation)[1]
            continue
        fields = typing.get_type_hints(annotation) if dataclasses.is_dataclass(annotation) else {}
        where = ".".join(parts[:depth]) or "the top level"
        if not fields:
            raise ConfigError(f"{key}: {where} is a single value, not a group of keys")
        if part not in fields:
            raise ConfigError(f"{key}: {where} has no key {part!r}; its keys are: {', '.join(fields)}")
        owner, annotation = annotation, fields[part]
    if owner is not None and value is not None:
        node = OmegaConf.structured(owner)
        try:
            node[parts[-1]] = value
        except Exception as error:  # OmegaConf's ValidationError, first line only
            raise ConfigError(f"{key}={value!r}: {str(error).splitlines()[0]}") from None

