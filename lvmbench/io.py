"""Atomic file output: write to a temporary file beside the target, then rename.

A crash never leaves a half-written file under a final name, and a write that fails (the
disk is full, the place is read-only) leaves the previous file as it was and raises
:class:`OutputError`, one line naming the file and the cause. :func:`replace_dir` does
the same for a whole directory of files (the tables of ``lvmbench aggregate``), and
:func:`check_output` refuses, before any work starts, an output path that could not be
written.
"""

from __future__ import annotations

import ctypes
import errno
import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import torch

from lvmbench.errors import LvmbenchError

_UMASK = os.umask(0)
os.umask(_UMASK)

#: why a file could not be written, by errno
_CAUSES = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied"}


class OutputError(LvmbenchError):
    """A file could not be written: the disk is full, or the place is not writable."""


def output_error(path: str | os.PathLike, err: OSError) -> OutputError | None:
    """The one-line error for an ``OSError`` met while writing ``path``, or None when the
    error is not about the place written to (e.g. a network error inside a download)."""
    cause = _CAUSES.get(err.errno)
    if cause is None:
        return None
    return OutputError(f"cannot write {path}: {cause} ({err.strerror}); nothing was replaced")


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` met while writing ``path`` into :class:`OutputError`."""
    try:
        yield
    except OSError as err:
        mapped = output_error(path, err)
        if mapped is None:
            raise
        raise mapped from None


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically; a failure to
    write (disk full, read-only, permissions) raises :class:`OutputError` and leaves
    neither a temporary file nor a changed ``path``."""
    path = Path(path)
    tmp = None
    with _writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            write(Path(tmp))
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
            os.replace(tmp, path)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    return path


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=float) + "\n"))


def save_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda p: df.to_csv(p, index=False))


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through a buffer: torch's own file writer reports a full disk as a
    RuntimeError that never says so, a plain file write as ``OSError(ENOSPC)``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, lambda p: p.write_bytes(buffer.getbuffer()))


def load_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def temporaries(directory: Path) -> list[Path]:
    """The temporary files :func:`atomic_write` leaves in ``directory`` when it is killed."""
    return sorted(directory.glob(".*.tmp")) if directory.is_dir() else []


def check_output(path: str | os.PathLike, what: str, directory: bool = False) -> None:
    """Refuse, before any work starts, an output ``path`` that cannot be written: a file
    where a directory is wanted or the reverse, a file among its parents, a parent that is
    not writable. ``what`` names the option (e.g. ``--out``)."""
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        raise LvmbenchError(f"{what} {path} is {'a file' if directory else 'a directory'}; name "
                            f"{'a directory' if directory else 'a file'} to write")
    parent = path if directory and path.exists() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise LvmbenchError(f"{what} {path} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LvmbenchError(f"{what} {path} cannot be written: {parent} is not writable (permission denied)")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2 RENAME_EXCHANGE); False
    where the system or the file system does not offer it."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_dir(out: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_dir)`` and put ``tmp_dir`` in the place of ``out`` as a whole: a
    reader sees the old set of files or the new one, never a mix, and a failure (a full
    disk) leaves the old set untouched. The swap is one atomic step where the system has
    renameat2 (Linux), else two renames a moment apart. Temporary directories left by a
    killed call are removed first."""
    out = Path(out)
    with _writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in out.parent.glob(f".{out.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
        try:
            write(tmp)
            os.chmod(tmp, 0o777 & ~_UMASK)
            if not (out.is_dir() and _exchange(tmp, out)):
                if out.is_dir():
                    os.replace(out, tmp.with_name(tmp.name + ".old.tmp"))
                os.replace(tmp, out)
        except OutputError as err:  # a file inside: name it by its final place
            raise OutputError(str(err).replace(str(tmp), str(out))) from None
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".old.tmp")):
                shutil.rmtree(leftover, ignore_errors=True)
    return out
