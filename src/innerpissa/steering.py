"""The one interface every steering method implements: "a thing that puts the model in state c".

The evaluation harness sweeps any `Steerer` over its coefficients without knowing what it is: the
InnerPiSSA adapter, a steering vector added to the residual stream, or a persona in the system prompt.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor


class Steerer(ABC):
    """Puts a model in steering state `c` (c = 0 is always the unsteered base model).

    Subclasses implement `at(c)`, a context manager that applies the state and always undoes it, and may
    override `system_prompt(c, default)` when the method works through the prompt (prompting baselines).
    """

    #: short name used in tables and plots
    name: str = "steerer"
    #: the coefficients a sweep uses when none are given
    default_coeffs: Sequence[float] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    #: whether `at` also accepts a 1-D tensor with one coefficient per batch row (a sweep then runs every
    #: coefficient in one batched pass)
    per_row_coeffs: bool = False
    #: whether `at(c)` leaves the model untouched and c acts only through `system_prompt` (prompting): every
    #: coefficient's rows can then share one batch, each with its own system message
    prompt_only: bool = False
    #: the push at which sign calibration probes the steerer (unit vectors: one mean persona difference)
    calibration_coeff: float = 1.0
    #: whether `default_coeffs` are the only states (prompting: -1, 0, +1), so there is no strength to choose:
    #: a fair-match protocol takes each side's one state and reports its fluency cost
    fixed_states: bool = False

    @abstractmethod
    def at(self, c: float):  # -> ContextManager[None]
        """Context manager: inside it, the model is in state `c`."""

    def system_prompt(self, c: float, default: str) -> str:
        """The system message to use at coefficient `c` (weight-space methods keep the default)."""
        return default

    def first_steered_block(self, model) -> int:
        """The lowest decoder block whose computation `at(c)` can change; blocks below it are shared by every
        coefficient of a sweep (computed once). 0, the safe default, shares nothing."""
        return 0

    def flip_sign(self) -> None:
        """Negate the steering in place (afterwards +c does what -c did); the default cannot."""
        raise TypeError(f"{type(self).__name__} has no flip_sign(); pass flip=<callable that negates it>")

    def fingerprint(self) -> str:
        """A short hash of everything the steerer applies (vectors, prompts, weights, sign): the key under which
        evaluation tasks cache its scores. '' (the default) means it cannot say, and its scores are not cached."""
        return ""


class NoSteering(Steerer):
    """The bare base model at every coefficient (for evaluating the unsteered model)."""

    name = "base"
    default_coeffs = (0.0,)
    prompt_only = True

    @contextmanager
    def at(self, c: float) -> Iterator[None]:
        yield

    def fingerprint(self) -> str:
        return "base"


class AdapterSteerer(Steerer):
    """An attached InnerPiSSA adapter: state c is `steer(model, c)`.

    With several adapters on the model, `adapter` picks the one that c steers and `others` holds the
    fixed coefficients of the rest (by name; unnamed ones stay at 0): state c is
    `steer(model, {adapter: c, **others})`.
    """

    name = "innerpissa"
    per_row_coeffs = True

    def __init__(self, model, name: str | None = None, coeffs: Sequence[float] | None = None,
                 adapter: str | None = None, others: Mapping[str, float] | None = None):
        self.model = model
        if name:
            self.name = name
        if coeffs is not None:
            self.default_coeffs = tuple(coeffs)
        if others and adapter is None:
            raise ValueError("AdapterSteerer(others=...) needs adapter=<name of the adapter that c steers>")
        self.adapter = adapter
        self.others = dict(others or {})

    @contextmanager
    def at(self, c: float) -> Iterator[None]:
        from innerpissa.adapter import steer

        with steer(self.model, c if self.adapter is None else {**self.others, self.adapter: c}):
            yield

    def flip_sign(self) -> None:
        """Negate the adapter that c steers (afterwards it equals at c the previous adapter at -c)."""
        from innerpissa.adapter import flip_sign

        flip_sign(self.model, self.adapter)

    def first_steered_block(self, model) -> int:
        from innerpissa.split import first_adapted_block

        return first_adapted_block(model) if model is self.model else 0

    def fingerprint(self) -> str:
        """A hash of every attached adapter's tensors (trained parameters and frozen U, S, V) and config, which
        one c steers and the others' fixed coefficients: a retrained or sign-flipped adapter is another steerer."""
        from innerpissa.adapter import adapter_layers

        layers = sorted(adapter_layers(self.model).items())
        tensors = [t for _, ly in layers for t in (*ly.parameters(recurse=False), *ly.buffers(recurse=False))]
        meta = [(name, type(ly).__name__, ly.cfg.to_dict(), ly.merged_coeff) for name, ly in layers]
        return tensor_digest(tensors, meta, self.adapter, sorted(self.others.items()))


def tensor_digest(tensors: Iterable[Tensor], *extra: object) -> str:
    """sha1 (12 hex digits) over tensors' fp32 bytes and the repr of `extra`: the steerers' fingerprints."""
    h = hashlib.sha1(repr(extra).encode())
    for t in tensors:
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:12]
