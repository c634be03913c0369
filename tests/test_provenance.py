"""How a run was made: every summary RunDir writes records the versions, the git commit and
whether the checkout was dirty, the device, the host, the SLURM job and the times."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime

import torch

import lvmbench
from lvmbench import provenance
from lvmbench.runs import RunDir

FIELDS = {"lvmbench_version", "git_commit", "git_dirty", "python", "torch", "cuda", "cudnn", "nvidia_driver",
          "device", "device_name", "host", "slurm_job_id", "started", "finished"}


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(provenance.SOURCE), *args], capture_output=True, text=True).stdout.strip()


def test_record_of_this_process(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    made = provenance.record("cpu")
    assert set(made) == FIELDS
    assert made["lvmbench_version"] == lvmbench.__version__ and made["torch"] == torch.__version__
    assert (made["device"], made["device_name"], made["slurm_job_id"]) == ("cpu", "cpu", "4242")
    started, finished = (datetime.fromisoformat(made[k]) for k in ("started", "finished"))
    assert started <= finished and abs(finished.timestamp() - time.time()) < 5
    assert provenance.process_started() <= time.time()


def test_git_state_of_the_checkout():
    """From this checkout (an editable install): its HEAD, and dirty exactly when git says so."""
    commit, dirty = provenance.git_state()
    if git("rev-parse", "--show-toplevel") == str(provenance.SOURCE):
        assert commit == git("rev-parse", "HEAD") and dirty == bool(git("status", "--porcelain"))
        assert provenance.version() == f"lvmbench {lvmbench.__version__} (git {commit[:12]}" + \
            ("+dirty)" if dirty else ")")
    else:
        assert dirty is None


def test_without_a_checkout_the_image_commit_is_used(monkeypatch, tmp_path):
    monkeypatch.setattr(provenance, "SOURCE", tmp_path)  # an installed wheel: no repository of its own
    monkeypatch.setenv("LVMBENCH_GIT_COMMIT", "0123456789abcdef")
    provenance.git_state.cache_clear()
    try:
        assert provenance.git_state() == ("0123456789abcdef", None)
        monkeypatch.delenv("LVMBENCH_GIT_COMMIT")
        provenance.git_state.cache_clear()
        assert provenance.git_state() == (None, None)
        assert provenance.version() == f"lvmbench {lvmbench.__version__}"
    finally:
        provenance.git_state.cache_clear()


def test_every_summary_rundir_writes_records_it(tmp_path):
    path = RunDir(tmp_path).write_json("eval", {"log_px": -1.0, "device": "cpu"})
    written = json.loads(path.read_text())
    assert written["log_px"] == -1.0 and set(written["provenance"]) == FIELDS
    assert written["provenance"]["device_name"] == "cpu"


def test_cli_version():
    proc = subprocess.run([sys.executable, "-m", "lvmbench", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == provenance.version() + "\n"
