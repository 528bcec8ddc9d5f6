"""The engine: one thread that owns the model and runs every request through a continuous batch.

`submit` puts a validated request in a bounded queue (full: `QueueFull`, which the app answers with 503 and
Retry-After) and returns a `Handle` on which the request's events arrive, on the caller's asyncio loop. The
thread loops over steps: requests waiting in the queue join the running rows (up to `max_batch` rows, all
newcomers of a step prefilled together), each row takes its next token, rows that are done (end of
sequence, a stop string, `max_tokens`, cancelled by the client, past their deadline) leave, and the rest
take one decode step together. A failing step fails the rows it ran (status 500) and the engine goes on.

Nothing else touches the model: the server never runs two `steer` contexts at once, so it keeps `steer`'s
one-thread-per-model contract (another thread's `steer` would raise `SteeringConflict`); requests run
concurrently as rows of one batch with per-row coefficients, not as threads.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import secrets
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field

import torch

from innerpissa.serve.batch import Batch
from innerpissa.serve.sampling import TextStream, next_token

log = logging.getLogger("innerpissa.serve")
#: cache columns reserved ahead when rows join (more are added, doubling, when a row needs them)
ROOM = 128


@dataclass
class GenRequest:
    """A validated request: prompt token ids, one coefficient per served adapter, sampling settings."""

    ids: list[int]
    coeffs: tuple[float, ...]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Event:
    """What the engine tells a request's caller: new text, the end (`finish_reason` "stop" or "length",
    with token counts), or an error (HTTP status and message)."""

    kind: str  # "text" | "done" | "error"
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: int = 0


class QueueFull(Exception):
    """The engine's queue is full; `retry_after` seconds is a guess at when a place frees up."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"the server is busy ({waiting} requests waiting); retry in {retry_after} s")
        self.retry_after = retry_after


class Handle:
    """The caller's side of a request: `events` (an asyncio queue filled from the engine thread) and
    `cancel()` (the row is freed at the next step boundary)."""

    def __init__(self, req: GenRequest, loop: asyncio.AbstractEventLoop, deadline: float):
        self.req, self.loop, self.deadline = req, loop, deadline
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False
        self.finished = False

    def cancel(self) -> None:
        self.cancelled = True

    def _send(self, ev: Event) -> None:
        if ev.kind != "text":
            self.finished = True
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, ev)
        except RuntimeError:  # the caller's loop is closed: nobody is listening any more
            pass


@dataclass
class _Row:
    handle: Handle
    stream: TextStream
    generator: torch.Generator | None
    n_out: int = 0


@dataclass
class EngineStats:
    steps: int = 0
    tokens: int = 0
    batch_sizes: Counter = field(default_factory=Counter)
    finished: Counter = field(default_factory=Counter)
    request_seconds: deque = field(default_factory=lambda: deque(maxlen=64))


