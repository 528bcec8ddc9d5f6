"""The library's own error types. Each message names the problem (file, flag or value) and the fix; the
command line prints it as one line (the traceback only with --debug or INNERPISSA_DEBUG=1)."""

from __future__ import annotations


class InnerPissaError(Exception):
    """Base of every error the library raises on purpose."""


class InputError(InnerPissaError, ValueError):
    """A user-supplied file or value is missing, malformed or out of range."""


class RunFolderError(InnerPissaError, ValueError):
    """`--out` already holds a run and neither --resume nor --overwrite was given."""


class ResumeMismatch(InnerPissaError, ValueError):
    """`--resume` found a checkpoint written by a run with other settings."""


class CorruptAdapterError(InnerPissaError, ValueError):
    """An adapter folder's files are damaged or do not belong together."""


class SteeringConflict(InnerPissaError, RuntimeError):
    """`steer` on a model that another thread (or asyncio task) is steering right now."""
