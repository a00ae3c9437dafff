"""What a saved model asks Keras to run or import when it is loaded.

Keras's safe_mode refuses Python code stored in a model (a Lambda layer's
bytecode), and a custom class loads only once the code that registers it has
been imported. Both can be read from the saved config without loading the
model, so an error can name the layer or class, and `inspect` can report them.

safe_mode does not stop a config from naming any importable function or class
(CVE-2025-1550: a `.keras` whose config calls `keras.utils.get_file` or
`keras.models.load_model`), and Keras once ignored it for `.h5` files
(CVE-2025-9905). So before anything is loaded untrusted, the config is checked
against an allow-list: Keras's building blocks, and the modules the user declared.
"""

import json
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional

from pipeline.errors import ArtifactError, unreadable

TRUST_HINT = "if you trust the file, set verify.trust=true or pass --trust"
IMPORT_HINT = (
    "import the module that defines it (decorated with @keras.saving.register_keras_serializable) "
    "before loading, e.g. `python -m pipeline.inspect PATH --load --import your.module`"
)


def saved_config(path: Path) -> Optional[dict]:
    """The model config inside a .keras zip (or its unzipped folder) or a whole-model .h5; None if there is none or it is unreadable."""
    try:
        if path.is_dir() and (path / "config.json").is_file():
            return json.loads((path / "config.json").read_text())
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


# Modules whose classes and functions a config may name: Keras's building blocks.
BUILDING_BLOCKS = ("layers", "activations", "losses", "optimizers", "initializers", "regularizers", "constraints", "metrics")
ALLOWED_MODULES = tuple(f"keras.{name}" for name in BUILDING_BLOCKS)
# Classes named from Keras's top level or its model modules: the model containers and dtype policies.
ALLOWED_CLASSES = {
    "keras": {"Sequential", "Model", "Functional", "DTypePolicy", "FloatDTypePolicy", "QuantizedDTypePolicy"},
    "keras.src.models.functional": {"Functional"},
    "keras.src.models.sequential": {"Sequential"},
    "keras.src.models.model": {"Model"},
}
OWN_MODULES = ("pipeline.layers",)  # the pipeline's own registered layer


def _within(module: str, modules: tuple[str, ...]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in modules)


def outside_allow_list(config: dict, declared: tuple[str, ...] = ()) -> list[str]:
    """What a config names outside Keras's building blocks and the `declared` modules, as
    `module.name`. (An object without a module resolves only to registered or built-in names.)"""
    found = []
    for obj in _objects(config):
        module, name = obj.get("module"), obj["class_name"]
        if not isinstance(module, str):
            continue
        if name == "function":  # a reference to a function by name, e.g. an activation
            name = obj.get("config") if isinstance(obj.get("config"), str) else "?"
        allowed = _within(module, ALLOWED_MODULES + OWN_MODULES + declared) or name in ALLOWED_CLASSES.get(module, ())
        entry = f"{module}.{name}"
        if not allowed and entry not in found:
            found.append(entry)
    return found


def refuse_untrusted(path: Path, declared: tuple[str, ...] = ()) -> None:
    """Stop before loading a file whose config would run code or reach outside the allow-list."""
    config = saved_config(path)
    if config is None:
        return
    code, foreign = code_layers(config), outside_allow_list(config, declared)
    if code:
        raise ArtifactError(_code_message(path, code))
    missing = unregistered(custom_classes(config))
    if missing:  # importing the module both registers the class and declares it trusted
        raise ArtifactError(_missing_message(path, missing))
    if foreign:
        raise ArtifactError(
            f"{path} names {', '.join(foreign)}, outside Keras's {', '.join(BUILDING_BLOCKS)} and the imported modules "
            f"(a saved config can call any function it names); {TRUST_HINT}"
        )


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
    return {"code": code_layers(config), "custom_classes": classes, "unregistered_classes": unregistered(classes), "outside_allow_list": outside_allow_list(config)}


def _code_message(path: Path, code: list[str]) -> str:
    return f"{path} contains Python code ({', '.join(code)}), which Keras's safe_mode refuses to load; {TRUST_HINT}"


def _missing_message(path: Path, missing: list[str]) -> str:
    return f"{path} uses the custom class {', '.join(missing)}, which is not registered in this process: {IMPORT_HINT}"


def explain_load_failure(format_name: str, path: Path, error: Exception) -> str:
    """One line that says why a saved model did not load, and what to do about it."""
    config = saved_config(path)
    if config is not None:
        code = code_layers(config)
        if code and "safe_mode" in str(error):
            return _code_message(path, code)
        missing = unregistered(custom_classes(config))
        if missing:
            return _missing_message(path, missing)
    return unreadable(path, f"{format_name} artifact", error)
