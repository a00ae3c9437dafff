"""`.keras`: Keras 3's zip of config.json, metadata.json and model.weights.h5, optimizer included.

With `save.keras.zipped=false`, the same three files in a folder instead (Keras's
`model.save(path, zipped=False)`), which `keras.models.load_model` reads as it reads the zip.
"""

import io
import json
import zipfile
from pathlib import Path
from typing import Callable

from pipeline.formats.base import LoadContext, Restored, SaveFormat, keras_restored
from pipeline.formats.hdf5 import describe_hdf5, render_hdf5
from pipeline.formats.summary import compiled_text, render_summary
from pipeline.formats.text import value_text
from pipeline.trust import trust_report


class KerasFormat(SaveFormat):
    name = "keras"
    suffix = ".keras"
    description = "Keras v3 zip: config, weights, optimizer"
    carries_optimizer = True
    described_without_tensorflow = True
    carries_architecture = True

    def __init__(self, zipped: bool = True):
        self.zipped = zipped
        if not zipped:
            self.suffix = ""  # a folder

    def with_options(self, options) -> "KerasFormat":
        return KerasFormat(options.zipped)

    def save(self, model, path: Path) -> None:
        model.save(path, zipped=self.zipped)

    def load(self, path: Path, ctx: LoadContext) -> Restored:
        import keras

        return keras_restored(keras.models.load_model(path, safe_mode=ctx.safe_mode))

    def detect(self, path: Path) -> bool:
        return is_keras_folder(path) if path.is_dir() else path.name.endswith(KerasFormat.suffix)

    def describe(self, path: Path) -> dict:
        if path.is_dir():
            files = {f.name: f.stat().st_size for f in sorted(path.iterdir()) if f.is_file()}
            return self._described(files, lambda name: (path / name).read_bytes())
        with zipfile.ZipFile(path) as archive:
            return self._described({info.filename: info.file_size for info in archive.infolist()}, archive.read)

    @staticmethod
    def _described(files: dict, read: Callable[[str], bytes]) -> dict:
        config = json.loads(read("config.json"))
        metadata = json.loads(read("metadata.json")) if "metadata.json" in files else {}
        weights = describe_hdf5(io.BytesIO(read("model.weights.h5"))) if "model.weights.h5" in files else None
        return {"files": files, "metadata": metadata, "config": config, "weights": weights, **trust_report(config)}

    def render(self, info: dict, full: bool = False) -> list[str]:
        files = "files: " + ", ".join(f"{name} ({size:,} bytes)" for name, size in info["files"].items())
        if not full:
            compile_config = info["config"].get("compile_config")
            compiled = compiled_text(compile_config.get("optimizer"), compile_config.get("loss"), compile_config.get("metrics")) if compile_config else "no (saved before compile)"
            saved = ", ".join(str(info["metadata"][k]) for k in ("keras_version", "date_saved") if k in info["metadata"])
            return [files, f"saved by Keras {saved}", *render_summary(info["config"], info["weights"], compiled)]
        lines = [files, f"metadata.json: {value_text(info['metadata'], '')}", f"config.json: {value_text(info['config'], '')}"]
        if info["weights"] is not None:
            lines += ["model.weights.h5:", *render_hdf5(info["weights"], "  ")]
        return lines


def is_keras_folder(path: Path) -> bool:
    """A `.keras` archive's contents unzipped into a folder, as `model.save(path, zipped=False)` writes them."""
    return (path / "config.json").is_file() and (path / "model.weights.h5").is_file()
