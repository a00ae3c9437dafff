"""OpenVINO IR via `model.export(format="openvino")`, compiled for the CPU by OpenVINO's runtime:
Intel's inference engine. The IR is two files, `model.xml` (the graph) and `model.bin` (the
weights), kept together in one folder so the folder appears whole or not at all."""

from collections import Counter
from pathlib import Path

from pipeline.formats.base import LoadContext, Restored
from pipeline.formats.exported import ExportedFormat, tensor

GRAPH = "model.xml"


def _graph(path: Path) -> Path:
    """The `.xml` of an IR folder, or the `.xml` file itself."""
    return path if path.suffix == ".xml" else path / GRAPH


class OpenVINOFormat(ExportedFormat):
    name = "openvino"
    suffix = ""
    description = "OpenVINO IR (model.xml + model.bin), compiled for the CPU by OpenVINO"
    export_format = "openvino"
    runtime = "OpenVINO runtime (CPU)"
    requires = {"openvino": "openvino", "scipy": "scipy"}
    looks_like = "an OpenVINO IR folder (model.xml + model.bin) or .xml file"

    def save(self, model, path: Path) -> None:
        path.mkdir()
        super().save(model, path / GRAPH)

    def detect(self, path: Path) -> bool:
        return (path.is_dir() and (path / GRAPH).exists()) or (path.is_file() and path.suffix == ".xml")

    def load(self, path: Path, ctx: LoadContext) -> Restored:
        import openvino

        compiled = openvino.Core().compile_model(str(_graph(path)), "CPU")
        return self.restored(lambda batch: compiled(batch)[0], compiled)

    def describe(self, path: Path) -> dict:
        import openvino

        model = openvino.Core().read_model(str(_graph(path)))

        def tensors(ports) -> list[dict]:
            return [tensor(p.get_any_name(), p.get_element_type().get_type_name(), [d.get_length() if d.is_static else -1 for d in p.get_partial_shape()]) for p in ports]

        return {"inputs": tensors(model.inputs), "outputs": tensors(model.outputs), "ops": dict(Counter(op.get_type_name() for op in model.get_ordered_ops()))}
