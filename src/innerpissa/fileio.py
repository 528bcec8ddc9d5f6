"""Atomic writes, in one place: every file and folder the library writes goes through here.

A file is written to a temporary sibling and moved into place with `os.replace`, so a reader (or a resumed
run) never sees half a file; a folder is built as a temporary sibling and renamed into place, so its files
change together. Unlike a bare `tempfile.mkstemp` (mode 0600), the result gets the mode an ordinary
`open()` would give it: 0666 (files) or 0777 (folders) minus the process umask, so a colleague or a
serving engine running as another user can read what we wrote.

JSON is written strictly (`allow_nan=False`): a NaN or infinity becomes `null`, never a bare `NaN` that
strict parsers reject.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def chmod_default(path: str | os.PathLike, folder: bool = False) -> None:
    """Give `path` the mode `open()` / `mkdir()` would have: 0666 / 0777 minus the umask."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then move it into place (umask mode)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        chmod_default(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes atomically (flushed to disk before the rename)."""

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """A copy of `obj` with every non-finite float replaced by None (JSON null); tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def dumps_strict(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of `obj` (NaN and infinities as null)."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False, default=str)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write strict JSON atomically."""
    return atomic_write_text(path, dumps_strict(obj) + "\n")


def atomic_save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file atomically (tensors moved to CPU and made contiguous)."""
    from safetensors.torch import save_file

    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(cpu, str(p), metadata=metadata))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` atomically."""
    import torch

    return atomic_write(path, lambda p: torch.save(obj, p))


@contextmanager
def atomic_folder(path: str | os.PathLike, owned: Iterable[str] = ()) -> Iterator[Path]:
    """Build a folder as a temporary sibling and rename it into place when the block succeeds.

    An existing folder at `path` is replaced only at the very end (moved aside, the new one renamed in,
    the old one deleted), so a failure at any point leaves either the old folder complete or the new one
    complete, never new files beside old ones. Because the old folder is replaced whole, it may hold only
    the names in `owned` (what this writer puts there): a folder with anything else is refused, never
    deleted.
    """
    path = Path(os.path.abspath(path))
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} is a file; give a folder path")
        other = sorted(p.name for p in path.iterdir() if p.name not in set(owned))
        if other:
            raise FileExistsError(f"{path} holds other files ({', '.join(other[:5])}); write into a new or empty "
                                  "folder, or remove them first")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        chmod_default(tmp, folder=True)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
