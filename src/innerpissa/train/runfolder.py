"""Run folders: a fresh default per run, never clobbered without --resume or --overwrite, and owned by one
process at a time (an advisory lock held for the whole train / resume / overwrite)."""

from __future__ import annotations

import math
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from innerpissa.errors import InputError, RunFolderError
from innerpissa.fileio import first_file_on_path

#: the lock file inside a run folder (holds the owner's pid while a run holds the folder; removed after)
LOCK_NAME = ".innerpissa.lock"

#: what a training run writes into its folder (anything else there is left alone; lora.safetensors: what
#: LoRA(c) runs wrote before they saved through save_adapter)
RUN_FILES = ("adapter", "checkpoint", "summary.json", "metrics.jsonl", "config.json", "lora.safetensors")


def default_out(concept: str, root: Path = Path("runs")) -> Path:
    """A new folder per run: runs/<concept>-<YYYYmmdd-HHMMSS>-<4 random hex digits>, so two runs started in
    the same second (two processes) get different folders; drawn again in the rare case it exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while True:
        out = root / f"{concept}-{stamp}-{secrets.token_hex(2)}"
        if not out.exists():
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
    blocker = first_file_on_path(out)
    if blocker is not None:
        raise RunFolderError(f"--out {out} lies below {blocker}, which is a file, not a folder; give a folder path")
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
    if cfg.loss_inputs == "neutral" and cfg.objective == "inner" and cfg.loss_target == "separation":
        raise InputError("--loss-inputs neutral puts one persona-free text on both rows of a pair, whose pos - neg "
                         "separation is always 0: use --loss-target shift_moved (or shift)")


# ---------------------------------------------------------------- one process per run folder


def _read_pid(lock: Path) -> str:
    try:
        return lock.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (`fcntl.flock`) on `out/.innerpissa.lock` for the block; a second
    process (or a second `train` in this one) asking for the same folder gets a `RunFolderError` naming the
    holder's pid at once, never a wait. The lock file holds the pid and is removed on release; a folder the
    lock created and nothing else used is removed too. The kernel drops the lock when the holder dies, so a
    killed run never leaves the folder locked. Where `fcntl` does not exist (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderError(f"--out {out} is in use by another training run (pid {_read_pid(lock)}); wait "
                                 "for it to finish or stop it, or give another --out") from None
        except OSError:  # a filesystem without flock: run unlocked rather than not at all
            os.close(fd)
            yield
            return
        try:  # the holder before us may have removed the file after we opened it: lock the file that is there
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)
        if created:
            try:
                out.rmdir()  # only if still empty: the run failed before writing anything
            except OSError:
                pass


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block a SIGTERM (what `kill`, `timeout` and job schedulers send) raises KeyboardInterrupt
    like Ctrl-C, so training writes its checkpoint and says how to resume. Only the main thread can set a
    signal handler; elsewhere this does nothing. The previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
