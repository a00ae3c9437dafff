"""LiteRT (TensorFlow Lite) flatbuffer via `model.export(format="litert")`, run by the LiteRT
interpreter (`ai_edge_litert`): what phones and microcontrollers run."""

from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.console import filtered_stderr
from pipeline.formats.base import Restored
from pipeline.formats.exported import ExportedFormat, tensor


def _interpreter(path: Path, delegate: bool = True):
    """The interpreter, without the line its C++ core prints on making its CPU delegate (XNNPACK,
    which runs the model; without it, as `inspect` reads the file, the ops are the file's own)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if delegate else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with filtered_stderr(("Created TensorFlow Lite XNNPACK delegate",)):
        interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
    return interpreter


class LiteRTFormat(ExportedFormat):
    name = "litert"
    suffix = ".tflite"
    description = "LiteRT (TFLite) flatbuffer, run by the LiteRT interpreter"
    export_format = "litert"
    runtime = "LiteRT interpreter (ai_edge_litert)"
    requires = {"ai_edge_litert": "ai-edge-litert"}
    reasons = (r"'[^']+' op is neither a custom op nor a flex op", r"Select TensorFlow op\(s\).*?Flex delegate before inference\.")

    def __init__(self, quantize: str = ""):
        self.quantized = quantize  # "", "dynamic" or "float16"

    def with_options(self, options) -> "LiteRTFormat":
        quantize = options.quantize.value
        return LiteRTFormat("" if quantize == "none" else quantize)

    def export_options(self) -> dict:
        """TFLite's post-training quantization, set on its converter through model.export."""
        if not self.quantized:
            return {}
        import tensorflow as tf

        options = {"optimizations": [tf.lite.Optimize.DEFAULT]}
        return {**options, "target_spec": {"supported_types": [tf.float16]}} if self.quantized == "float16" else options

    def open(self, path: Path) -> Restored:
        interpreter = _interpreter(path)
        (source,), (result,) = interpreter.get_input_details(), interpreter.get_output_details()

        def run(batch: np.ndarray) -> np.ndarray:
            if tuple(interpreter.get_input_details()[0]["shape"]) != batch.shape:  # the batch dimension is resized as needed
                interpreter.resize_tensor_input(source["index"], batch.shape)
                interpreter.allocate_tensors()
            interpreter.set_tensor(source["index"], batch)
            interpreter.invoke()
            return interpreter.get_tensor(result["index"]).copy()

        return self.restored(run, interpreter)

    def describe(self, path: Path) -> dict:
        interpreter = _interpreter(path, delegate=False)

        def tensors(details) -> list[dict]:
            return [tensor(d["name"], np.dtype(d["dtype"]).name, list(d["shape_signature"])) for d in details]

        return {
            "inputs": tensors(interpreter.get_input_details()),
            "outputs": tensors(interpreter.get_output_details()),
            "ops": dict(Counter(op["op_name"] for op in interpreter._get_ops_details())),
        }
