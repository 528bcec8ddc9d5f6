"""Dotted `key=value` overrides of a (nested) config dataclass, for scripts and `compare --overrides`."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping


def apply_overrides(cfg, overrides: Mapping[str, str]) -> None:
    """Set `a.b.c` = literal value in place (`adapter.r=64`, `loss.kind=raw`); unknown keys raise."""
    for key, value in overrides.items():
        *path, last = key.split(".")
        obj = cfg
        for p in path:
            if not dataclasses.is_dataclass(obj) or not hasattr(obj, p):
                raise ValueError(f"unknown setting {key!r}")
            obj = getattr(obj, p)
        if not dataclasses.is_dataclass(obj) or last not in {f.name for f in dataclasses.fields(obj)}:
            raise ValueError(f"unknown setting {key!r}")
        try:
            v = ast.literal_eval(value) if isinstance(value, str) else value
        except (ValueError, SyntaxError):
            v = value  # a bare string such as `raw`
        setattr(obj, last, v)
        if hasattr(obj, "__post_init__"):
            obj.__post_init__()
