"""User code named in a config: `_target_` callables and the `imports` modules.

A `_target_` is `package.module:name` or `package.module.name`, as Hydra writes it.
Each problem is one line naming the config key, so a typo is found before any data
is loaded, and the arguments a config passes are checked against the signature.
"""

import importlib
import inspect
from typing import Any, Callable

from pipeline.errors import ConfigError


def import_module(name: str, key: str, value: str = ""):
    """Import `name`; `key=value` is what the user wrote, for the error line."""
    value = value or name
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        missing = error.name or name
        hint = "; is its folder on PYTHONPATH?" if missing == name.split(".")[0] else ""
        raise ConfigError(f"{key}={value}: no module named {missing!r}{hint}") from None
    except Exception as error:  # the module itself fails as it is imported
        raise ConfigError(f"{key}={value}: importing {name} raised {type(error).__name__}: {' '.join(str(error).split())[:200]}") from error


def import_modules(names: list[str]) -> None:
    """Import the config's `imports`, so the classes they register resolve wherever models are built or loaded."""
    for name in names:
        import_module(name, "imports")


def resolve(target: str, key: str) -> Callable:
    """The callable `target` names: `a.b:c` (attribute `c` of module `a.b`, or `c.d` nested in it), or `a.b.c`."""
    if ":" in target:
        module_name, attribute = target.split(":", 1)
    else:
        module_name, _, attribute = target.rpartition(".")
        if not module_name:
            raise ConfigError(f"{key}={target}: name a function in a module, e.g. my_pkg.models:build")
    module = import_module(module_name, key, target)
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__)
            raise ConfigError(f"{key}={target}: module {module_name} has no {attribute!r}; it defines: {', '.join(public) or 'nothing callable'}")
        found = getattr(found, part)
    if not callable(found):
        raise ConfigError(f"{key}={target}: {attribute} in {module_name} is a {type(found).__name__}, not a function or class")
    return found


def check_arguments(fn: Callable, arguments: dict, supplied: tuple, key: str, target: str) -> None:
    """Refuse arguments `fn` does not take, and a missing required one, naming those it takes.

    `supplied` are the arguments the pipeline passes itself (e.g. input_shape).
    """
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in supplied]
    for name in arguments:
        if name not in accepted:
            raise ConfigError(f"{key}.{name}: {target} takes no argument {name!r}; it takes: {', '.join(accepted) or 'none besides ' + ', '.join(supplied)}")
    for name in supplied:
        if name not in parameters:
            raise ConfigError(f"{key}._target_={target}: it must take the argument {name!r}, which the pipeline passes")
    required = [n for n in accepted if parameters[n].default is inspect.Parameter.empty and n not in arguments]
    if required:
        raise ConfigError(f"{key}: {target} needs {', '.join(required)}; set {' '.join(f'+{key}.{n}=...' for n in required)}")
