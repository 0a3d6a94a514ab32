"""Just enough JSON Schema to judge the checks' outputs (type, properties, required,
additionalProperties, enum, items), so labkit needs no validator package."""

from __future__ import annotations

from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {"object": (dict,), "array": (list,), "string": (str,),
                                       "integer": (int,), "number": (int, float), "boolean": (bool,),
                                       "null": (type(None),)}


def problems(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Why ``value`` does not validate against ``schema`` (empty when it does)."""
    want = schema.get("type")
    if want is not None:
        kinds = want if isinstance(want, list) else [want]
        # bool is an int in Python, but not an integer or number in JSON
        if isinstance(value, bool) and "boolean" not in kinds:
            return [f"{where}: true/false where {want} was expected"]
        if not any(isinstance(value, _TYPES.get(k, ())) for k in kinds):
            return [f"{where}: {type(value).__name__} {str(value)[:40]!r} where {want} was expected"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of {schema['enum']}"]
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{where}: missing required {k!r}" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties") is False:
            out += [f"{where}: unexpected {k!r}" for k in value if k not in props]
        for k, sub in props.items():
            if k in value:
                out += problems(value[k], sub, f"{where}.{k}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out += problems(item, schema["items"], f"{where}[{i}]")
    return out
