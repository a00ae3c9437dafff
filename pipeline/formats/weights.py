"""`.weights.h5`: Keras's weights file, layer and optimizer variables without the architecture."""

from pathlib import Path

from pipeline.formats.base import LoadContext, Restored, SaveFormat, build_optimizer, keras_restored
from pipeline.formats.hdf5 import describe_hdf5, render_hdf5
from pipeline.formats.summary import render_summary


class WeightsFormat(SaveFormat):
    name = "weights"
    suffix = ".weights.h5"
    description = "Keras weights file: layer and optimizer variables, no config"
    carries_optimizer = True
    described_without_tensorflow = True
    carries_architecture = False
    hdf5 = True

    def save(self, model, path: Path) -> None:
        model.save_weights(path)

    def load(self, path: Path, ctx: LoadContext) -> Restored:
        """Into a model built from the config; the optimizer's variables load only into a built optimizer."""
        model = ctx.fresh_model()
        build_optimizer(model)
        model.load_weights(path)
        return keras_restored(model)

    def describe(self, path: Path) -> dict:
        return describe_hdf5(path)

    def render(self, info: dict, full: bool = False) -> list[str]:
        return render_hdf5(info) if full else render_summary(None, info, None)
