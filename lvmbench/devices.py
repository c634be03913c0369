"""Which torch device a job uses, why torch sees no GPU, and GPU slots shared by the jobs of
one workstation.

A job that asked for GPUs (the workflow's config key ``gpu``, which reaches each job as
``$LVMBENCH_GPUS``) on a machine that has NVIDIA GPUs, or that a scheduler gave GPUs, stops
with one line saying why torch sees none (a CPU build of torch, a driver too old for torch's
CUDA, ``CUDA_VISIBLE_DEVICES`` empty, ...) instead of training on the CPU while it holds
them. On a machine without any GPU, ``device: auto`` falls back to the CPU quietly.
"""

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


#: the GPU count a job asked for (the workflow sets it from the config key ``gpu``)
GPUS_ENV = "LVMBENCH_GPUS"
#: variables by which SLURM tells a job which GPUs it was given
SLURM_GPU_VARS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")


def nvidia_driver() -> str | None:
    """The loaded NVIDIA kernel driver's version (from /proc/driver/nvidia/version), or None."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    words = text.split()
    return next((w for w in words if w[:1].isdigit() and "." in w), "unknown")


def requested_gpus() -> int:
    """The GPUs this job asked for: ``$LVMBENCH_GPUS`` (0 when unset, e.g. a hand-run command)."""
    value = os.environ.get(GPUS_ENV, "0")
    try:
        return max(0, int(value))
    except ValueError:
        raise LvmbenchError(f"{GPUS_ENV} must be a whole number of GPUs, got {value!r}") from None


def has_gpus() -> str | None:
    """Why this machine or job has GPUs that torch should see (an NVIDIA driver, GPUs given
    by SLURM), or None on a machine without any."""
    given = next((v for v in SLURM_GPU_VARS if os.environ.get(v)), None)
    if given:
        return f"SLURM gave this job GPUs ({given}={os.environ[given]})"
    if nvidia_driver() is not None:
        return f"this machine has an NVIDIA driver ({nvidia_driver()})"
    return None


def why_no_cuda() -> str:
    """Why torch sees no GPU, in words, for one line of an error."""
    if torch.version.cuda is None and torch.version.hip is None:
        return f"torch {torch.__version__} is a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    driver = nvidia_driver()
    if driver is None and torch.version.cuda is not None:
        return "no NVIDIA driver is loaded (no /proc/driver/nvidia/version; in a container, pass the GPUs in)"
    try:
        torch.cuda.init()
    except Exception as err:  # torch's own reason, e.g. "The NVIDIA driver on your system is too old"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) with driver {driver}: {reason}"
    return f"torch.cuda.is_available() is False (torch {torch.__version__}, CUDA {torch.version.cuda}, driver {driver})"


def pick_device(name: str | None = None) -> torch.device:
    """The named device; None means ``$LVMBENCH_DEVICE``, else ``auto``. ``auto``: CUDA when
    present, else CPU, except that a job which asked for GPUs (:func:`requested_gpus`) where
    there are some (:func:`has_gpus`) stops with the reason torch sees none. With several
    visible GPUs, ``auto`` claims a free slot on one of them (:func:`claim_gpu`,
    ``$LVMBENCH_JOBS_PER_GPU`` slots per GPU, default 1), so the jobs of one workstation
    spread over its GPUs. A name that is not a device, or a GPU that is not there, is
    refused with one line."""
    name = name or os.environ.get("LVMBENCH_DEVICE") or "auto"
    if not re.fullmatch(DEVICE, name):
        raise LvmbenchError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        if not torch.cuda.is_available():
            n, where = requested_gpus(), has_gpus()
            if n and where:
                raise LvmbenchError(f"this job asked for {n} GPU(s) and {where}, but torch sees none: "
                                    f"{why_no_cuda()}; install a torch build for this driver (README, 'Running "
                                    f"on a GPU'), or run on the CPU with --config gpu=0")
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
        raise LvmbenchError(f"device {name!r} requested but torch sees no GPU: {why_no_cuda()}")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LvmbenchError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise LvmbenchError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def device_name(device: torch.device) -> str:
    """The GPU's name, or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
