"""What a saved model asks Keras to run or import when it is loaded.

Keras's safe_mode refuses Python code stored in a model (a Lambda layer's
bytecode), and a custom class loads only once the code that registers it has
been imported. Both can be read from the saved config without loading the
model, so an error can name the layer or class, and `inspect` can report them.
"""

import json
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional

from pipeline.errors import unreadable

TRUST_HINT = "if you trust the file, set verify.trust=true or pass --trust"
IMPORT_HINT = (
    "import the module that defines it (decorated with @keras.saving.register_keras_serializable) "
    "before loading, e.g. `python -m pipeline.inspect PATH --load --import your.module`"
)


def saved_config(path: Path) -> Optional[dict]:
    """The model config inside a .keras zip or a whole-model .h5; None if there is none or it is unreadable."""
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        if path.suffix == ".h5" and not path.name.endswith(".weights.h5"):
            import h5py

            with h5py.File(path, "r") as f:
                config = f.attrs.get("model_config")
                return json.loads(config) if config is not None else None
    except Exception:  # a damaged file: the loader's own error says so
        return None
    return None


def _objects(node: Any) -> Iterator[dict]:
    """Every serialized object (a dict with a class_name) in a config, depth first."""
    if isinstance(node, dict):
        if "class_name" in node:
            yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


def code_layers(config: dict) -> list[str]:
    """Names of the layers that carry Python bytecode, which safe_mode refuses to load."""
    found = []
    for obj in _objects(config):
        function = obj.get("config", {}).get("function") if isinstance(obj.get("config"), dict) else None
        if isinstance(function, dict) and function.get("class_name") == "__lambda__":
            found.append(f"{obj['class_name']} layer {obj['config'].get('name', '?')!r}")
    return found


def custom_classes(config: dict) -> list[str]:
    """Registered names (package>Class) of the classes that are not Keras's own."""
    names = []
    for obj in _objects(config):
        name = obj.get("registered_name") or obj["class_name"]
        module = obj.get("module")
        if isinstance(name, str) and (">" in name or (module and not str(module).startswith("keras"))) and name not in names:
            names.append(name)
    return names


def unregistered(classes: list[str]) -> list[str]:
    """The classes among `classes` that no imported module has registered with Keras.
    (Keras, and so TensorFlow, is imported only when there is a class to look up.)"""
    if not classes:
        return []
    import keras

    import pipeline.layers  # noqa: F401  (registers the pipeline's own custom layer)

    return [name for name in classes if keras.saving.get_registered_object(name) is None]


def trust_report(config: Optional[dict]) -> dict:
    """What a saved model config would run (code) or import (custom classes) on load, for `inspect`."""
    if config is None:
        return {}
    classes = custom_classes(config)
    return {"code": code_layers(config), "custom_classes": classes, "unregistered_classes": unregistered(classes)}


def explain_load_failure(format_name: str, path: Path, error: Exception) -> str:
    """One line that says why a saved model did not load, and what to do about it."""
    config = saved_config(path)
    if config is not None:
        code = code_layers(config)
        if code and "safe_mode" in str(error):
            return f"{path} contains Python code ({', '.join(code)}), which Keras's safe_mode refuses to load; {TRUST_HINT}"
        missing = unregistered(custom_classes(config))
        if missing:
            return f"{path} uses the custom class {', '.join(missing)}, which is not registered in this process: {IMPORT_HINT}"
    return unreadable(path, f"{format_name} artifact", error)
