"""Files: ``sha256_file`` and atomic writes: the content goes into a temporary file beside the target, which is then renamed
over it (``os.replace``), so a process killed at any moment leaves the old file or the new one,
never half of one. The temporary name keeps the target's suffix (writers that pick the format by
suffix, such as matplotlib, still work) and starts with a dot."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["sha256_file", "atomic_write", "atomic_write_text", "atomic_write_bytes", "atomic_torch_save"]


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of the file at ``path`` (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to write a temporary file, then move it onto ``path`` (folders made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_torch_save(obj, path: str | Path) -> Path:
    """``torch.save`` of ``obj`` to ``path``, atomically (weights, checkpoints, training states)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
