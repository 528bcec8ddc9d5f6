"""`innerpissa serve`: options, loading the model and its adapters, and running uvicorn.

    innerpissa serve --adapter sentiment=runs/sentiment/adapter [--model smollm2 --port 8000]

Binds 127.0.0.1 unless told otherwise; any other address needs `--api-key` (or $INNERPISSA_API_KEY).
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from innerpissa.errors import InputError

API_KEY_ENV = "INNERPISSA_API_KEY"
LOOPBACK_NAMES = ("localhost",)


@dataclass
class Serve:
    """Serve a model with named adapters over an OpenAI-compatible HTTP API (a steering coefficient per
    request: "steer": {"sentiment": 0.8}) and a browser playground at http://HOST:PORT/."""

    adapter: tuple[str, ...] = ()
    """Adapters to serve, each NAME=PATH (an adapter folder written by `innerpissa train`); a bare PATH is
    named after the concept it was trained on."""
    model: str | None = None
    """Base model (default: the one the first adapter records)."""
    host: str = "127.0.0.1"
    """Address to bind; anything but loopback needs --api-key."""
    port: int = 8000
    """TCP port."""
    api_key: str | None = None
    """Require `Authorization: Bearer <key>` (default: $INNERPISSA_API_KEY; none on loopback)."""
    max_abs_c: float | None = None
    """Largest |c| a request may give any adapter (default: twice the range each was trained on)."""
    max_batch: int = 16
    """Rows decoded together at most (requests beyond wait in the queue)."""
    max_queue: int = 64
    """Requests that may wait for a row; more are answered 503 with Retry-After."""
    max_tokens: int = 512
    """Per-request limit (and default) of max_tokens for chat completions."""
    timeout: float = 300.0
    """Seconds a request may take from arrival to its last token, queueing included."""
    max_context: int | None = None
    """Prompt + completion tokens at most (default: the model's max_position_embeddings)."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted (larger: 413)."""
    name: str | None = None
    """Model id clients send in `model` (default: the --model value)."""
    log_level: str = "info"
    """uvicorn's log level."""
    threads: int | None = None
    """Torch CPU threads for the model (default: torch's, one per core)."""

    def check(self) -> None:
        """Options that fail before any model is loaded."""
        key = self.api_key or os.environ.get(API_KEY_ENV) or None
        if not is_loopback(self.host) and not key:
            raise InputError(f"refusing to listen on {self.host} without an API key: pass --api-key KEY (or set "
                             f"${API_KEY_ENV}); only 127.0.0.1/localhost may be served without one")
        if self.max_abs_c is not None and not (math.isfinite(self.max_abs_c) and self.max_abs_c > 0):
            raise InputError(f"--max-abs-c must be a positive finite number, got {self.max_abs_c}")
        for flag, v in (("--max-batch", self.max_batch), ("--max-tokens", self.max_tokens),
                        ("--max-body-bytes", self.max_body_bytes)):
            if v < 1:
                raise InputError(f"{flag} must be at least 1, got {v}")
        if self.max_queue < 0 or not self.timeout > 0 or not 0 <= self.port < 65536:
            raise InputError("--max-queue must be >= 0, --timeout > 0 and --port in 0..65535")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be at least 1, got {self.threads}")
        if self.max_context is not None and self.max_context < 2:
            raise InputError(f"--max-context must be at least 2, got {self.max_context}")
        adapter_specs(self.adapter)

    def run(self) -> None:
        try:
            import fastapi  # noqa: F401
            import uvicorn
        except ImportError as e:
            raise InputError(f"`innerpissa serve` needs the serve extra ({e}): pip install 'innerpissa[serve]'") from e
        self.check()
        app = build_app(self)
        uvicorn.run(app, host=self.host, port=self.port, log_level=self.log_level)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def adapter_specs(specs) -> list[tuple[str | None, Path]]:
    """(name or None, folder) for each --adapter NAME=PATH or PATH; checked for format, existence, clashes."""
    from innerpissa.adapter.stack import check_adapter_name

    out: list[tuple[str | None, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = None, spec
        elif not name or not path:
            raise InputError(f"--adapter {spec!r}: give NAME=PATH, e.g. sentiment=runs/sentiment/adapter")
        if name is not None:
            try:
                check_adapter_name(name)
            except ValueError as e:
                raise InputError(f"--adapter {spec!r}: {e}") from None
        if not Path(path).is_dir():
            raise InputError(f"--adapter {spec!r}: {path} is not a folder; give an adapter folder written by "
                             "`innerpissa train` (runs/<name>/adapter)")
        out.append((name, Path(path)))
    named = [n for n, _ in out if n is not None]
    if len(set(named)) != len(named):
        raise InputError(f"--adapter: each name may be used once, got {named}")
    return out


def adapter_concept(meta: dict) -> str | None:
    """The built-in concept an adapter was trained on (None for custom pairs or an adapter saved by hand)."""
    data = ((meta.get("extra") or {}).get("config") or {}).get("data") or {}
    if data.get("pairs_file") or data.get("personas_file"):
        return None
    return data.get("builtin")


def build_app(opts: Serve, model=None, tokenizer=None):
    """Load (unless given) the model, load the adapters, and return the FastAPI app with its engine (started
    with the app). A model passed in must be the one named by --model."""
    from innerpissa.adapter import load_adapter, read_adapter_meta
    from innerpissa.adapter.io import WEIGHTS_NAME, file_sha256
    from innerpissa.eval.decode import can_decode_sweep
    from innerpissa.eval.gen_metrics import CONCEPT_SCORERS, SCORERS
    from innerpissa.eval.generation import eos_ids
    from innerpissa.models import load_model
    from innerpissa.serve.app import AdapterInfo, Served, create_app
    from innerpissa.serve.engine import Engine
    from innerpissa.serve.prompt import DEFAULT_SYSTEM

    opts.check()
    if opts.threads is not None:
        import torch

        torch.set_num_threads(opts.threads)
    specs = adapter_specs(opts.adapter)
    metas = [read_adapter_meta(p) for _, p in specs]
    named = []
    for (name, path), meta in zip(specs, metas, strict=True):
        if name is None:
            name = adapter_concept(meta)
            if name is None:
                raise InputError(f"--adapter {path}: it records no built-in concept to name it after; give NAME=PATH")
        named.append((name, path, meta))
    if len({n for n, _, _ in named}) != len(named):
        raise InputError(f"--adapter: two adapters would share a name ({[n for n, _, _ in named]}); give NAME=PATH")
    model_name = opts.model or ((metas[0].get("base_model") or {}).get("name_or_path") if metas else None) or "smollm2"
    if model is None:
        model, tokenizer = load_model(model_name)
    if not can_decode_sweep(model):
        raise InputError(f"model {model_name!r} has no plain decoder-blocks layout with a linear output head, which "
                         "the server's batched decoder needs (Llama, Qwen, Mistral, SmolLM2 have it)")
    infos = []
    for name, path, meta in named:
        load_adapter(model, path, name=name)
        rng = tuple(float(x) for x in meta["coeff_range"]) if meta.get("coeff_range") else None
        limit = opts.max_abs_c if opts.max_abs_c is not None else (2 * max(abs(x) for x in rng) if rng else 2.0)
        concept = adapter_concept(meta)
        # the concept's headline scorer (sentiment: VADER); SCORERS is keyed by scorer name, not by concept
        spec = CONCEPT_SCORERS.get(concept, (None,))[0] if concept else None
        scorer = SCORERS[spec].name if spec in SCORERS else None
        infos.append(AdapterInfo(name, str(path), concept, rng, float(limit), file_sha256(path / WEIGHTS_NAME),
                                 scorer))
    model.eval()
    ctx = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    if opts.max_context is not None:
        ctx = min(ctx, opts.max_context)
    scorers = {a.name: SCORERS[CONCEPT_SCORERS[a.concept][0]]() for a in infos if a.scorer}
    served = Served(opts.name or model_name, tokenizer, infos, ctx, opts.max_tokens, DEFAULT_SYSTEM, scorers)
    engine = Engine(model, tokenizer, [a.name for a in infos], eos_ids(model, tokenizer), opts.max_batch,
                    opts.max_queue, opts.timeout)
    key = opts.api_key or os.environ.get(API_KEY_ENV) or None
    return create_app(served, engine, key, opts.max_body_bytes)


@contextmanager
def background(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Run `app` with uvicorn on a thread of this process (tests, notebooks, benchmarks); yields its base URL
    (port 0: a free port) and stops the server, and with it the engine, on exit."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="innerpissa-uvicorn", daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - t0 > 60:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        if thread.is_alive():  # a connection that would not close: stop waiting for it
            server.force_exit = True
            thread.join(timeout=30)
        sock.close()
