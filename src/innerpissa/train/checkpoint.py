"""Training checkpoints: everything needed to continue exactly where a run stopped, written atomically."""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from innerpissa.fileio import atomic_torch_save

STATE_NAME = "state.pt"


@dataclass
class Checkpoint:
    """Progress counters plus what cannot be recomputed cheaply (the frozen reference)."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    elapsed: float = 0.0
    best_val: float = float("inf")
    bad_epochs: int = 0
    best_params: list[torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    reference: dict[str, Any] | None = None
    scale: float = 1.0
    fingerprint: dict[str, Any] | None = None
    """The run's identity (`run_fingerprint`): a resume with another one is refused."""
    finished: bool = False
    """The loop ran to its end (the adapter was written); resuming it does nothing."""


def save_checkpoint(folder: Path, state: Checkpoint, params: list[torch.nn.Parameter], opt, sched) -> Path:
    """Write folder/state.pt through a temporary file and a rename: a crash leaves the previous one intact."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    blob = {"state": asdict(state), "params": [p.detach().cpu().clone() for p in params],
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "version": 1}
    return atomic_torch_save(blob, folder / STATE_NAME)


def _load_blob(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, read with `weights_only=True`: tensors, numbers, strings, lists and dicts
    only, so a planted pickle cannot run code (its classes and callables are refused before any is called)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        what = " ".join(str(e).split("\n")[:2])[:240]
        raise ValueError(f"checkpoint {path} holds objects other than tensors and plain data, so it was not loaded "
                         f"(loading it could run code: {what}); it was not written by innerpissa: delete it, or "
                         "rerun with --overwrite to start fresh") from None
    except Exception as e:
        raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}: {' '.join(str(e).split())[:240]}); "
                         "rerun with --overwrite to start fresh") from None
    if not isinstance(blob, dict) or not {"state", "params", "optimizer", "scheduler"} <= set(blob):
        raise ValueError(f"checkpoint {path} is not an innerpissa training checkpoint (no state, params, optimizer "
                         "and scheduler entries); rerun with --overwrite to start fresh")
    return blob


def _state(path: Path, blob: dict[str, Any]) -> Checkpoint:
    try:
        return Checkpoint(**blob["state"])
    except TypeError as e:
        raise ValueError(f"checkpoint {path} has an unexpected state ({e}); rerun with --overwrite to start fresh") from None


def read_checkpoint_state(folder: Path) -> Checkpoint:
    """The progress counters and fingerprint of a checkpoint, without touching any model."""
    path = Path(folder) / STATE_NAME
    return _state(path, _load_blob(path))


def load_checkpoint(folder: Path, params: list[torch.nn.Parameter], opt, sched) -> Checkpoint:
    """Restore parameters, optimizer and schedule in place; returns the progress counters."""
    path = Path(folder) / STATE_NAME
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; run without --resume to start fresh")
    blob = _load_blob(path)
    saved = blob["params"]
    if len(saved) != len(params) or any(s.shape != p.shape for s, p in zip(saved, params, strict=False)):
        raise ValueError(f"checkpoint {path} was written for another adapter configuration; "
                         "use the same --adapter options as the interrupted run, or another --out")
    with torch.no_grad():
        for p, s in zip(params, saved, strict=True):
            p.copy_(s.to(p.device, p.dtype))
    opt.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    return _state(path, blob)
