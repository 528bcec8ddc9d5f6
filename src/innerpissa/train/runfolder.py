"""Run folders: a fresh default per run, and never clobbered without --resume or --overwrite."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

from innerpissa.errors import InputError, RunFolderError

#: what a training run writes into its folder (anything else there is left alone; lora.safetensors: what
#: LoRA(c) runs wrote before they saved through save_adapter)
RUN_FILES = ("adapter", "checkpoint", "summary.json", "metrics.jsonl", "config.json", "lora.safetensors")


def default_out(concept: str, root: Path = Path("runs")) -> Path:
    """A new folder per run: runs/<concept>-<YYYYmmdd-HHMMSS>, suffixed -2, -3, ... if taken."""
    base = root / f"{concept}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, k = base, 2
    while out.exists():
        out, k = Path(f"{base}-{k}"), k + 1
    return out


def holds_run(out: Path) -> bool:
    """Whether `out` contains any file a training run writes."""
    return Path(out).is_dir() and any((Path(out) / f).exists() for f in RUN_FILES)


def check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an `out` that holds a run unless the caller said what to do with it."""
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; give one of them")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder; give a folder path")
    if holds_run(out) and not (resume or overwrite):
        raise RunFolderError(f"--out {out} already holds a training run; pass --resume to continue it, "
                             "--overwrite to replace it, or another --out")
    if resume and not (out / "checkpoint" / "state.pt").exists() and (out / "summary.json").exists():
        raise RunFolderError(f"--resume: {out} holds a finished run but no checkpoint/state.pt to check it "
                             "against; use --overwrite to train it again, or another --out")


def clear_run(out: Path) -> None:
    """Remove the files of a previous run from `out` (other files stay)."""
    for name in RUN_FILES:
        p = Path(out) / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def check_train_numbers(cfg) -> None:
    """Numbers that would fail late (or silently) are checked before anything is loaded or written."""
    checks = [("--batch-size", cfg.batch_size, cfg.batch_size >= 1), ("--grad-accum", cfg.grad_accum, cfg.grad_accum >= 1),
              ("--epochs", cfg.epochs, cfg.epochs >= 0),
              ("--lr", cfg.lr, math.isfinite(cfg.lr) and cfg.lr > 0),
              ("--warmup", cfg.warmup, 0 <= cfg.warmup <= 1), ("--clip", cfg.clip, math.isfinite(cfg.clip)),
              ("--weight-decay", cfg.weight_decay, math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0),
              ("--data.val-fraction", cfg.data.val_fraction, 0 <= cfg.data.val_fraction < 1),
              ("--data.max-length", cfg.data.max_length, cfg.data.max_length >= 1),
              ("--adapter.r", cfg.adapter.r, cfg.adapter.r >= 1)]
    for flag, value, ok in checks:
        if not ok:
            raise InputError(f"{flag} {value} is out of range; see `innerpissa train --help` for what it takes")
