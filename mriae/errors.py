"""User-facing errors and the one-line report for them.

A user's mistake (a missing file, a broken volume, a datalist that does not fit the bundle) raises
a ``UserError`` whose message is one line naming the file and the problem. MONAI's bundle runner
wraps exceptions from config expressions in ``RuntimeError("Failed to evaluate ...")``; the hook
installed by ``install_excepthook`` (on ``import mriae``, for non-interactive runs) walks the
exception chain, and when it finds a ``UserError`` prints only ``error: <message>`` to stderr
instead of a traceback (the exit status stays 1). Programming errors keep their full traceback.
"""

from __future__ import annotations

import sys

__all__ = ["UserError", "InputError", "InputErrors", "MissingFileError", "find_user_error", "install_excepthook"]


class UserError(Exception):
    """Base of errors caused by the input, reported in one line."""


class InputError(UserError, ValueError):
    """Bad input data or configuration."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class InputErrors(InputError):
    """Several inputs are bad: reported one line each (``lines``)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)
        super().__init__("; ".join(self.lines))


def find_user_error(exc: BaseException | None) -> UserError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _hook(exc_type, exc, tb, _previous=sys.excepthook):
    err = find_user_error(exc)
    if err is None:
        return _previous(exc_type, exc, tb)
    for line in getattr(err, "lines", None) or [str(err)]:  # one line per problem (a folder's bad files)
        print(f"error: {' '.join(str(line).split())}", file=sys.stderr, flush=True)


def install_excepthook() -> None:
    if not hasattr(sys, "ps1") and sys.excepthook is not _hook:
        sys.excepthook = _hook
