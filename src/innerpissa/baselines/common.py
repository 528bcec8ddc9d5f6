"""What every baseline shares: a sign that calibration can flip, removable output hooks, pair activations,
and a tensors + JSON file format.

The hooks are registered with `prepend=True`, so they run before transformers' own output-capturing hooks:
`output_hidden_states` then reports the steered hidden state, the one the next layer actually sees (with an
appended hook, transformers 5 would report the unsteered value at the steered layer).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.utils.data import DataLoader

from innerpissa.anatomy import CapturePoint, block_name, decoder_blocks, default_layers
from innerpissa.data.pairs import ContrastivePair, PairCollator, PairDataset
from innerpissa.steering import Steerer
from innerpissa.train.directions import capture_pairs

#: edit(x, out) -> new out, for one module: x is the module's first input, out its (first) output
OutputEdit = Callable[[Tensor, Tensor], Tensor]
DEFAULT_N_TOKENS = 4


class SignedSteerer(Steerer):
    """A Steerer whose meaning of +c can be negated in place (sign calibration, METHOD section 6).

    Subclasses read `self.sign * c`; `flip_sign()` makes state c behave like the old state -c, so a caller
    that calibrated once keeps passing the same coefficients.
    """

    sign: float = 1.0

    def flip_sign(self) -> None:
        self.sign = -self.sign

    def signed(self, c: float) -> float:
        return self.sign * float(c)

    @contextmanager
    def at(self, c: float | Tensor) -> Iterator[None]:
        """State c: the untouched model at (signed) c = 0, else whatever `applied(signed c)` does. Steerers
        with `per_row_coeffs` also take a 1-D tensor, one coefficient per batch row."""
        if isinstance(c, Tensor):
            if not self.per_row_coeffs:
                raise TypeError(f"{type(self).__name__} takes one float coefficient, not a per-row tensor")
            with self.applied(self.sign * c):
                yield
            return
        c = self.signed(c)
        if c == 0.0:
            yield
            return
        with self.applied(c):
            yield

    def applied(self, c: float) -> AbstractContextManager[None]:
        """Context manager putting the model in state c (c already signed, never 0)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A short hash of what state c does (tensors, texts and the sign): pass it as the harness's
        `cache_tag`, so cached scores are reused exactly when the steerer is the same."""
        raise NotImplementedError


def _first_input(args: tuple, kwargs: dict) -> Tensor | None:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return next(iter(kwargs.values()), None)


def _edit_hook(edit: OutputEdit):
    def hook(_mod, args, kwargs, output):
        out = output[0] if isinstance(output, tuple) else output
        new = edit(_first_input(args, kwargs), out)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


@contextmanager
def edited_outputs(model: nn.Module, edits: Mapping[str, OutputEdit]) -> Iterator[None]:
    """Apply `edits` (module name -> edit) through forward hooks; all of them are removed on exit, also
    when the body raises or when registering a later hook fails."""
    handles = []
    try:
        for name, edit in edits.items():
            handles.append(model.get_submodule(name).register_forward_hook(
                _edit_hook(edit), with_kwargs=True, prepend=True))
        yield
    finally:
        for h in handles:
            h.remove()


def model_place(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the model's first parameter: steerers re-place their tensors when it changes."""
    p = next(model.parameters())
    return p.device, p.dtype


def module_place(model: nn.Module, name: str) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a module's first parameter (models split over devices put modules apart)."""
    p = next(model.get_submodule(name).parameters(), None)
    if p is None:
        p = next(model.parameters())
    return p.device, p.dtype


def resolve_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    """Sorted, distinct, non-negative block indices; `None` gives `default_layers(model)`."""
    if layers is None:
        return default_layers(model)
    _, n = decoder_blocks(model)
    for layer in layers:
        block_name(model, int(layer))  # range check with a clear message
    out = sorted({int(layer) % n for layer in layers})
    if not out:
        raise ValueError("no layers given")
    return out


def pair_dataset(tokenizer, pairs: Sequence[ContrastivePair]) -> PairDataset:
    if not pairs:
        raise ValueError("no training pairs given")
    return PairDataset(pairs, tokenizer)


def resolve_n_tokens(dataset: PairDataset, n_tokens: int | None) -> int:
    """An explicit `n_tokens` is used as given (capture raises if it reaches past a shared tail); the default
    is min(4, shortest shared tail), so pos and neg are always read on identical text."""
    if n_tokens is not None:
        if n_tokens < 1:
            raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
        return n_tokens
    shortest = min(it.tail_len for it in dataset.items)
    if shortest < 1:
        raise ValueError("some pairs share no trailing tokens; give n_tokens explicitly or fix the pairs")
    return min(DEFAULT_N_TOKENS, shortest)


def capture_pair_activations(model: nn.Module, tokenizer, pairs: Sequence[ContrastivePair],
                             points: Sequence[CapturePoint], n_tokens: int | None = None,
                             batch_size: int = 16, cache: dict | None = None, shared_tail: bool = True,
                             ) -> tuple[dict[str, tuple[Tensor, Tensor]], int]:
    """(pos, neg) activations [N, n, d] (fp32, CPU) per capture point, on the last n shared tokens of
    every pair (with `shared_tail=False`, the last `n_tokens` whatever they are), and the n used. Runs the
    model as it is (call it on the base model, c = 0), through the one capture loop (`capture_pairs`).

    `cache`: a dict the caller keeps for one model and one pair set (e.g. one seed of a comparison), so
    the PCA, mean-difference and random vectors share one pass over the pairs. Entries are keyed by the
    model object, the pairs' text, the points and n_tokens; never reuse it after changing the weights.
    """
    key = None
    if cache is not None:
        digest = hashlib.sha1("\x00".join(f"{p.positive}\x01{p.negative}" for p in pairs).encode()).hexdigest()
        key = (id(model), digest, tuple(p.key for p in points), n_tokens, batch_size)
        if key in cache:
            return cache[key]
    ds = pair_dataset(tokenizer, pairs)
    n = resolve_n_tokens(ds, n_tokens) if shared_tail else int(n_tokens or 1)
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=PairCollator(tokenizer.pad_token_id))
    was_training = model.training
    model.eval()
    try:
        captured, _ = capture_pairs(model, loader, points, n, shared_tail=shared_tail)
    finally:
        model.train(was_training)
    if key is not None:
        cache[key] = (captured, n)
    return captured, n


def _files(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return Path(f"{stem}.safetensors"), Path(f"{stem}.json")


def save_tensors(path: str | Path, tensors: Mapping[str, Tensor], meta: Mapping) -> tuple[Path, Path]:
    """Write `<path>.safetensors` and `<path>.json` (tensors contiguous on CPU; meta must be JSON-able)."""
    from innerpissa.fileio import atomic_save_safetensors, atomic_write_text, json_safe

    st, js = _files(path)
    atomic_save_safetensors(dict(tensors), st)
    atomic_write_text(js, json.dumps(json_safe(dict(meta)), indent=1, sort_keys=True, allow_nan=False))
    return st, js


def load_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """Read what `save_tensors` wrote (either file name, or the common stem)."""
    st, js = _files(path)
    for f in (st, js):
        if not f.exists():
            raise FileNotFoundError(f"{f} does not exist (baselines are saved as a .safetensors + .json pair)")
    return load_file(str(st)), json.loads(js.read_text(encoding="utf-8"))
