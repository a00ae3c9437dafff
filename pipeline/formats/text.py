"""Values as text for `inspect`: JSON that stays readable when a config is long."""

import json
from typing import Any


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


def value_text(value: Any, indent: str) -> str:
    return value if isinstance(value, str) else pretty_json(value, indent)
