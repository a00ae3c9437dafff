"""`.h5`: the legacy HDF5 whole-model file, with two Keras 3.15 bugs worked around."""

from pathlib import Path

import numpy as np

from pipeline.console import without
from pipeline.formats.base import LoadContext, Restored, SaveFormat, keras_restored
from pipeline.formats.hdf5 import describe_hdf5, render_hdf5
from pipeline.formats.summary import compiled_text, render_summary
from pipeline.trust import trust_report


class H5Format(SaveFormat):
    name = "h5"
    suffix = ".h5"
    description = "legacy HDF5 whole model"
    carries_optimizer = True
    described_without_tensorflow = True
    carries_architecture = True
    hdf5 = True
    holds = ("sequential", "functional")  # legacy HDF5 stores a config of layers; a subclassed model's call is not one

    def save(self, model, path: Path) -> None:
        # Keras 3.15's HDF5 writer pops "optimizer" from the live model's compile
        # config, so a .keras saved afterwards would lose the optimizer. Put it back.
        compile_config = getattr(model, "_compile_config", None)
        kept = dict(compile_config.config) if compile_config is not None else None
        try:
            with without("absl", "This file format is considered legacy"):  # the user asked for .h5
                model.save(path)
        finally:
            if kept is not None:
                compile_config.config.update(kept)

    def load(self, path: Path, ctx: LoadContext) -> Restored:
        """keras.models.load_model, plus the optimizer state it drops.

        Keras 3.15's HDF5 loader builds the optimizer from `model._trainable_variables`,
        which is empty for Sequential and functional models, so setting the saved slot
        variables fails and the model comes back with a fresh optimizer. The file does
        hold that state: read it with Keras's own HDF5 reader into a properly built one.
        """
        import h5py
        import keras
        from keras.src.legacy.saving.legacy_h5_format import load_optimizer_weights_from_hdf5_group

        with without("absl", "compiled metrics have yet to be built"):  # they are built on first use
            model = keras.models.load_model(path, safe_mode=ctx.safe_mode)
        with h5py.File(path, "r") as f:
            saved = [np.asarray(v) for v in load_optimizer_weights_from_hdf5_group(f)] if "optimizer_weights" in f else []
        if saved and len(model.optimizer.variables) != len(saved):
            optimizer = model.optimizer.__class__.from_config(model.optimizer.get_config())
            optimizer.build(model.trainable_variables)
            optimizer.set_weights(saved)
            model.optimizer = optimizer
        return keras_restored(model)

    def detect(self, path: Path) -> bool:
        return not path.is_dir() and path.suffix == ".h5" and not path.name.endswith(".weights.h5")

    def describe(self, path: Path) -> dict:
        hdf5 = describe_hdf5(path)
        return {**hdf5, **trust_report(hdf5["attributes"].get("model_config"))}  # the config is already parsed

    def render(self, info: dict, full: bool = False) -> list[str]:
        if full:
            return render_hdf5(info)
        attributes = info["attributes"]
        training = attributes.get("training_config")
        compiled = compiled_text(training.get("optimizer_config"), training.get("loss"), training.get("metrics")) if training else "no (saved before compile)"
        return [f"saved by Keras {attributes.get('keras_version', '?')}", *render_summary(attributes.get("model_config"), info, compiled)]
