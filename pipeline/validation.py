"""Checking a composed config against the schema, the registries and the user's code.

The schema (`pipeline.config`) knows types and ranges; the names it may hold come
from the save formats, Keras's optimizers and the `_target_`s of `data` and `model`.
Everything is checked here before any MLflow run is started: where the data can be
peeked at without loading it, the model is built once, so a model that cannot be
built for the data, or cannot be saved in a chosen format, stops the job at once.
"""

import dataclasses
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from pipeline import allocator, browser
from pipeline.config import CheckpointPolicy, Config, DataConfig, ModelConfig, Quantize, require
from pipeline.console import import_tensorflow
from pipeline.datasets import DataSource, Spec
from pipeline.errors import ConfigError
from pipeline.formats import FORMATS
from pipeline.stages.data import data_loader, data_source
from pipeline.targets import import_modules


def require_choice(key: str, value: str, valid) -> None:
    require(value in valid, f"{key}={value!r} is not one of: {', '.join(sorted(valid))}")


def validate(cfg: DictConfig) -> Config:
    """Check a composed config and return it as typed dataclasses, `data` and `model` included."""
    try:
        # Re-merging into the schema refuses keys that `+key=value` slipped in.
        settings = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg)))
    except MissingMandatoryValue as error:
        raise ConfigError(f"{error.full_key} is not set: give it on the command line, e.g. {error.full_key}=...") from None
    except Exception as error:  # OmegaConf's own errors: bad types, bad interpolations
        raise ConfigError(str(error).splitlines()[0]) from None
    settings = dataclasses.replace(settings, data=DataConfig.parse(settings.data), model=ModelConfig.parse(settings.model))
    _check_formats(settings)
    require(settings.paths.output_dir is not None, "paths.output_dir is not set: run from the command line, or set it to the job's folder")
    settings.check()
    allocator.configure(settings.training.cpu_allocator)  # before any module might make TensorFlow allocate
    import_modules(settings.imports)
    spec = _peek_data(settings.data)
    # What follows imports Keras (and TensorFlow): the checks above fail in a second.
    import_tensorflow()
    from pipeline import distribute

    distribute.configure(settings.distribute)  # the devices, before the model check makes TensorFlow set them up
    _check_optimizer(settings.training.optimizer.name)
    _check_model(settings, spec)
    return settings


def _check_formats(settings: Config) -> None:
    require(bool(settings.save), f"save must name at least one format: {', '.join(FORMATS)}")
    for name in settings.verify.tolerance:
        require_choice("verify.tolerance", name, [*FORMATS, browser.CHECK])
    if settings.verify.browser:
        verify = settings.verify
        require("onnx" in settings.save, f"verify.browser=true runs the onnx export in the browser: add it, e.g. save=[{','.join([*settings.save, 'onnx'])}]")
        problems = browser.problems(verify.chromium, verify.browser_cache)
        require(not problems, f"verify.browser=true: {'; '.join(problems)}")
    hdf5 = [name for name, fmt in FORMATS.items() if fmt.hdf5]
    for name, options in settings.save.items():
        require_choice("save", name, FORMATS)
        missing = FORMATS[name].missing_packages()
        require(not missing, f"save=[{name}] needs {', '.join(missing)}, not installed: pip install 'keras-save-pipeline[deploy]' (or pip install {' '.join(missing)})")
        require(not options.rewrites_hdf5 or name in hdf5, f"save.{name}: compression and chunk_kib apply only to the HDF5 formats: {', '.join(hdf5)}")
        require(options.quantize is Quantize.none or name == "litert", f"save.{name}.quantize: quantization applies only to litert")
        require(options.max_shard_size is None or name == "weights", f"save.{name}.max_shard_size: sharding applies only to weights")
        require(options.max_shard_size is None or not options.rewrites_hdf5, "save.weights: max_shard_size does not combine with compression or chunk_kib (Keras writes each shard itself)")
        require(options.zipped or name == "keras", f"save.{name}.zipped: only keras is a zip archive")


def _peek_data(cfg: DataConfig) -> Optional[Spec]:
    """The data's shape and classes, if its source can tell without loading it (a DataSource);
    a user's data function loads as it is called, so it is only resolved and checked here."""
    load = data_loader(cfg)
    return data_source(cfg, load).peek() if isinstance(load, type) and issubclass(load, DataSource) else None


def _check_model(settings: Config, spec: Optional[Spec]) -> None:
    """Resolve the model's target; with the data's shape known, build the model once for it and
    check that every chosen format can hold a model of its kind (otherwise the run does, once loaded)."""
    import keras

    from pipeline.models import ModelFactory, model_builder

    if spec is None:
        model_builder(settings.model)
        return
    key = repr((settings.model, settings.training, spec, sorted(saved_formats(settings))))
    if key in _MODELS_CHECKED:  # a job is validated twice (before Hydra starts it, then by the task): one build
        return
    check_model(ModelFactory(settings.model, settings.training, spec.input_shape, spec.num_classes)(), settings)
    keras.backend.clear_session()  # layer names count from zero again for the run's own model
    _MODELS_CHECKED.add(key)


_MODELS_CHECKED: set[str] = set()


def saved_formats(settings: Config) -> dict:
    """Every format the run writes a model in, keyed by the config key that chose it."""
    from pipeline.checkpoints import checkpoint_format

    chosen = {f"save=[{name}]": FORMATS[name] for name in settings.save}
    if settings.checkpoint.policy is not CheckpointPolicy.none:
        chosen["checkpoint"] = checkpoint_format(settings.checkpoint)
    return chosen


def check_model(model, settings: Config) -> None:
    """Refuse a model that a chosen format cannot hold, naming the formats that can."""
    from pipeline.models import model_kind, unregistered

    kind = model_kind(model)
    if unregistered(model):
        raise ConfigError(
            f"model._target_={settings.model.target} returns a subclassed model of class {unregistered(model)}, which Keras cannot find by name "
            "when it loads the model: decorate the class with @keras.saving.register_keras_serializable() and give it get_config()"
        )
    for key, fmt in saved_formats(settings).items():
        if kind not in fmt.holds:
            works = [name for name, other in FORMATS.items() if kind in other.holds]
            raise ConfigError(f"{key}: a {kind} model ({settings.model.target}) cannot be saved as {fmt.name} ({fmt.description}); formats that can hold it: {', '.join(works)}")


def _check_optimizer(name: str) -> None:
    import keras

    try:
        keras.optimizers.get(name)
    except ValueError:
        public = vars(keras.optimizers).values()
        valid = sorted(c.__name__.lower() for c in public if isinstance(c, type) and issubclass(c, keras.optimizers.Optimizer) and c is not keras.optimizers.Optimizer)
        raise ConfigError(f"training.optimizer.name={name!r} is not a Keras optimizer: {', '.join(valid)}") from None
