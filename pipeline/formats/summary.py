"""A saved Keras model at a glance, read from its config and its weights' HDF5 layout: what
`inspect` shows unless asked for everything (`--full`)."""

from typing import Any, Optional

SETTINGS = ("units", "filters", "kernel_size", "strides", "pool_size", "rate", "dropout", "activation", "padding")
PLAIN = (None, "linear", "valid")  # defaults not worth a word


def _short(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, list) else str(value)


def layer_rows(config: dict) -> list[dict]:
    """The model's own layers (not the input), with the settings that tell them apart."""
    rows = []
    for layer in (config.get("config") or {}).get("layers", []):
        if layer.get("class_name") == "InputLayer":
            continue
        settings = layer.get("config") or {}
        chosen = ", ".join(f"{key} {_short(settings[key])}" for key in SETTINGS if settings.get(key) not in PLAIN)
        rows.append({"name": settings.get("name", "?"), "class": layer.get("registered_name") or layer.get("class_name", "?"), "settings": chosen})
    return rows


def values_by_owner(hdf5: dict) -> dict[str, int]:
    """How many values each layer stores, and the optimizer ("optimizer"), from a weights layout.

    Keras 3 files keep a layer under layers/<group>, naming it in the `name` attribute of its
    vars/ group; legacy .h5 files keep it under model_weights/<layer name>/.
    """
    names = {e["path"].rsplit("/vars", 1)[0]: e["attributes"]["name"] for e in hdf5["entries"] if e["path"].endswith("vars") and "name" in e.get("attributes", {})}
    counts: dict[str, int] = {}
    for entry in hdf5["entries"]:
        if entry["type"] != "dataset":
            continue
        parts = entry["path"].split("/")
        if parts[0] in ("optimizer", "optimizer_weights"):
            owner = "optimizer"
        elif parts[0] == "layers" and len(parts) > 2:
            owner = names.get("/".join(parts[:2]), parts[1])
        elif parts[0] == "model_weights" and len(parts) > 2:
            owner = parts[1]
        else:
            continue
        size = 1
        for dim in entry["shape"]:
            size *= dim
        counts[owner] = counts.get(owner, 0) + size
    return counts


def _object_text(obj: Any, keys: tuple) -> str:
    """`Adam(learning_rate=0.001)` from a serialized Keras object, or its name if it is a string."""
    if not isinstance(obj, dict):
        return str(obj)
    settings = obj.get("config") or {}
    chosen = ", ".join(f"{key}={settings[key]:.4g}" if isinstance(settings[key], float) else f"{key}={settings[key]}" for key in keys if settings.get(key) is not None)
    return f"{obj.get('class_name', '?')}({chosen})"


def compiled_text(optimizer: Any, loss: Any, metrics: Any) -> str:
    names = [m.get("config", {}).get("name", m.get("class_name")) if isinstance(m, dict) else str(m) for m in (metrics or [])]
    parts = [f"optimizer {_object_text(optimizer, ('learning_rate',))}" if optimizer else "no optimizer", f"loss {_object_text(loss, ('from_logits',))}" if loss else "no loss"]
    return ", ".join(parts + ([f"metrics {', '.join(map(str, names))}"] if names else []))


def render_summary(config: Optional[dict], hdf5: Optional[dict], compiled: Optional[str]) -> list[str]:
    """The model's class and name, a table of its layers with the values each stores, how it was compiled, and the totals."""
    counts = values_by_owner(hdf5) if hdf5 else {}
    lines = []
    if config is not None:
        rows = layer_rows(config)
        lines.append(f"model: {config.get('class_name', '?')} {(config.get('config') or {}).get('name', '')!r}".rstrip())
        table = [("layer", "class", "settings", "values")] + [(r["name"], r["class"], r["settings"], f"{counts.get(r['name'], 0):,}") for r in rows]
    else:
        lines.append("layers (named in the weights file; the architecture is not in it):")
        table = [("layer", "values")] + [(name, f"{count:,}") for name, count in counts.items() if name != "optimizer"]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    last = len(widths) - 1
    lines += ["  " + "  ".join(cell.rjust(w) if i == last else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in table]
    if compiled is not None:
        lines.append(f"compiled: {compiled}")
    if hdf5:
        in_layers = sum(v for k, v in counts.items() if k != "optimizer")
        ratio = f" ({hdf5['stored_bytes'] / hdf5['raw_bytes']:.0%} of raw)" if hdf5["raw_bytes"] else ""
        lines.append(f"values: {in_layers:,} in the layers, {counts.get('optimizer', 0):,} in the optimizer; stored in {hdf5['stored_bytes']:,} bytes{ratio}")
    return lines
