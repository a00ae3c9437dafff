"""`.keras`: Keras 3's zip of config.json, metadata.json and model.weights.h5, optimizer included."""

import io
import json
import zipfile
from pathlib import Path

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

    def save(self, model, path: Path) -> None:
        model.save(path)

    def load(self, path: Path, ctx: LoadContext) -> Restored:
        import keras

        return keras_restored(keras.models.load_model(path, safe_mode=ctx.safe_mode))

    def describe(self, path: Path) -> dict:
        with zipfile.ZipFile(path) as archive:
            files = {info.filename: info.file_size for info in archive.infolist()}
            config = json.loads(archive.read("config.json"))
            metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in files else {}
            weights = describe_hdf5(io.BytesIO(archive.read("model.weights.h5"))) if "model.weights.h5" in files else None
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
