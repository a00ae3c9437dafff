"""The one registry of save formats, and the dispatch over it: which format a path is in,
loading it as a user would, and describing what it holds without running it.

Each format is one module (see `base.SaveFormat` for what it provides). The save
stage, the checkpoint callback, reload-verify, `inspect`, `model.init_weights` and
the sweep report all go through this table, so a new format is one new module and
one line below.
"""

from pathlib import Path

from pipeline.console import import_tensorflow
from pipeline.errors import ArtifactError, unreadable
from pipeline.files import disk_bytes
from pipeline.formats.base import LoadContext, Restored, SaveFormat
from pipeline.formats.h5 import H5Format
from pipeline.formats.keras_v3 import KerasFormat
from pipeline.formats.litert import LiteRTFormat
from pipeline.formats.onnx_model import OnnxFormat
from pipeline.formats.openvino_ir import OpenVINOFormat
from pipeline.formats.savedmodel import SavedModelFormat
from pipeline.formats.tf_checkpoint import TFCheckpointFormat
from pipeline.formats.weights import WeightsFormat
from pipeline.trust import explain_load_failure, refuse_untrusted

FORMATS: dict[str, SaveFormat] = {
    f.name: f for f in (KerasFormat(), H5Format(), SavedModelFormat(), WeightsFormat(), TFCheckpointFormat(), OnnxFormat(), LiteRTFormat(), OpenVINOFormat())
}


def detect(path: Path) -> SaveFormat:
    """Which registered format `path` is in, from its name and, for folders, its files."""
    if not path.exists() and not path.with_name(path.name + ".index").exists():  # a TF checkpoint prefix names no file itself
        raise ArtifactError(f"{path} does not exist")
    for fmt in FORMATS.values():
        if fmt.detect(path):
            return fmt
    raise ArtifactError(f"cannot tell what {path} is: expected {', '.join(fmt.looks_like for fmt in FORMATS.values())}")


def load(fmt: SaveFormat, path: Path, ctx: LoadContext) -> Restored:
    """Load `path` as a user would; any failure becomes one ArtifactError that says what to do."""
    if not path.exists() and not fmt.files(path):
        raise ArtifactError(f"{path} does not exist")
    if ctx.safe_mode:
        refuse_untrusted(path, ctx.declared)
    try:
        return fmt.load(path, ctx)
    except ArtifactError:
        raise
    except Exception as error:  # Keras, h5py, zipfile and TensorFlow each fail in their own way
        raise ArtifactError(explain_load_failure(fmt.name, path, error)) from error


def inspect_artifact(path: Path) -> dict:
    """What `path` holds, as JSON-able data; any unreadable file becomes one ArtifactError."""
    fmt = detect(path)
    if not fmt.described_without_tensorflow:
        import_tensorflow()
    try:
        details = fmt.describe(path)
    except ArtifactError:
        raise
    except Exception as error:  # h5py, zipfile, protobuf and TensorFlow each fail in their own way
        raise ArtifactError(unreadable(path, f"{fmt.name} artifact", error)) from None
    return {"path": str(path), "format": fmt.name, "bytes": disk_bytes(path) if path.exists() else None, **details}


def render_inspection(info: dict, full: bool = False) -> str:
    """The inspection as text for people, at a glance or in `full`; `--json` gives all the data for machines."""
    fmt = FORMATS[info["format"]]
    size = f", {info['bytes']:,} bytes" if info.get("bytes") is not None else ""
    lines = [f"{info['path']}: {fmt.name} ({fmt.description}{size})", *fmt.render(info, full)]
    if "code" in info:
        lines.append(f"code: {', '.join(info['code'])} (refused by safe_mode)" if info["code"] else "code: none (loads under safe_mode)")
        missing = set(info["unregistered_classes"])
        lines.append("custom classes: " + (", ".join(f"{c}{' (not registered here)' if c in missing else ''}" for c in info["custom_classes"]) or "none"))
        if info.get("outside_allow_list"):
            lines.append(f"names outside Keras's building blocks: {', '.join(info['outside_allow_list'])} (refused unless --trust or --import)")
    if "loaded" in info:
        lines.append("loaded: " + ", ".join(f"{k} {v}" for k, v in info["loaded"].items()))
    return "\n".join(lines)
