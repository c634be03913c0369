"""Atomic file output: write to a temporary file beside the target, then rename.

A crash never leaves a half-written file under a final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=float) + "\n"))


def save_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda p: df.to_csv(p, index=False))


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda p: torch.save(obj, p))


def load_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())
