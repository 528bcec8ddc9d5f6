"""The HTTP side: FastAPI routes in OpenAI's shapes, server-sent events, limits, the playground page.

Routes: `GET /v1/models` (the model and each adapter: concept, trained range, allowed |c|, sha256),
`POST /v1/chat/completions` and `POST /v1/completions` (OpenAI's fields plus `steer`), `POST /score` (the
concept scorer, for the playground), `GET /stats` (engine counters), `GET /health`, and `GET /` (the
playground). With an API key every route but `/` and `/health` needs `Authorization: Bearer <key>`.
Bodies over the size limit get 413 before they are read whole; a full queue gets 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from innerpissa.serve.engine import Engine, Event, GenRequest, Handle, QueueFull
from innerpissa.serve.prompt import render_chat, render_prompt
from innerpissa.serve.schema import (
    AdapterLimit,
    ApiError,
    ChatRequest,
    CompletionRequest,
    ScoreRequest,
    parse_body,
    resolve_steer,
)

#: max_tokens of a completion request that gives none (OpenAI's default for /v1/completions)
COMPLETION_DEFAULT_TOKENS = 16


@dataclass
class AdapterInfo:
    """A served adapter as `/v1/models` describes it."""

    name: str
    path: str
    concept: str | None
    coeff_range: tuple[float, float] | None
    max_abs_c: float
    sha256: str
    scorer: str | None = None

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "concept": self.concept,
                "coeff_range": list(self.coeff_range) if self.coeff_range else None,
                "max_abs_c": self.max_abs_c, "sha256": self.sha256, "scorer": self.scorer}


@dataclass
class Served:
    """What the server serves and its per-request limits."""

    model_id: str
    tokenizer: Any
    adapters: list[AdapterInfo]
    context: int
    max_tokens: int
    default_system: str = ""
    scorers: dict[str, Any] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def limits(self) -> list[AdapterLimit]:
        return [AdapterLimit(a.name, a.max_abs_c) for a in self.adapters]


# ---------------------------------------------------------------------------------------------- limits


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 (declared length checked first, then the
    bytes as they arrive); a body within it is read once and replayed to the app."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                return await _send_error(send, ApiError(400, "invalid Content-Length header", "body"))
            if n > self.max_bytes:
                return await _send_error(send, self._too_large(n))
        body, more = b"", True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _send_error(send, self._too_large(len(body)))
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _too_large(self, n: int) -> ApiError:
        return ApiError(413, f"the request body is {n} bytes, over this server's limit of {self.max_bytes} "
                        "(--max-body-bytes)", "body")


async def _send_error(send, err: ApiError) -> None:
    payload = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class _EventStream(StreamingResponse):
    """Server-sent events whose request is cancelled however the response ends (a client that goes away
    mid-stream frees its row at the engine's next step)."""

    def __init__(self, content: AsyncIterator[str], handle: Handle):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.handle = handle

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.handle.cancel()


# ---------------------------------------------------------------------------------------------- requests


def _max_tokens(asked: int | None, param: str, n_prompt: int, served: Served, default: int,
                prompt_param: str) -> int:
    """The request's token budget, checked against the per-request limit and the context."""
    room = served.context - n_prompt
    if room <= 0:
        raise ApiError(400, f"the prompt is {n_prompt} tokens, which leaves no room in this model's context of "
                       f"{served.context} tokens; shorten it", prompt_param, code="context_length_exceeded")
    if asked is None:
        return min(default, served.max_tokens, room)
    if asked > served.max_tokens:
        raise ApiError(400, f"{param} = {asked} is above this server's per-request limit of {served.max_tokens} "
                       "(--max-tokens)", param)
    if asked > room:
        raise ApiError(400, f"{param} = {asked} with a prompt of {n_prompt} tokens exceeds this model's context of "
                       f"{served.context} tokens; ask for at most {room}", param, code="context_length_exceeded")
    return asked


def _check_model(served: Served, model: str) -> None:
    if model != served.model_id:
        raise ApiError(404, f"model {model!r} is not served here; this server serves {served.model_id!r} "
                       "(GET /v1/models)", "model", code="model_not_found")


def chat_request(req: ChatRequest, served: Served) -> GenRequest:
    """A chat body as an engine request (roles, context, limits and coefficients checked)."""
    _check_model(served, req.model)
    msgs = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        if role == "system" and i > 0:
            raise ApiError(400, f"messages.{i}: a system message may only come first", f"messages.{i}.role")
        msgs.append((role, m.text()))
    if msgs[-1][0] != "user":
        raise ApiError(400, f"messages.{len(msgs) - 1}: the last message must be the user's, got "
                       f"{msgs[-1][0]!r}", f"messages.{len(msgs) - 1}.role")
    ids = render_chat(served.tokenizer, msgs)
    asked, param = req.max_tokens, "max_tokens"
    if req.max_completion_tokens is not None:
        if asked is not None and asked != req.max_completion_tokens:
            raise ApiError(400, f"max_tokens ({asked}) and max_completion_tokens ({req.max_completion_tokens}) "
                           "differ; give one", "max_completion_tokens")
        asked, param = req.max_completion_tokens, "max_completion_tokens"
    n = _max_tokens(asked, param, len(ids), served, served.max_tokens, "messages")
    return GenRequest(ids, resolve_steer(req.steer, served.limits), n, req.temperature, req.top_p, req.seed,
                      req.stops())


def completion_request(req: CompletionRequest, served: Served) -> GenRequest:
    _check_model(served, req.model)
    if not req.prompt:
        raise ApiError(400, "prompt must not be empty", "prompt")
    ids = render_prompt(served.tokenizer, req.prompt)
    n = _max_tokens(req.max_tokens, "max_tokens", len(ids), served, COMPLETION_DEFAULT_TOKENS, "prompt")
    return GenRequest(ids, resolve_steer(req.steer, served.limits), n, req.temperature, req.top_p, req.seed,
                      req.stops())


def _event_error(ev: Event) -> ApiError:
    kind = {504: "timeout", 503: "server_busy", 499: "cancelled"}.get(ev.status, "server_error")
    return ApiError(ev.status, ev.text, None, kind)


def _usage(ev: Event) -> dict[str, int]:
    return {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens,
            "total_tokens": ev.prompt_tokens + ev.completion_tokens}


async def _watch_disconnect(request: Request, handle: Handle) -> None:
    """Cancel `handle` when the client of a non-streaming request goes away."""
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            handle.cancel()
            return


def create_app(served: Served, engine: Engine, api_key: str | None = None, max_body_bytes: int = 1 << 20) -> FastAPI:
    """The FastAPI app serving `served` through `engine` (started and stopped with the app)."""

    @asynccontextmanager
    async def lifespan(_app):
        if not engine.alive:
            engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="innerpissa", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    steer_names = [a.name for a in served.adapters]

    @app.exception_handler(ApiError)
    async def _api_error(_request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, e: StarletteHTTPException):
        return JSONResponse(ApiError(e.status_code, str(e.detail), None).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _crash(_request, e: Exception):
        return JSONResponse(ApiError(500, f"internal error: {type(e).__name__}", None, "server_error").body(),
                            status_code=500)

    def auth(request: Request) -> None:
        if api_key is None:
            return
        got = request.headers.get("authorization", "")
        if not (got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), api_key.encode())):
            raise ApiError(401, "missing or wrong API key: send the header Authorization: Bearer <key>", None,
                           code="invalid_api_key")

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(resources.files("innerpissa.serve").joinpath("static/playground.html")
                            .read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request):
        auth(request)
        return {"object": "list", "data": [{
            "id": served.model_id, "object": "model", "created": served.created, "owned_by": "innerpissa",
            "context_length": served.context, "max_tokens": served.max_tokens,
            "default_system": served.default_system, "adapters": [a.public() for a in served.adapters]}]}

    @app.get("/stats")
    async def stats(request: Request):
        auth(request)
        return engine.snapshot()

    @app.post("/score")
    async def score(request: Request):
        auth(request)
        req = parse_body(await request.body(), ScoreRequest)
        info = next((a for a in served.adapters if a.name == req.adapter), None)
        if info is None:
            raise ApiError(400, f"unknown adapter {req.adapter!r}; served adapters: {steer_names}", "adapter")
        if info.scorer is None:
            raise ApiError(400, f"adapter {req.adapter!r} (concept {info.concept!r}) has no scorer", "adapter")
        scorer = served.scorers[info.name]
        return {"adapter": info.name, "scorer": info.scorer, "scores": [float(x) for x in scorer(req.texts)]}

    async def run(request: Request, gen: GenRequest, stream: bool, include_usage: bool, chat: bool):
        try:
            handle = engine.submit(gen, asyncio.get_running_loop())
        except QueueFull as e:
            raise ApiError(503, str(e), None, "server_busy", headers={"Retry-After": str(e.retry_after)}) from None
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        steer = dict(zip(steer_names, gen.coeffs, strict=True))
        obj = "chat.completion" if chat else "text_completion"
        if stream:
            return _EventStream(_sse(handle, rid, created, steer, include_usage, chat), handle)
        watcher = asyncio.create_task(_watch_disconnect(request, handle))
        parts: list[str] = []
        try:
            while True:
                ev = await handle.events.get()
                if ev.kind == "error":
                    raise _event_error(ev)
                parts.append(ev.text)
                if ev.kind == "done":
                    break
        finally:
            watcher.cancel()
            handle.cancel()
        text = "".join(parts)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                   "finish_reason": ev.finish_reason} if chat else
                  {"index": 0, "text": text, "logprobs": None, "finish_reason": ev.finish_reason})
        return {"id": rid, "object": obj, "created": created, "model": served.model_id, "choices": [choice],
                "usage": _usage(ev), "steer": steer}

    async def _sse(handle: Handle, rid: str, created: int, steer: dict, include_usage: bool,
                   chat: bool) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None, role: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            body = {"id": rid, "object": obj, "created": created, "model": served.model_id, "choices": [choice],
                    "steer": steer}
            return f"data: {json.dumps(body)}\n\n"

        if chat:
            yield chunk(None, None, role=True)
        while True:
            ev = await handle.events.get()
            if ev.kind == "error":
                yield f"data: {json.dumps(_event_error(ev).body())}\n\n"
                return
            if ev.text:
                yield chunk(ev.text, None)
            if ev.kind == "done":
                yield chunk(None, ev.finish_reason)
                if include_usage:
                    body = {"id": rid, "object": obj, "created": created, "model": served.model_id, "choices": [],
                            "usage": _usage(ev)}
                    yield f"data: {json.dumps(body)}\n\n"
                yield "data: [DONE]\n\n"
                return

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        auth(request)
        req = parse_body(await request.body(), ChatRequest)
        gen = chat_request(req, served)
        usage = bool(req.stream_options and req.stream_options.include_usage)
        return await run(request, gen, req.stream, usage, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        auth(request)
        req = parse_body(await request.body(), CompletionRequest)
        gen = completion_request(req, served)
        usage = bool(req.stream_options and req.stream_options.include_usage)
        return await run(request, gen, req.stream, usage, chat=False)

    return app
