"""HDF5, the container under `.h5`, `.weights.h5` and the weights inside a `.keras` zip:
reading its layout for `inspect`, and rewriting it compressed, which Keras's writers cannot."""

import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pipeline.formats.text import value_text

JSON_ATTRIBUTES = ("model_config", "training_config")  # HDF5 attributes that hold JSON text


def rewrite_hdf5(path: Path, compression: Optional[str], level: int, shuffle: bool, chunk_kib: Optional[int]) -> None:
    """Rewrite an HDF5 file with its arrays chunked and compressed, and nothing else changed.

    Keras's HDF5 writers take no such options. The groups, dataset names and
    attributes stay as Keras wrote them and h5py decompresses on read, so Keras's
    `load_weights` and `load_model` read the rewritten file as before.
    """
    import h5py

    def filters(dataset) -> dict:
        if dataset.ndim == 0 or dataset.size < 2:  # scalars cannot be chunked
            return {}
        options: dict[str, Any] = {"compression": compression, "shuffle": shuffle and compression is not None}
        if compression == "gzip":
            options["compression_opts"] = level
        if chunk_kib is not None:
            row_bytes = max(1, int(np.prod(dataset.shape[1:], dtype=np.int64)) * dataset.dtype.itemsize)
            options["chunks"] = (max(1, min(dataset.shape[0], chunk_kib * 1024 // row_bytes)), *dataset.shape[1:])
        else:
            options["chunks"] = True
        return options

    rewritten = path.with_name(f"{path.name}.rewrite")
    with h5py.File(path, "r") as source, h5py.File(rewritten, "w") as target:
        target.attrs.update(source.attrs)

        def copy(name: str, obj) -> None:
            if isinstance(obj, h5py.Group):
                copied = target.require_group(name)
            else:
                copied = target.create_dataset(name, data=obj[()], dtype=obj.dtype, **filters(obj))
            copied.attrs.update(obj.attrs)

        source.visititems(copy)
    os.replace(rewritten, path)


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


def render_hdf5(hdf5: dict, indent: str = "") -> list[str]:
    lines = [f"{indent}attributes:"] + [f"{indent}  {k}: {value_text(v, indent + '  ')}" for k, v in hdf5["attributes"].items()] if hdf5["attributes"] else []
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
        lines += [f"{pad}  @{k}: {value_text(v, pad + '  ')}" for k, v in entry.get("attributes", {}).items()]
    ratio = f" ({hdf5['stored_bytes'] / hdf5['raw_bytes']:.0%} of raw)" if hdf5["raw_bytes"] else ""
    lines.append(f"{indent}{hdf5['values']:,} values: {hdf5['raw_bytes']:,} raw bytes stored in {hdf5['stored_bytes']:,}{ratio}")
    return lines
