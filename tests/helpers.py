"""Small helpers several test modules share (pytest puts tests/ on the path: `from helpers import ...`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

import innerpissa as ip

SHARED_DATA = Path(os.environ.get("INNERPISSA_TEST_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
"""The shared data folder beside the repository (../shared/data); `$INNERPISSA_TEST_SHARED_DATA` points the
tests elsewhere (`make mutate` runs them from a copy of the repository in mutants/)."""


def randomize(params, std: float = 0.3, seed: int = 1) -> None:
    """Give adapter parameters non-trivial values, as after training (seeded)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * std)


def logits(model, batch, c=None):
    """The model's logits on `batch`, unsteered (c None) or inside `ip.steer(model, c)`."""
    with torch.no_grad():
        if c is None:
            return model(**batch).logits
        with ip.steer(model, c):
            return model(**batch).logits


def loss_and_grads(trainer, batch):
    """A trainer's total loss on `batch` and the flattened gradient of its parameters (grads cleared after)."""
    total, _ = trainer.losses(batch)
    trainer.model.zero_grad()
    total.backward()
    grads = torch.cat([p.grad.flatten() for p in trainer.params])
    for p in trainer.params:
        p.grad = None
    return total.detach(), grads


def last_tokens_mask(attention_mask, n):
    """Bool [B, T]: the last `n` (an int or one per row) real tokens of each row, any padding side (an
    independent statement of what the trainer's tail mask must select)."""
    am = attention_mask.bool()
    from_end = am.flip(-1).long().cumsum(-1).flip(-1)  # 1 at the last real token, 2 before it, ...
    n_t = torch.as_tensor(n, device=am.device).reshape(-1, 1) if isinstance(n, torch.Tensor) else n
    return am & (from_end <= n_t)
def usage_error(excinfo, capsys) -> str:
    """The message of a command-line usage error (tyro exits 2 and prints a box to stderr), whitespace and
    box lines collapsed so a wrapped message still matches."""
    assert excinfo.value.code == 2, f"exit code {excinfo.value.code!r}, not a usage error"
    err = capsys.readouterr().err
    return " ".join(w for w in err.split() if set(w) - set("-─│╭╮╰╯|"))
