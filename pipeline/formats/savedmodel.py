"""SavedModel via `model.export`: a TensorFlow graph with a serving signature, for TF Serving and friends."""

from pathlib import Path

import numpy as np

from pipeline.errors import ArtifactError
from pipeline.formats.base import PREDICT_BATCH, LoadContext, Restored, SaveFormat
from pipeline.formats.tf_checkpoint import checkpoint_variables, render_variables


def _render_specs(specs: dict) -> str:
    return ", ".join(f"{name}: {spec['dtype']}{tuple(spec['shape']) if spec['shape'] is not None else '(unknown rank)'}" for name, spec in specs.items())


class SavedModelFormat(SaveFormat):
    name = "savedmodel"
    suffix = ""
    description = "TF SavedModel via model.export, for serving"
    carries_optimizer = False
    carries_architecture = True
    looks_like = "a SavedModel folder"

    def save(self, model, path: Path) -> None:
        model.export(path, format="tf_saved_model", verbose=False)

    def load(self, path: Path, ctx: LoadContext) -> Restored:
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))

        def predict(x: np.ndarray) -> np.ndarray:
            batches = [loaded.serve(tf.constant(x[i : i + PREDICT_BATCH])).numpy() for i in range(0, len(x), PREDICT_BATCH)]
            return np.concatenate(batches)

        return Restored(predict=predict, optimizer=None, handle=loaded)

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / "saved_model.pb").exists()

    def describe(self, path: Path) -> dict:
        """Signatures with their input and output specs, read from saved_model.pb without loading the graph."""
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((path / "saved_model.pb").read_bytes())

        def specs(tensors) -> dict:
            return {
                name: {
                    "dtype": tf.dtypes.as_dtype(info.dtype).name,
                    "shape": None if info.tensor_shape.unknown_rank else [d.size if d.size >= 0 else None for d in info.tensor_shape.dim],
                }
                for name, info in sorted(tensors.items())
            }

        signatures = {}
        for graph in proto.meta_graphs:
            for name, signature in sorted(graph.signature_def.items()):
                if not name.startswith("__"):  # __saved_model_init_op is TensorFlow's own
                    signatures[name] = {"inputs": specs(signature.inputs), "outputs": specs(signature.outputs), "method": signature.method_name}
        variables = path / "variables" / "variables"
        return {"tags": [list(g.meta_info_def.tags) for g in proto.meta_graphs], "signatures": signatures, "variables": checkpoint_variables(str(variables))}

    def render(self, info: dict, full: bool = False) -> list[str]:
        lines = [f"tags: {info['tags']}"]
        for name, signature in info["signatures"].items():
            lines.append(f"signature {name!r} ({signature['method']}):")
            lines.append(f"  inputs:  {_render_specs(signature['inputs'])}")
            lines.append(f"  outputs: {_render_specs(signature['outputs'])}")
        return lines + render_variables(info["variables"])

    def summarize(self, restored: Restored) -> dict:
        return {"class": type(restored.handle).__name__, "signatures": sorted(restored.handle.signatures)}

    def init_weights(self, model, path: Path) -> None:
        raise ArtifactError(f"{path} is a SavedModel, whose weights Keras cannot load into a model; start from a .keras, .h5 or .weights.h5 file or a TF checkpoint")
