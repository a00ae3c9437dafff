"""What the deploy formats share: written with Keras's `model.export`, read back in the runtime
each is meant for, never by TensorFlow, and described by that runtime's own reader.

They hold no optimizer (they are for inference) and need packages of their own, installed
with the `deploy` extra; `missing_packages` lets validation say so before anything runs.
"""

import importlib.util
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline.errors import ArtifactError, ExportError, describe
from pipeline.formats.base import PREDICT_BATCH, LoadContext, Restored, SaveFormat


class ExportedFormat(SaveFormat):
    export_format: str  # model.export(format=...)
    runtime: str  # what reload-verify loads it with, for people
    requires: dict[str, str]  # importable module -> the pip package that provides it
    # Where a converter's or runtime's long message says what it could not take, e.g. the op
    reasons: tuple[str, ...] = ()
    carries_optimizer = False
    carries_architecture = True
    described_without_tensorflow = True
    deployed = True
    # Its runtime's kernels sum in their own order: on the tutorial's MLP, logits near 15 come back
    # 12 float32 steps (1.1e-5) from TensorFlow's, which is not a different model.
    tolerance_floor = 1e-4

    def missing_packages(self) -> list[str]:
        """Found without importing them: validation runs before TensorFlow is imported."""
        return [package for module, package in self.requires.items() if importlib.util.find_spec(module) is None]

    def export_options(self) -> dict:
        """Further keyword arguments of `model.export`."""
        return {}

    def reason(self, error: Exception) -> str:
        """The converter's or runtime's reason in one line: the part of its message that names what it could not take."""
        text = str(error)
        found = next((match.group(0) for pattern in self.reasons if (match := re.search(pattern, text))), None)
        return f"{type(error).__name__}: {found}" if found else describe(error)

    @contextmanager
    def failures(self, action: str, error_type: type = ArtifactError):
        """Any failure inside, as one line naming `action` and the reason."""
        try:
            yield
        except (ArtifactError, OSError):  # already explained, or the disk's problem, not the model's
            raise
        except Exception as error:  # each converter and runtime fails in its own way
            raise error_type(f"{action}: {self.reason(error)}") from error

    def save(self, model, path: Path) -> None:
        with warnings.catch_warnings(), self.failures(f"model.export(format={self.export_format!r}) cannot convert the model", ExportError):
            warnings.simplefilter("ignore", FutureWarning)  # Keras's tf2onnx shim probes numpy for `np.object`
            model.export(str(path), format=self.export_format, verbose=False, **self.export_options())

    def load(self, path: Path, ctx: LoadContext) -> Restored:
        with self.failures(f"{self.runtime} cannot load {path}"):
            return self.open(path)

    def open(self, path: Path) -> Restored:
        """The file loaded in the format's runtime, as `restored(run, handle)`."""
        raise NotImplementedError

    def run_batches(self, run, x: np.ndarray) -> np.ndarray:
        """`run(batch)` over `x` in batches, as the other formats predict."""
        with self.failures(f"{self.runtime} failed to run the model"):
            return np.concatenate([run(np.ascontiguousarray(x[i : i + PREDICT_BATCH], dtype=np.float32)) for i in range(0, len(x), PREDICT_BATCH)])

    def restored(self, run, handle) -> Restored:
        return Restored(predict=lambda x: self.run_batches(run, x), optimizer=None, handle=handle)

    def summarize(self, restored: Restored) -> dict:
        return {"runtime": self.runtime, **self.describe_loaded(restored.handle)}

    def describe_loaded(self, handle) -> dict:
        return {}

    def render(self, info: dict, full: bool = False) -> list[str]:
        lines = [f"runtime: {self.runtime}"]
        for kind in ("inputs", "outputs"):
            lines.append(f"{kind}: " + ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in info[kind]))
        ops = info.get("ops", {})
        lines.append(f"ops: {sum(ops.values())} of {len(ops)} kinds" + (f": {', '.join(f'{k} x{v}' for k, v in sorted(ops.items()))}" if full or len(ops) <= 12 else ""))
        return lines + [f"{key}: {info[key]}" for key in ("opset", "producer") if info.get(key)]

    def init_weights(self, model, path: Path) -> None:
        raise ArtifactError(f"{path} is an exported {self.name} model for inference; start from a .keras, .h5 or .weights.h5 file or a TF checkpoint")


def tensor(name: str, dtype, shape) -> dict:
    return {"name": name, "dtype": str(dtype), "shape": [d if isinstance(d, int) and d >= 0 else None for d in shape]}
