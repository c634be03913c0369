"""A job that asked for GPUs stops with the reason torch sees none, where there are GPUs to
see; without any GPU, ``device: auto`` falls back to the CPU quietly (the default config on
a laptop). CUDA itself is faked: these run on CPU-only machines such as CI's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lvmbench import devices
from lvmbench.devices import pick_device, why_no_cuda
from lvmbench.errors import LvmbenchError


@pytest.fixture
def no_cuda(monkeypatch):
    """torch sees no GPU; no GPU request, no driver and no SLURM GPUs unless a test adds them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for var in (devices.GPUS_ENV, "CUDA_VISIBLE_DEVICES", *devices.SLURM_GPU_VARS, "LVMBENCH_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(devices, "nvidia_driver", lambda: None)
    return monkeypatch


def test_auto_without_any_gpu_falls_back_quietly(no_cuda):
    no_cuda.setenv(devices.GPUS_ENV, "1")  # the default config asks for one GPU per job
    assert pick_device("auto") == torch.device("cpu")
    no_cuda.setenv(devices.GPUS_ENV, "0")
    no_cuda.setattr(devices, "nvidia_driver", lambda: "550.54.14")
    assert pick_device("auto") == torch.device("cpu")  # gpu: 0 keeps the quiet fallback


@pytest.mark.parametrize("where, words", [
    ({"driver": "550.54.14"}, ["asked for 1 GPU(s)", "NVIDIA driver (550.54.14)"]),
    ({"SLURM_JOB_GPUS": "0"}, ["asked for 1 GPU(s)", "SLURM gave this job GPUs (SLURM_JOB_GPUS=0)"]),
])
def test_requested_gpu_where_there_are_some_stops_with_the_reason(no_cuda, where, words):
    no_cuda.setenv(devices.GPUS_ENV, "1")
    if "driver" in where:
        no_cuda.setattr(devices, "nvidia_driver", lambda: where["driver"])
    else:
        no_cuda.setenv("SLURM_JOB_GPUS", where["SLURM_JOB_GPUS"])
    with pytest.raises(LvmbenchError) as info:
        pick_device()
    message = str(info.value)
    assert "\n" not in message and "torch sees none" in message and "--config gpu=0" in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("setup, reason", [
    (lambda mp: mp.setattr(torch.version, "cuda", None), "is a CPU-only build"),
    (lambda mp: (mp.setattr(torch.version, "cuda", "12.6"), mp.setenv("CUDA_VISIBLE_DEVICES", "")),
     "CUDA_VISIBLE_DEVICES='' hides every GPU"),
    (lambda mp: mp.setattr(torch.version, "cuda", "12.6"), "no NVIDIA driver is loaded"),
    (lambda mp: (mp.setattr(torch.version, "cuda", "12.6"), mp.setattr(devices, "nvidia_driver", lambda: "470.1"),
                 mp.setattr(torch.cuda, "init", lambda: (_ for _ in ()).throw(RuntimeError(
                     "The NVIDIA driver on your system is too old (found version 11040).\nPlease update")))),
     "with driver 470.1: The NVIDIA driver on your system is too old (found version 11040)."),
])
def test_why_no_cuda_names_the_cause(no_cuda, setup, reason):
    no_cuda.setattr(torch.version, "hip", None)
    setup(no_cuda)
    assert reason in why_no_cuda() and "\n" not in why_no_cuda()


def test_explicit_cuda_without_cuda_says_why(no_cuda):
    with pytest.raises(LvmbenchError, match="device 'cuda:1' requested but torch sees no GPU: "):
        pick_device("cuda:1")


def test_gpu_count_must_be_a_number(no_cuda):
    no_cuda.setenv(devices.GPUS_ENV, "one")
    with pytest.raises(LvmbenchError, match="LVMBENCH_GPUS must be a whole number of GPUs, got 'one'"):
        pick_device("auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no GPU")
def test_train_job_that_asked_for_a_gpu_given_by_slurm_stops(tmp_path):
    """The command a train job runs, with the environment the workflow and SLURM give it."""
    env = {**os.environ, devices.GPUS_ENV: "1", "SLURM_JOB_GPUS": "0", "LVMBENCH_DEVICE": "auto"}
    cell = '{"experiment": "t", "dataset": "gmm2d", "model": "gmm", "objective": "iwae", "K": 1, ' \
           '"estimator": "score", "seed": 0, "train": {"steps": 2}}'
    proc = subprocess.run([sys.executable, "-m", "lvmbench", "train", "--quiet", "--cell", cell, "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "asked for 1 GPU(s) and SLURM gave this job GPUs" in proc.stderr
    assert not (tmp_path / "run" / "train.json").exists()
