"""Typed JSON: dataclasses to plain JSON values and back, and their JSON Schema, driven by the
type hints (the run's tables in `run.py` are written and read through here)."""
from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np

from .heads import HeadSpec


def to_json(obj: Any) -> Any:
    if isinstance(obj, HeadSpec):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def from_json(tp: Any, value: Any) -> Any:
    """`value` (parsed JSON) as type `tp`: dataclasses field by field, containers recursively."""
    origin = get_origin(tp)
    if value is None:
        return None
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in get_args(tp) if a is not type(None)][:1] or (Any,)
        return from_json(inner, value)
    if origin is list:
        (inner,) = get_args(tp)
        return [from_json(inner, v) for v in _expect(value, list)]
    if origin is dict:
        _, inner = get_args(tp)
        return {k: from_json(inner, v) for k, v in _expect(value, dict).items()}
    if tp is HeadSpec:
        return HeadSpec.from_dict(value)
    if dataclasses.is_dataclass(tp):
        hints = get_type_hints(tp)
        value = _expect(value, dict)
        return tp(**{f.name: from_json(hints[f.name], value[f.name])
                     for f in dataclasses.fields(tp) if f.init and f.name in value})
    if tp in (int, float, str, bool):
        if tp is float and isinstance(value, int):
            return float(value)
        return _expect(value, tp)
    return value


def _expect(value: Any, tp: type) -> Any:
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise TypeError(f"expected {tp.__name__}, got {type(value).__name__} {value!r:.40}")
    return value


def json_schema(tp: Any) -> dict:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return {"anyOf": [json_schema(a) for a in get_args(tp)]}
    if tp is type(None):
        return {"type": "null"}
    if origin is list:
        return {"type": "array", "items": json_schema(get_args(tp)[0])}
    if origin is tuple:
        return {"type": "array"}
    if origin is dict:
        return {"type": "object", "additionalProperties": json_schema(get_args(tp)[1])}
    if tp is HeadSpec:
        return {"type": "object", "required": ["name", "hidden", "dropout", "options"],
                "properties": {"name": {"type": "string"},
                               "hidden": {"type": "array", "items": {"type": "integer"}},
                               "dropout": {"type": "number"}, "options": {"type": "object"}}}
    if dataclasses.is_dataclass(tp):
        hints = get_type_hints(tp)
        fields = [f for f in dataclasses.fields(tp) if f.init]
        return {"type": "object", "required": [f.name for f in fields],
                "properties": {f.name: json_schema(hints[f.name]) for f in fields}}
    simple = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object",
              list: "array"}
    return {"type": simple[tp]} if tp in simple else {}


__all__ = ["from_json", "json_schema", "to_json"]
