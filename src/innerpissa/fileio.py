"""Atomic writes, in one place: every file and folder the library writes goes through here.

A file is written to a temporary sibling and moved into place with `os.replace`, so a reader (or a resumed
run) never sees half a file; a folder is built as a temporary sibling and renamed into place, so its files
change together. Unlike a bare `tempfile.mkstemp` (mode 0600), the result gets the mode an ordinary
`open()` would give it: 0666 (files) or 0777 (folders) minus the process umask, so a colleague or a
serving engine running as another user can read what we wrote.

JSON is written strictly (`allow_nan=False`): a NaN or infinity becomes `null`, never a bare `NaN` that
strict parsers reject.

Temporary names carry their writer, `.NAME.~HOST-PID.RANDOM.tmp` (or `.old` for a folder being replaced), so
the next write of NAME removes what a killed writer left (a live writer's files are never touched, nor those
of another machine on a shared disk), and a reader that finds NAME missing can name what is left
(`leftovers`). On Linux a folder is replaced by an atomic exchange (renameat2 RENAME_EXCHANGE), so NAME is
never missing; elsewhere it is moved aside and the new one renamed in, and a crash between those two renames
leaves the complete new folder as `.NAME.~...tmp` beside the old one as `.NAME.~...old`.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
import warnings
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


def chmod_tree(folder: str | os.PathLike) -> None:
    """`chmod_default` on a folder and everything below it (what a library such as transformers wrote there
    may carry another mode)."""
    for root, _dirs, files in os.walk(folder):
        chmod_default(root, folder=True)
        for f in files:
            if not os.path.islink(os.path.join(root, f)):
                chmod_default(os.path.join(root, f))


# ---------------------------------------------------------------- temporary names and their leftovers


def _owner_tag() -> str:
    """HOST-PID of this process (HOST: a short hash of the host name), embedded in temporary names."""
    host = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
    return f"{host}-{os.getpid()}"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.~{_owner_tag()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: keep its files
    return True


def leftovers(path: str | os.PathLike) -> list[Path]:
    """Temporary files and folders beside `path` that an interrupted write of `path` left behind (writers
    that are still running and other machines' writers excluded), sorted by name."""
    path = Path(os.path.abspath(path))
    host = _owner_tag().split("-")[0]
    start = f".{path.name}.~"
    found = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    for e in entries:
        if not e.name.startswith(start):
            continue
        tag = e.name[len(start):].split(".", 1)[0]
        h, _, pid = tag.partition("-")
        if h == host and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            found.append(path.parent / e.name)
    return sorted(found)


def describe_leftovers(path: str | os.PathLike) -> str:
    """'' or a sentence naming what an interrupted write of `path` left (for a 'not found' message)."""
    found = leftovers(path)
    if not found:
        return ""
    olds = {p.name.rsplit(".", 2)[0] for p in found if p.name.endswith(".old")}
    parts = []
    for p in found:
        if p.name.endswith(".old"):
            parts.append(f"{p} (the previous version)")
        elif p.is_dir() and p.name.rsplit(".", 2)[0] in olds:
            parts.append(f"{p} (the new version, complete: rename it to {Path(path).name})")
        else:
            parts.append(f"{p} (incomplete)")
    return "; an interrupted write left " + ", ".join(parts)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def clean_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove what interrupted writes of `path` left beside it (see `leftovers`), with a warning naming them."""
    found = leftovers(path)
    for p in found:
        _remove(p)
    if found:
        warnings.warn(f"removed {len(found)} leftover(s) of an interrupted write of {path}: "
                      f"{', '.join(p.name for p in found)}", stacklevel=3)
    return found


def ensure_folder(folder: str | os.PathLike, what: str | None = None) -> Path:
    """Create `folder` (and its parents) with a message naming the file in the way when a parent is a file."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = first_file_on_path(folder)
        raise NotADirectoryError(f"{what or 'cannot create'} {folder}: {blocker or folder} is a file, not a folder; "
                                 "give a path below a folder") from None
    return folder


def first_file_on_path(path: str | os.PathLike) -> Path | None:
    """The first existing non-folder among `path` and its ancestors (None when every existing one is a folder)."""
    p = Path(os.path.abspath(path))
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            return None if q.is_dir() else q
    return None


#: how writers in C++/Rust (torch.save, safetensors) report a failed write: without an errno
_WRITE_FAILURES = ("iostream", "inline_container", "unexpected pos", "PytorchStreamWriter", "I/O error")


def _write_failure_cause(folder: Path) -> str:
    """The likely reason a write stopped: a file-size limit, a full disk, or unknown."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        resource = None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource is not None else None
    if resource is not None and soft != resource.RLIM_INFINITY:
        return f"the file-size limit of this process ({soft} bytes, `ulimit -f`) was reached"
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 64 << 20:
        return f"the disk is (nearly) full ({free} bytes free)"
    return "the write failed (disk full, quota or file-size limit?)"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then move it into place (umask mode).

    An `OSError` names `path`; other errors of the writer (torch's "iostream error" when a file-size limit
    or a full disk stops it) are re-raised as an `OSError` that names the path and the likely cause."""
    path = Path(path)
    ensure_folder(path.parent)
    clean_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        try:
            write(Path(tmp))
        except OSError as e:
            if e.filename is None and e.errno is not None:
                raise OSError(e.errno, f"{e.strerror} (writing {path})") from e
            raise
        except Exception as e:
            if any(k in str(e) for k in _WRITE_FAILURES):
                raise OSError(errno.EIO, f"could not write {path}: {_write_failure_cause(path.parent)} "
                              f"({' '.join(str(e).split())[:200]})") from e
            raise
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


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`); False where the
    system or the filesystem cannot (the caller then falls back to two renames)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):  # no renameat2 (not Linux, old libc)
        return False
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextmanager
def atomic_folder(path: str | os.PathLike, owned: Iterable[str] = ()) -> Iterator[Path]:
    """Build a folder as a temporary sibling and rename it into place when the block succeeds.

    An existing folder at `path` is replaced only at the very end (atomically exchanged with the new one on
    Linux; elsewhere moved aside, the new one renamed in), then the old one is deleted, so a failure at any
    point leaves either the old folder complete or the new one complete, never new files beside old ones.
    Because the old folder is replaced whole, it may hold only the names in `owned` (what this writer puts
    there): a folder with anything else is refused, never deleted. Files written into the block get the
    umask's mode. What a killed earlier write of `path` left beside it is removed first (with a warning).
    """
    path = Path(os.path.abspath(path))
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} is a file; give a folder path")
        other = sorted(p.name for p in path.iterdir() if p.name not in set(owned))
        if other:
            raise FileExistsError(f"{path} holds other files ({', '.join(other[:5])}); write into a new or empty "
                                  "folder, or remove them first")
    ensure_folder(path.parent)
    clean_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        chmod_tree(tmp)
        if path.exists() or path.is_symlink():
            if exchange_paths(tmp, path):  # tmp now holds the old folder (or the old link)
                _remove(tmp)
                return
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".old", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
