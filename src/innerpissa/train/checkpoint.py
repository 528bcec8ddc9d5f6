"""Training checkpoints: everything needed to continue exactly where a run stopped, written atomically."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

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


def save_checkpoint(folder: Path, state: Checkpoint, params: list[torch.nn.Parameter], opt, sched) -> Path:
    """Write folder/state.pt through a temporary file and a rename: a crash leaves the previous one intact."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    blob = {"state": asdict(state), "params": [p.detach().cpu().clone() for p in params],
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "version": 1}
    fd, tmp = tempfile.mkstemp(prefix=f".{STATE_NAME}.", dir=folder)
    os.close(fd)
    try:
        torch.save(blob, tmp)
        os.replace(tmp, folder / STATE_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / STATE_NAME


def load_checkpoint(folder: Path, params: list[torch.nn.Parameter], opt, sched) -> Checkpoint:
    """Restore parameters, optimizer and schedule in place; returns the progress counters."""
    path = Path(folder) / STATE_NAME
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; run without --resume to start fresh")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    saved = blob["params"]
    if len(saved) != len(params) or any(s.shape != p.shape for s, p in zip(saved, params, strict=False)):
        raise ValueError(f"checkpoint {path} was written for another adapter configuration; "
                         "use the same --adapter options as the interrupted run, or another --out")
    with torch.no_grad():
        for p, s in zip(params, saved, strict=True):
            p.copy_(s.to(p.device, p.dtype))
    opt.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    return Checkpoint(**blob["state"])