class Engine:
    """Runs `model` on one thread for requests submitted from any asyncio loop.

    `names`: the served adapters in the order of a request's coefficient tuple. `max_batch` rows decode
    together at most; `max_queue` requests may wait for a row; `timeout` seconds is each request's limit
    from submission to its last token."""

    def __init__(self, model, tokenizer, names: list[str], eos: set[int], max_batch: int = 16,
                 max_queue: int = 64, timeout: float = 120.0):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model, self.names, self.eos = model, list(names), set(eos)
        self.tok = copy.deepcopy(tokenizer)  # its own copy: the app's threads encode with the original
        self.max_batch, self.max_queue, self.timeout = max_batch, max_queue, timeout
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.batch = Batch(model, self.names, pad)
        self.rows: list[_Row] = []
        self.waiting: deque[Handle] = deque()
        self.stats = EngineStats()
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="innerpissa-engine", daemon=True)

    # ------------------------------------------------------------------ caller side (any thread)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread after its current step; requests still waiting or running get a 503."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join()

    def submit(self, req: GenRequest, loop: asyncio.AbstractEventLoop) -> Handle:
        with self._cv:
            if self._stop:
                raise QueueFull(len(self.waiting), 5)
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(len(self.waiting), self.retry_after())
            h = Handle(req, loop, time.monotonic() + self.timeout)
            self.waiting.append(h)
            self._cv.notify()
        return h

    def retry_after(self) -> int:
        """Seconds until a queue place is likely free: the waiting requests' share of the batch times the
        recent mean request time (at least 1)."""
        times = self.stats.request_seconds
        mean = sum(times) / len(times) if times else 1.0
        return max(1, math.ceil(mean * (len(self.waiting) + 1) / self.max_batch))

    def snapshot(self) -> dict:
        """Counters for monitoring and the benchmark (read without stopping the engine)."""
        s = self.stats
        sizes = dict(sorted(s.batch_sizes.items()))
        return {"running": len(self.rows), "waiting": len(self.waiting), "steps": s.steps, "tokens": s.tokens,
                "max_batch_reached": max(sizes, default=0), "batch_sizes": sizes,
                "mean_batch": (sum(k * v for k, v in sizes.items()) / s.steps) if s.steps else 0.0,
                "finished": dict(s.finished), "cache_rows": len(self.batch), "max_batch": self.max_batch,
                "max_queue": self.max_queue}

    # ------------------------------------------------------------------ the engine thread

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self.waiting and not self.rows:
                    self._cv.wait()
                if self._stop:
                    break
            try:
                self._iteration()
            except Exception as e:  # a bug or out of memory: fail what ran, keep serving
                log.error("engine step failed: %s\n%s", e, traceback.format_exc())
                for r in self.rows:
                    self._end(r, Event("error", status=500, text=f"internal error in the engine: {e}"))
                self.rows = []
                self.batch.keep([])
        for r in self.rows:
            self._end(r, Event("error", status=503, text="the server is shutting down"))
        with self._cv:
            while self.waiting:
                self.waiting.popleft()._send(Event("error", status=503, text="the server is shutting down"))

    def _admit(self) -> list[Handle]:
        """Waiting requests that take the free rows (those cancelled or past their deadline are answered)."""
        out: list[Handle] = []
        now = time.monotonic()
        with self._cv:
            while self.waiting and len(self.rows) + len(out) < self.max_batch:
                h = self.waiting.popleft()
                if h.cancelled:
                    self.stats.finished["cancelled"] += 1
                    h._send(Event("error", status=499, text="cancelled by the client"))
                elif now > h.deadline:
                    self.stats.finished["timeout"] += 1
                    h._send(Event("error", status=504, text=f"timed out after {self.timeout:g} s in the queue"))
                else:
                    out.append(h)
        return out

    def _room(self, handles: list[Handle]) -> int:
        """Cache columns to reserve at a join: the most tokens a row still needs, at most ROOM (a longer row
        makes its layer's buffer grow, doubling, when it gets there)."""
        left = [r.handle.req.max_tokens - r.n_out for r in self.rows] + [h.req.max_tokens for h in handles]
        return min(max(left, default=1) + 1, ROOM)

    def _iteration(self) -> None:
        new = self._admit()
        if new:
            try:
                self.batch.join([h.req.ids for h in new], [h.req.coeffs for h in new], self._room(new))
            except Exception as e:
                log.error("prefill failed: %s\n%s", e, traceback.format_exc())
                for h in new:
                    self.stats.finished["error"] += 1
                    h._send(Event("error", status=500, text=f"internal error in the prefill: {e}"))
                new = []
            for h in new:
                gen = None
                if h.req.temperature > 0:
                    gen = torch.Generator().manual_seed(h.req.seed if h.req.seed is not None
                                                        else secrets.randbits(63))
                self.rows.append(_Row(h, TextStream(self.tok, h.req.stop), gen))
        if not self.rows:
            return
        now, keep, toks = time.monotonic(), [], []
        logits = self.batch.logits
        for i, r in enumerate(self.rows):
            req = r.handle.req
            if r.handle.cancelled:  # told so, the caller stops waiting (a stream's caller is already gone)
                self.stats.finished["cancelled"] += 1
                r.handle._send(Event("error", status=499, text="cancelled by the client"))
                continue
            if now > r.handle.deadline:
                self._end(r, Event("error", status=504, text=f"timed out after {self.timeout:g} s"))
                continue
            t = next_token(logits[i], req.temperature, req.top_p, r.generator)
            if t in self.eos:
                self._end(r, self._done(r, "stop", r.stream.finish()))
                continue
            r.n_out += 1
            self.stats.tokens += 1
            text, stopped = r.stream.push(t)
            if stopped:
                self._end(r, self._done(r, "stop", text))
            elif r.n_out >= req.max_tokens:
                self._end(r, self._done(r, "length", text + r.stream.finish()))
            else:
                if text:
                    r.handle._send(Event("text", text))
                keep.append(i)
                toks.append(t)
        self.rows = [self.rows[i] for i in keep]
        self.batch.keep(keep)
        if self.rows:
            self.stats.steps += 1
            self.stats.batch_sizes[len(self.rows)] += 1
            self.batch.step(toks)

    def _done(self, r: _Row, reason: str, text: str) -> Event:
        return Event("done", text, reason, len(r.handle.req.ids), r.n_out)

    def _end(self, r: _Row, ev: Event) -> None:
        self.stats.finished[ev.finish_reason or {504: "timeout"}.get(ev.status, "error")] += 1
        if ev.kind == "done":
            self.stats.request_seconds.append(time.monotonic() - (r.handle.deadline - self.timeout))
        r.handle._send(ev)
