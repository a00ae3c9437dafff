"""Checking a composed config against the schema's ranges and the registries' names.

The schema (`pipeline.config`) knows types and ranges; the names it may hold come
from the registries of datasets, save formats, architectures and Keras's optimizers.
Everything is checked here before any data is loaded or any MLflow run is started.
"""

from omegaconf import DictConfig, OmegaConf

from pipeline.config import Config, require
from pipeline.console import import_tensorflow
from pipeline.errors import ConfigError
from pipeline.formats import FORMATS
from pipeline.stages.data import DATASETS, check_source


def require_choice(key: str, value: str, valid) -> None:
    require(value in valid, f"{key}={value!r} is not one of: {', '.join(sorted(valid))}")


def validate(cfg: DictConfig) -> Config:
    """Check a composed config and return it as typed dataclasses."""
    try:
        # Re-merging into the schema refuses keys that `+key=value` slipped in.
        settings = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg)))
    except Exception as error:  # OmegaConf's own errors: missing values, bad interpolations
        raise ConfigError(str(error).splitlines()[0]) from None
    _check_formats(settings)
    require_choice("data.name", settings.data.name, DATASETS)
    require(settings.paths.output_dir is not None, "paths.output_dir is not set: run from the command line, or set it to the job's folder")
    settings.check()
    check_source(settings.data)
    # These two import Keras (and TensorFlow): the others go first, so most bad values fail in a second.
    _check_architecture(settings.model.architecture)
    _check_optimizer(settings.training.optimizer.name)
    return settings


def _check_formats(settings: Config) -> None:
    require(bool(settings.save), f"save must name at least one format: {', '.join(FORMATS)}")
    hdf5 = [name for name, fmt in FORMATS.items() if fmt.hdf5]
    for name, options in settings.save.items():
        require_choice("save", name, FORMATS)
        require(not options.rewrites_hdf5 or name in hdf5, f"save.{name}: compression and chunk_kib apply only to the HDF5 formats: {', '.join(hdf5)}")


def _check_architecture(name: str) -> None:
    import_tensorflow()  # the architectures are Keras code
    from pipeline.architectures import ARCHITECTURES

    require_choice("model.architecture", name, ARCHITECTURES)


def _check_optimizer(name: str) -> None:
    import keras

    try:
        keras.optimizers.get(name)
    except ValueError:
        public = vars(keras.optimizers).values()
        valid = sorted(c.__name__.lower() for c in public if isinstance(c, type) and issubclass(c, keras.optimizers.Optimizer) and c is not keras.optimizers.Optimizer)
        raise ConfigError(f"training.optimizer.name={name!r} is not a Keras optimizer: {', '.join(valid)}") from None
