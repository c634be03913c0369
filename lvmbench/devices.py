"""Which torch device a job uses, and GPU slots shared by the jobs of one workstation."""

from __future__ import annotations

import fcntl
import os
import re
import sys
import tempfile
from pathlib import Path

import torch

from lvmbench.errors import LvmbenchError
from lvmbench.settings import DEVICE

_GPU_LOCKS: list = []  # slot locks held for the life of the process


def claim_gpu(n_gpus: int, jobs_per_gpu: int, lock_dir: Path) -> int:
    """Index of a GPU with a free job slot, claimed with a non-blocking ``fcntl.flock`` on
    ``lock_dir/<gpu>.<slot>.lock`` and held until the process exits, so concurrent jobs on
    one machine spread over the GPUs and never exceed ``jobs_per_gpu`` per GPU.
    Slots are tried GPU-major by load: every GPU's slot 0 before any slot 1."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(jobs_per_gpu):
        for gpu in range(n_gpus):
            handle = open(lock_dir / f"{gpu}.{slot}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            _GPU_LOCKS.append(handle)
            return gpu
    print(f"[lvmbench] every GPU slot is taken ({n_gpus} GPUs x {jobs_per_gpu} jobs); sharing one",
          file=sys.stderr)
    return os.getpid() % n_gpus


def pick_device(name: str | None = None) -> torch.device:
    """The named device; None means ``$LVMBENCH_DEVICE``, else ``auto``. ``auto``: CUDA when
    present, else CPU. With several visible GPUs, ``auto`` claims a free slot on one of them
    (:func:`claim_gpu`, ``$LVMBENCH_JOBS_PER_GPU`` slots per GPU, default 1), so the jobs of
    one workstation spread over its GPUs. A name that is not a device, or a GPU that is not
    there, is refused with one line."""
    name = name or os.environ.get("LVMBENCH_DEVICE") or "auto"
    if not re.fullmatch(DEVICE, name):
        raise LvmbenchError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        n = torch.cuda.device_count()
        if n == 1:
            return torch.device("cuda")
        jobs = os.environ.get("LVMBENCH_JOBS_PER_GPU", "1")
        if not jobs.isdigit() or int(jobs) < 1:
            raise LvmbenchError(f"LVMBENCH_JOBS_PER_GPU must be an integer >= 1, got {jobs!r}")
        jobs = int(jobs)
        return torch.device(f"cuda:{claim_gpu(n, jobs, Path(tempfile.gettempdir()) / 'lvmbench-gpu')}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LvmbenchError(f"device {name!r} requested but CUDA is not available")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise LvmbenchError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def device_name(device: torch.device) -> str:
    """The GPU's name, or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
