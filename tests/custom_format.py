"""A save format that exists only in the tests: the layer weights as arrays in an `.npz`.

It is what a user adding a format writes: one class with a name, a suffix, save, load
and describe. `lossy=True` stores float16, which does not reproduce the model: for the
test that a format which does not round-trip fails the run.
"""

from pathlib import Path

import numpy as np

from pipeline.formats.base import LoadContext, Restored, SaveFormat, keras_restored


class NpzFormat(SaveFormat):
    suffix = ".npz"
    description = "layer weights as NumPy arrays"
    carries_optimizer = False
    carries_architecture = False

    def __init__(self, name: str = "npz", lossy: bool = False):
        self.name = name
        self.dtype = np.float16 if lossy else np.float32

    def save(self, model, path: Path) -> None:
        with path.open("wb") as file:  # np.savez would append .npz to the atomic writer's temporary name
            np.savez(file, *[w.astype(self.dtype) for w in model.get_weights()])

    def load(self, path: Path, ctx: LoadContext) -> Restored:
        model = ctx.fresh_model()
        with np.load(path) as arrays:
            model.set_weights([arrays[f"arr_{i}"].astype(np.float32) for i in range(len(arrays.files))])
        return keras_restored(model)

    def describe(self, path: Path) -> dict:
        with np.load(path) as arrays:
            return {"arrays": {name: {"shape": list(arrays[name].shape), "dtype": str(arrays[name].dtype)} for name in arrays.files}}

    def render(self, info: dict, full: bool = False) -> list[str]:
        return [f"  {name}  {tuple(a['shape'])} {a['dtype']}" for name, a in info["arrays"].items()]
