"""Request bodies, their validation, and errors in OpenAI's shape.

Every bad input is a 4xx answer `{"error": {"message", "type", "param", "code"}}` whose `param` names the
field (`messages.0.content`, `steer.sentiment`, `max_tokens`), never a crash and never a silent default:
unknown fields are refused (OpenAI does the same), types are strict (no "0.5" for 0.5, no 1 for true),
numbers must be finite and in range.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ApiError(Exception):
    """An HTTP error answered as OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _param(loc: tuple, data: Any, absent: bool) -> str:
    """The field a pydantic error location names, in the request's own terms: the keys and indices that exist
    in `data` (pydantic adds the type of each union member tried, e.g. `content.str`, which are dropped), plus
    the final key when it is missing or unknown (`absent`)."""
    parts, node = [], data
    for i, key in enumerate(loc):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
        elif absent and isinstance(node, dict) and i == len(loc) - 1:
            pass  # a missing or unknown key
        else:
            continue
        parts.append(str(key))
    return ".".join(parts)


def validation_error(e: ValidationError, data: Any) -> ApiError:
    """A problem pydantic found in `data`, as a 400 naming its field: the most specific one (of a union's
    members, the one that got furthest into the value)."""
    err = max(e.errors(include_url=False), key=lambda x: len(x["loc"]))
    param = _param(err["loc"], data, err["type"] in ("missing", "extra_forbidden"))
    if err["type"] == "extra_forbidden":
        return ApiError(400, f"unsupported field {param!r}: this server does not accept it", param)
    if err["type"] == "missing":
        return ApiError(400, f"{param} is required", param)
    got = err.get("input")
    shown = json.dumps(got)[:80] if isinstance(got, str | int | float | bool | type(None)) else type(got).__name__
    return ApiError(400, f"{param}: {err['msg']} (got {shown})", param)


_STRICT = ConfigDict(extra="forbid", strict=True)


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class _Common(BaseModel):
    model_config = _STRICT
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    user: str | None = None
    steer: Any = None  # checked against the served adapters by `resolve_steer`

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop strings, got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return v

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Common):
    prompt: str


class ScoreRequest(BaseModel):
    model_config = _STRICT
    adapter: str
    texts: list[str] = Field(min_length=1, max_length=64)


def parse_body(raw: bytes, cls: type[BaseModel]) -> Any:
    """A request body as `cls`: JSON (an object), then the model's checks; a 400 naming the field if not."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})", "body") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}", "body")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise validation_error(e, data) from None


@dataclass(frozen=True)
class AdapterLimit:
    """A served adapter's name and the largest |c| a request may give it."""

    name: str
    max_abs_c: float


def _number(v: Any, param: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ApiError(400, f"{param} must be a number, got {json.dumps(v)[:40] if _jsonable(v) else type(v).__name__}",
                       param)
    if not math.isfinite(v):
        raise ApiError(400, f"{param} must be a finite number, got {v}", param)
    return float(v)


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def resolve_steer(steer: Any, adapters: list[AdapterLimit]) -> tuple[float, ...]:
    """A request's `steer` as one coefficient per served adapter (in `adapters` order; those left out at 0).

    `steer` is an object {adapter name: c}, or a bare number when exactly one adapter is served, or absent.
    Unknown names, non-numbers, non-finite values and |c| above the adapter's limit are 400s naming the
    entry (`steer.<name>`)."""
    names = [a.name for a in adapters]
    out = dict.fromkeys(names, 0.0)
    if steer is None:
        return tuple(out.values())
    if isinstance(steer, dict):
        items = list(steer.items())
    elif isinstance(steer, int | float) and not isinstance(steer, bool):
        if len(names) != 1:
            raise ApiError(400, f"steer: a bare number needs exactly one served adapter, this server has "
                           f"{names or 'none'}; give coefficients by name, e.g. {{\"{(names or ['name'])[0]}\": 0.5}}",
                           "steer")
        items = [(names[0], steer)]
    else:
        raise ApiError(400, "steer must be an object {adapter name: coefficient} (or a bare number when one "
                       f"adapter is served), got {type(steer).__name__}", "steer")
    limits = {a.name: a.max_abs_c for a in adapters}
    for name, v in items:
        param = f"steer.{name}"
        if name not in limits:
            raise ApiError(400, f"unknown adapter {name!r} in steer; served adapters: {names or 'none'}", param)
        c = _number(v, param)
        if abs(c) > limits[name]:
            raise ApiError(400, f"{param} = {c:g} is outside [-{limits[name]:g}, {limits[name]:g}], the range this "
                           "server allows for it (--max-abs-c)", param)
        out[name] = c
    return tuple(out.values())
