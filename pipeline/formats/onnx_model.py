"""ONNX via `model.export(format="onnx")` (tf2onnx), run by onnxruntime: the way to most
serving stacks and, through onnxruntime-web, to the browser."""

import re
from collections import Counter
from pathlib import Path

from pipeline.console import collected
from pipeline.errors import ExportError
from pipeline.formats.base import Restored
from pipeline.formats.exported import ExportedFormat, tensor


class OnnxFormat(ExportedFormat):
    name = "onnx"
    suffix = ".onnx"
    description = "ONNX graph, run by onnxruntime"
    export_format = "onnx"
    runtime = "onnxruntime (CPU)"
    requires = {"tf2onnx": "tf2onnx", "onnxruntime": "onnxruntime", "onnx": "onnx"}
    reasons = (r"No Op registered for \S+ with domain_version of \d+", r"Unsupported ops: [^\n]+")

    def save(self, model, path: Path) -> None:
        """tf2onnx logs the ops it cannot convert and writes a graph no runtime loads: that is a failed export."""
        with collected("tf2onnx") as errors:
            super().save(model, path)
        if errors:  # e.g. "Failed to convert node 'model/layer/Cumprod' (fct=<bound method ...>): ValueError: ..."
            raise ExportError(f"model.export(format='onnx') cannot convert the model: tf2onnx: {re.sub(r' [(]fct=.*?[)](?=:|$)', '', errors[-1])}")

    def open(self, path: Path) -> Restored:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return self.restored(lambda batch: session.run(None, {name: batch})[0], session)

    def describe(self, path: Path) -> dict:
        import onnx

        model = onnx.load(str(path))

        def tensors(values) -> list[dict]:
            kinds = onnx.TensorProto.DataType
            return [tensor(v.name, kinds.Name(v.type.tensor_type.elem_type).lower(), [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]) for v in values]

        return {
            "inputs": tensors(model.graph.input),
            "outputs": tensors(model.graph.output),
            "ops": dict(Counter(node.op_type for node in model.graph.node)),
            "opset": ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import),
            "producer": " ".join(part for part in (model.producer_name, model.producer_version.replace(" None", "")) if part),
        }

    def describe_loaded(self, session) -> dict:
        return {"inputs": [i.name for i in session.get_inputs()], "providers": session.get_providers()}
