"""How a run was made: the software, the machine and the times, recorded in every summary.

:func:`record` is what :meth:`lvmbench.runs.RunDir.write_json` adds to each summary it
writes (``train.json``, ``eval.json``, ...) under the key ``provenance``:

* ``lvmbench_version``; ``git_commit`` and ``git_dirty`` of the checkout lvmbench is
  imported from (None for an install without one);
* ``python``, ``torch``, ``cuda`` and ``cudnn``: the versions (CUDA and cuDNN None on a
  CPU build), and ``nvidia_driver`` where a driver is loaded;
* ``device`` and ``device_name`` (the GPU's name, or "cpu"), ``host``, and
  ``slurm_job_id`` when the job runs under SLURM;
* ``started`` (when the job's process started) and ``finished`` (when the summary was
  written), in UTC, ISO 8601.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from lvmbench import __version__
from lvmbench.devices import device_name, nvidia_driver

SOURCE = Path(__file__).resolve().parents[1]  # the checkout, for an editable install
_IMPORTED = time.time()


def process_started() -> float:
    """When this process started (seconds since the epoch): from /proc where there is one,
    else when this module was imported."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, starttime, after the comm field
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(SOURCE), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout lvmbench runs from. Without a checkout of its own
    (an installed wheel, a container image): ``$LVMBENCH_GIT_COMMIT`` as the image was built
    (the Dockerfile sets it) with ``dirty`` unknown, else (None, None). ``dirty``: tracked
    files differ from the commit, or files git does not ignore are untracked."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != SOURCE:
        return os.environ.get("LVMBENCH_GIT_COMMIT") or None, None
    status = _git("status", "--porcelain")
    return _git("rev-parse", "HEAD"), None if status is None else bool(status)


def version() -> str:
    """``lvmbench X.Y.Z``, with the git commit (and ``+dirty``) when run from a checkout."""
    commit, dirty = git_state()
    return f"lvmbench {__version__}" + (f" (git {commit[:12]}{'+dirty' if dirty else ''})" if commit else "")


def record(device: str | torch.device | None = None) -> dict:
    """The provenance of the summary being written now, by a job that ran on ``device``."""
    commit, dirty = git_state()
    dev = torch.device(device) if device is not None else None
    return {
        "lvmbench_version": __version__, "git_commit": commit, "git_dirty": dirty,
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nvidia_driver": nvidia_driver(),
        "device": None if dev is None else str(dev), "device_name": None if dev is None else device_name(dev),
        "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": _iso(process_started()), "finished": _iso(time.time()),
    }
