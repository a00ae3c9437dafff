"""`python -m pipeline.inspect PATH [--json] [--load [--trust] [--import MODULE]]`: what a saved artifact holds.

The tutorial's HDF5 appendix as a tool. It reads files without running anything
they contain: HDF5 through h5py, the .keras zip's JSON, a SavedModel's protobuf,
a TF checkpoint's index. `--load` then loads the artifact the way reload-verify
does, under Keras's safe_mode unless `--trust` is given.
"""

import argparse
import importlib
import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pipeline.errors import ArtifactError, PipelineError, unreadable
from pipeline.formats import FORMATS, LoadContext, artifact_kind, checkpoint_prefix, load
from pipeline.paths import disk_bytes
from pipeline.trust import code_layers, custom_classes, unregistered

JSON_ATTRIBUTES = ("model_config", "training_config")  # HDF5 attributes that hold JSON text


def _plain(value: Any) -> Any:
    """An HDF5 attribute as JSON-able Python: text decoded, arrays as lists, JSON text parsed."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _attributes(obj) -> dict:
    attributes = {}
    for key, value in obj.attrs.items():
        value = _plain(value)
        if key in JSON_ATTRIBUTES and isinstance(value, str):
            value = json.loads(value)
        attributes[key] = value
    return attributes


def describe_hdf5(source) -> dict:
    """Every group and dataset with shape, dtype, chunking, compression and attributes."""
    import h5py

    entries, parameters, raw, stored = [], 0, 0, 0

    def visit(name: str, obj) -> None:
        nonlocal parameters, raw, stored
        entry: dict[str, Any] = {"path": name, "type": "group" if isinstance(obj, h5py.Group) else "dataset"}
        if isinstance(obj, h5py.Dataset):
            entry.update(
                shape=list(obj.shape),
                dtype=str(obj.dtype),
                chunks=list(obj.chunks) if obj.chunks else None,
                compression=obj.compression,
                compression_opts=obj.compression_opts,
                shuffle=obj.shuffle,
                raw_bytes=int(obj.size * obj.dtype.itemsize),
                stored_bytes=int(obj.id.get_storage_size()),
            )
            parameters += int(obj.size)
            raw += entry["raw_bytes"]
            stored += entry["stored_bytes"]
        if obj.attrs:
            entry["attributes"] = _attributes(obj)
        entries.append(entry)

    with h5py.File(source, "r") as f:
        attributes = _attributes(f)
        f.visititems(visit)
    return {"attributes": attributes, "entries": entries, "values": parameters, "raw_bytes": raw, "stored_bytes": stored}


def _trust(config: Optional[dict]) -> dict:
    if config is None:
        return {}
    classes = custom_classes(config)
    return {"code": code_layers(config), "custom_classes": classes, "unregistered_classes": unregistered(classes)}


def describe_keras(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        files = {info.filename: info.file_size for info in archive.infolist()}
        config = json.loads(archive.read("config.json"))
        metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in files else {}
        weights = describe_hdf5(io.BytesIO(archive.read("model.weights.h5"))) if "model.weights.h5" in files else None
    return {"files": files, "metadata": metadata, "config": config, "weights": weights, **_trust(config)}


def describe_savedmodel(path: Path) -> dict:
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
    return {"tags": [list(g.meta_info_def.tags) for g in proto.meta_graphs], "signatures": signatures, "variables": _checkpoint_variables(str(variables))}


def _checkpoint_variables(prefix: str) -> list[dict]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    return [{"name": name, "shape": list(shapes[name]), "dtype": dtypes[name].name} for name in sorted(shapes) if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]


def describe_tf_checkpoint(path: Path) -> dict:
    prefix = checkpoint_prefix(path)
    return {"checkpoint": prefix, "variables": _checkpoint_variables(prefix)}


def describe_h5(path: Path) -> dict:
    hdf5 = describe_hdf5(path)
    return {**hdf5, **_trust(hdf5["attributes"].get("model_config"))}  # the config is already parsed


DESCRIBE = {
    "h5": describe_h5,
    "weights": describe_hdf5,
    "keras": describe_keras,
    "savedmodel": describe_savedmodel,
    "tf_checkpoint": describe_tf_checkpoint,
}


def inspect_artifact(path: Path) -> dict:
    """What `path` holds, as JSON-able data; any unreadable file becomes one ArtifactError."""
    kind = artifact_kind(path)
    try:
        details = DESCRIBE[kind](path)
    except ArtifactError:
        raise
    except Exception as error:  # h5py, zipfile, protobuf and TensorFlow each fail in their own way
        raise ArtifactError(unreadable(path, f"{kind} artifact", error)) from None
    return {"path": str(path), "format": kind, "bytes": disk_bytes(path) if path.exists() else None, **details}


def load_summary(path: Path, kind: str, trust: bool) -> dict:
    """Load the artifact as reload-verify does, and say what came back."""
    if kind in ("weights", "tf_checkpoint"):
        raise ArtifactError(f"{path} holds weights but no architecture, so it loads only into a model built from the config (reload-verify does this)")
    restored = load(FORMATS[kind], path, LoadContext(fresh_model=lambda: None, safe_mode=not trust))
    loaded = restored.handle
    if kind == "savedmodel":
        return {"class": type(loaded).__name__, "signatures": sorted(loaded.signatures)}
    optimizer = restored.optimizer
    return {
        "class": type(loaded).__name__,
        "layers": len(loaded.layers),
        "parameters": int(loaded.count_params()),
        "optimizer": type(optimizer).__name__ if optimizer is not None else None,
        "optimizer_iterations": int(optimizer.iterations.numpy()) if optimizer is not None else None,
    }


def pretty_json(value: Any, indent: str = "", width: int = 100) -> str:
    """JSON with each container on one line where it fits: long configs stay readable."""
    flat = json.dumps(value)
    if len(indent) + len(flat) <= width or not isinstance(value, (dict, list)) or not value:
        return flat
    inner = indent + "  "
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {pretty_json(v, inner, width)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    return "[\n" + ",\n".join(inner + pretty_json(v, inner, width) for v in value) + f"\n{indent}]"


def _value(value: Any, indent: str) -> str:
    return value if isinstance(value, str) else pretty_json(value, indent)


def _render_hdf5(hdf5: dict, indent: str = "") -> list[str]:
    lines = [f"{indent}attributes:"] + [f"{indent}  {k}: {_value(v, indent + '  ')}" for k, v in hdf5["attributes"].items()] if hdf5["attributes"] else []
    lines.append(f"{indent}contents:")
    for entry in hdf5["entries"]:
        pad = indent + "  " * (entry["path"].count("/") + 1)
        name = entry["path"].rsplit("/", 1)[-1]
        if entry["type"] == "group":
            line = f"{pad}{name}/"
        else:
            filters = f"{entry['compression']}" + (f" level {entry['compression_opts']}" if entry["compression_opts"] is not None else "") if entry["compression"] else "uncompressed"
            if entry["shuffle"]:
                filters += " + shuffle"
            chunks = f"chunks {tuple(entry['chunks'])}" if entry["chunks"] else "contiguous"
            line = f"{pad}{name}  {tuple(entry['shape'])} {entry['dtype']}  {chunks}, {filters}  {entry['raw_bytes']:,} -> {entry['stored_bytes']:,} bytes"
        lines.append(line)
        lines += [f"{pad}  @{k}: {_value(v, pad + '  ')}" for k, v in entry.get("attributes", {}).items()]
    ratio = f" ({hdf5['stored_bytes'] / hdf5['raw_bytes']:.0%} of raw)" if hdf5["raw_bytes"] else ""
    lines.append(f"{indent}{hdf5['values']:,} values: {hdf5['raw_bytes']:,} raw bytes stored in {hdf5['stored_bytes']:,}{ratio}")
    return lines


def _render_specs(specs: dict) -> str:
    return ", ".join(f"{name}: {spec['dtype']}{tuple(spec['shape']) if spec['shape'] is not None else '(unknown rank)'}" for name, spec in specs.items())


def render(info: dict) -> str:
    """The inspection as text for people; `--json` gives the same data for machines."""
    size = f", {info['bytes']:,} bytes" if info.get("bytes") is not None else ""
    lines = [f"{info['path']}: {info['format']} ({FORMATS[info['format']].description}{size})"]
    kind = info["format"]
    if kind in ("h5", "weights"):
        lines += _render_hdf5(info)
    elif kind == "keras":
        lines.append("files: " + ", ".join(f"{name} ({size:,} bytes)" for name, size in info["files"].items()))
        lines.append(f"metadata.json: {_value(info['metadata'], '')}")
        lines.append(f"config.json: {_value(info['config'], '')}")
        if info["weights"] is not None:
            lines.append("model.weights.h5:")
            lines += _render_hdf5(info["weights"], "  ")
    elif kind == "savedmodel":
        lines.append(f"tags: {info['tags']}")
        for name, signature in info["signatures"].items():
            lines.append(f"signature {name!r} ({signature['method']}):")
            lines.append(f"  inputs:  {_render_specs(signature['inputs'])}")
            lines.append(f"  outputs: {_render_specs(signature['outputs'])}")
    if kind in ("savedmodel", "tf_checkpoint"):
        if "checkpoint" in info:
            lines.append(f"checkpoint: {info['checkpoint']}")
        lines.append(f"variables ({len(info['variables'])}):")
        lines += [f"  {v['name']}  {tuple(v['shape'])} {v['dtype']}" for v in info["variables"]]
    if "code" in info:
        lines.append(f"code: {', '.join(info['code'])} (refused by safe_mode)" if info["code"] else "code: none (loads under safe_mode)")
        missing = set(info["unregistered_classes"])
        lines.append("custom classes: " + (", ".join(f"{c}{' (not registered here)' if c in missing else ''}" for c in info["custom_classes"]) or "none"))
    if "loaded" in info:
        lines.append("loaded: " + ", ".join(f"{k} {v}" for k, v in info["loaded"].items()))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.inspect", description="Show what a saved model, weights file or checkpoint holds.")
    parser.add_argument("path", type=Path, help="a .keras, .h5 or .weights.h5 file, a SavedModel folder, or a TF checkpoint (folder or prefix)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--load", action="store_true", help="also load it as reload-verify does (Keras safe_mode on)")
    parser.add_argument("--trust", action="store_true", help="with --load: turn safe_mode off, allowing code stored in the file to run")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help="import MODULE first, to register its custom classes")
    args = parser.parse_args(argv)
    if args.trust and not args.load:
        parser.error("--trust only applies with --load")
    try:
        for module in args.imports:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise PipelineError(f"--import {module}: {error}") from None
        info = inspect_artifact(args.path)
        if args.load:
            info["loaded"] = load_summary(args.path, info["format"], args.trust)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2, default=str) if args.json else render(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
