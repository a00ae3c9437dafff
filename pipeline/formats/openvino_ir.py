"""OpenVINO IR via `model.export(format="openvino")`, compiled for the CPU by OpenVINO's runtime:
Intel's inference engine. The IR is two files, `model.xml` (the graph) and `model.bin` (the
weights), kept together in one folder so the folder appears whole or not at all."""

from collections import Counter
from pathlib import Path

from pipeline.console import root_logger_kept
from pipeline.formats.base import Restored
from pipeline.formats.exported import ExportedFormat, tensor

GRAPH = "model.xml"
# The IR holds float32. On a CPU with bfloat16 instructions (AVX512_BF16, AMX) OpenVINO computes in
# bfloat16 unless told otherwise, which moves the logits by about 5e-3: a user who wants the trained
# model's numbers asks for f32, as reload-verify does.
PRECISION = {"INFERENCE_PRECISION_HINT": "f32"}


def _graph(path: Path) -> Path:
    """The `.xml` of an IR folder, or the `.xml` file itself."""
    return path if path.suffix == ".xml" else path / GRAPH


class OpenVINOFormat(ExportedFormat):
    name = "openvino"
    suffix = ""
    description = "OpenVINO IR (model.xml + model.bin), compiled for the CPU by OpenVINO"
    export_format = "openvino"
    runtime = "OpenVINO runtime (CPU, f32)"
    requires = {"openvino": "openvino", "scipy": "scipy"}
    reasons = (r"No conversion rule found for operations: [^\n]+",)
    looks_like = "an OpenVINO IR folder (model.xml + model.bin) or .xml file"

    def save(self, model, path: Path) -> None:
        path.mkdir()
        with root_logger_kept():  # OpenVINO's converter sets the root logger to ERROR, and leaves it so when it fails
            super().save(model, path / GRAPH)

    def detect(self, path: Path) -> bool:
        return (path.is_dir() and (path / GRAPH).exists()) or (path.is_file() and path.suffix == ".xml")

    def open(self, path: Path) -> Restored:
        import openvino

        compiled = openvino.Core().compile_model(str(_graph(path)), "CPU", PRECISION)
        return self.restored(lambda batch: compiled(batch)[0], compiled)

    def describe(self, path: Path) -> dict:
        import openvino

        model = openvino.Core().read_model(str(_graph(path)))

        def tensors(ports) -> list[dict]:
            return [tensor(p.get_any_name(), p.get_element_type().get_type_name(), [d.get_length() if d.is_static else -1 for d in p.get_partial_shape()]) for p in ports]

        return {"inputs": tensors(model.inputs), "outputs": tensors(model.outputs), "ops": dict(Counter(op.get_type_name() for op in model.get_ordered_ops()))}
