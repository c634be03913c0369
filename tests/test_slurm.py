"""The .test DAG through profiles/slurm on a real single-node SLURM started for this test.

The fixture installs Debian's Slurm and munge when they are missing (root and apt-get
needed; otherwise the test skips and says why), starts a private munged, slurmctld and
slurmd on their own ports, sockets, spool and state directories (SLURM_CONF points at a
slurm.conf in a temporary directory),
runs the tiny config with `snakemake --profile profiles/slurm`, and always stops the
daemons it started, by the pids in their pid files. See docs/cluster.md.

One file outside the temporary directory is needed: the plugin's job step drops
SLURM_CONF from the environment of the `srun` it runs inside each job, so srun reads
/etc/slurm/slurm.conf. The fixture links it to the private slurm.conf only when no
/etc/slurm/slurm.conf exists (else it skips: it never touches a configured SLURM) and
removes the link afterwards.

The node declares four fake GPUs (gres files that are plain files) and the run asks for
`gpu=1` per job, so the plugin's --gpus request goes through SLURM's accounting of GPUs;
the jobs themselves run on CPU (the config says device: cpu).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import test_pipeline as local  # the local run's helpers and output checks
from test_pipeline import ROOT, TINY_CONFIG, workdir_with

pytestmark = pytest.mark.slow

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch", "/usr/bin/squeue"]
SUBMITTED = {"train", "evaluate", "gradvar", "amortize"}  # the other rules are localrules
ETC_CONF = Path("/etc/slurm/slurm.conf")
GPUS = 4  # fake ones (plain files); each job asks for one, so at most 4 jobs at once
TIMEOUT = 900  # seconds for the whole DAG; about 4 minutes on 2 idle cores, twice that under load


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _install_or_skip() -> None:
    """Install Debian's Slurm and munge if missing (apt-get update only if the first try fails)."""
    if all(Path(p).exists() for p in DAEMONS):
        return
    if shutil.which("apt-get") is None:
        pytest.skip("SLURM test: Slurm is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    proc = _run(*install, env=env)
    if proc.returncode != 0:
        _run("apt-get", "update", env=env)
        proc = _run(*install, env=env)
    if proc.returncode != 0 or not all(Path(p).exists() for p in DAEMONS):
        pytest.skip(f"SLURM test: apt-get install {' '.join(PACKAGES)} failed: {proc.stderr.strip()[-300:]}")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop(pidfile: Path) -> None:
    """SIGTERM the daemon named by ``pidfile``, SIGKILL it after 10 s."""
    pid = _pid(pidfile)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_for(what: str, check, timeout: float = 30, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            pytest.fail(f"SLURM test: {what} did not happen within {timeout} s\n{tail}")
        time.sleep(0.2)


SLURM_CONF = """\
ClusterName=lvmbench
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
# finished jobs stay listed for an hour (default 300 s): the resources test reads them after
# a run that takes longer than 5 minutes on a loaded machine
MinJobAge=3600
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
GresTypes=gpu
{node} RealMemory=64000 Gres=gpu:{gpus} State=UNKNOWN
PartitionName=debug Nodes={nodename} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm():
    """A running single-node SLURM; yields the environment its clients need."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("SLURM test: needs root to install and start munged, slurmctld and slurmd")
    if shutil.which("snakemake") is None:
        pytest.skip("SLURM test: snakemake is not installed")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("SLURM test: snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')")
    _install_or_skip()
    if ETC_CONF.exists() or ETC_CONF.is_symlink():
        pytest.skip(f"SLURM test: {ETC_CONF} exists; the test starts its own SLURM only on a machine without one")

    d = Path(tempfile.mkdtemp(prefix="lvmbench-slurm-"))
    d.chmod(0o755)
    pidfiles = [d / "slurmd.pid", d / "slurmctld.pid", d / "munge" / "munged.pid"]
    env = {**os.environ, "SLURM_CONF": str(d / "slurm.conf")}
    try:
        # munge: a private key and socket, run as the munge user
        (d / "munge").mkdir()
        (d / "munge" / "munge.key").write_bytes(os.urandom(1024))
        (d / "munge" / "munge.key").chmod(0o400)
        shutil.chown(d / "munge" / "munge.key", "munge", "munge")
        shutil.chown(d / "munge", "munge", "munge")
        proc = _run("runuser", "-u", "munge", "--", "/usr/sbin/munged", f"--socket={d}/munge/munge.socket",
                    f"--key-file={d}/munge/munge.key", f"--pid-file={d}/munge/munged.pid",
                    f"--log-file={d}/munge/munged.log", f"--seed-file={d}/munge/munged.seed")
        assert proc.returncode == 0, f"munged did not start: {proc.stderr}"

        # slurm.conf: the node as slurmd sees it, two fake GPUs
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        node = _run("/usr/sbin/slurmd", "-C").stdout.splitlines()[0]
        node = re.sub(r"\s*RealMemory=\d+", "", node)
        # two job slots per CPU: the jobs mostly start Python (SlurmdParameters=config_overrides)
        node = re.sub(r"\b(CPUs|ThreadsPerCore)=(\d+)", lambda m: f"{m[1]}={2 * int(m[2])}", node)
        nodename = re.match(r"NodeName=(\S+)", node)[1]
        ctld_port, d_port = _free_ports(2)
        (d / "slurm.conf").write_text(SLURM_CONF.format(
            host=nodename, dir=d, node=node, gpus=GPUS, nodename=nodename, ctld_port=ctld_port, d_port=d_port))
        for i in range(GPUS):
            (d / f"gpu{i}").touch()
        (d / "gres.conf").write_text(f"NodeName={nodename} Name=gpu File={d}/gpu[0-{GPUS - 1}]\n")

        ETC_CONF.parent.mkdir(parents=True, exist_ok=True)
        ETC_CONF.symlink_to(d / "slurm.conf")  # for srun inside the jobs (see the module docstring)

        for daemon in ("slurmctld", "slurmd"):
            proc = _run(f"/usr/sbin/{daemon}", env=env)
            assert proc.returncode == 0, f"{daemon} did not start: {proc.stderr}"

        def idle() -> bool:
            return _run("sinfo", "-h", "-o", "%t", env=env).stdout.strip() == "idle"

        _wait_for("the node becoming idle", idle, log=d / "slurmctld.log")
        yield env
    finally:
        _run("scancel", "--full", "--partition=debug", env=env)
        for pidfile in pidfiles:
            _stop(pidfile)
        if ETC_CONF.is_symlink() and ETC_CONF.resolve() == (d / "slurm.conf").resolve():
            ETC_CONF.unlink()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory) -> Path:
    """The .test DAG through profiles/slurm; its stdout and stderr in snakemake.log."""
    work = workdir_with(tmp_path_factory.mktemp("slurm"), TINY_CONFIG)
    cmd = ["snakemake", "--snakefile", str(local.SNAKEFILE), "--directory", str(work),
           "--profile", str(ROOT / "profiles" / "slurm"), "--jobs", "8", "--config", "gpu=1",
           "--default-resources", "slurm_account=lvmbench", "slurm_partition=debug",
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
           "--latency-wait", "5"]
    try:  # a timeout: the plugin can hang after a failed job (see docs/cluster.md)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=slurm, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the SLURM run took more than {TIMEOUT} s:\n{(err.stderr or b'')[-5000:]!r}")
    (work / "snakemake.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return work


def test_slurm_run_gives_the_local_run_outputs(slurm_run):
    """The same checks as the local run of tests/test_pipeline.py."""
    local.test_tiny_run_covers_every_rule(slurm_run)
    local.test_tiny_run_covers_every_model_family(slurm_run)
    local.test_tiny_run_tables(slurm_run)
    local.test_tiny_run_bound_ordering_passes(slurm_run)
    local.test_tiny_run_figures(slurm_run)
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(local.snakemake(slurm_run, "-n"))


def test_slurm_jobs_were_submitted_with_their_resources(slurm, slurm_run):
    """Every train, evaluate, gradvar and amortize job went through sbatch (SLURM keeps
    finished jobs for MinJobAge=300 s), asked for one GPU, the profile's time limit and
    the partition."""
    out = _run("scontrol", "show", "job", "-o", env=slurm).stdout
    jobs = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if "JobId=" in line]
    runs = slurm_run / "results" / "runs"
    expected = {rule: len(list(runs.glob(f"**/{name}"))) for rule, name in
                (("train", "train.json"), ("evaluate", "eval.json"), ("gradvar", "gradvar.csv"),
                 ("amortize", "amortization.json"))}
    planned = local.plan(local.load(TINY_CONFIG))
    assert expected["train"] == len(planned.cells)
    expected["train"] = len(local.bundles(planned.cells, planned.workflow.bundle))  # one train job per bundle
    by_rule = {rule: [j for j in jobs if j.get("Comment", "").startswith(f"rule_{rule}_")] for rule in SUBMITTED}
    assert {rule: len(v) for rule, v in by_rule.items()} == expected, out[:3000]
    assert len(jobs) == sum(expected.values())  # nothing else was submitted
    assert all(j["JobState"] == "COMPLETED" for j in jobs), out[:3000]
    assert all(j["Partition"] == "debug" for j in jobs)
    assert all(j.get("TresPerJob") == "gres:gpu:1" for j in jobs), out[:3000]  # --gpus=1
    limits = {rule: {j["TimeLimit"] for j in v} for rule, v in by_rule.items()}
    assert limits == {"train": {"12:00:00"}, "evaluate": {"04:00:00"}, "gradvar": {"02:00:00"},
                      "amortize": {"04:00:00"} if expected["amortize"] else set()}
