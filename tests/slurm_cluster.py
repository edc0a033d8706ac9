"""A real two-node Slurm cluster on this one host, for the launcher tests.

`SlurmCluster(root).start()` writes a munge key and a ``slurm.conf`` under ``root`` and starts
``munged`` (own key, socket and pid file), ``slurmctld`` and two ``slurmd -N n1`` / ``-N n2`` that
share the host's CPUs, then waits until ``sinfo`` reports both nodes idle. ``stop()`` kills
every daemon by the PID it recorded. No accounting (no slurmdbd), so ``sacct`` has nothing to
report: submitit then sees job state UNKNOWN, which the launcher handles.

The Debian package ``slurm-wlm`` (which brings munge) is installed when missing and we are root;
:class:`SlurmUnavailable` says why the cluster could not start (tests skip with that reason).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SBIN = Path("/usr/sbin")
NODES = ("n1", "n2")


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here; the message says why."""


def ensure_slurm_installed() -> None:
    """Install ``slurm-wlm`` (and munge) with apt when missing; raises SlurmUnavailable."""
    if (SBIN / "slurmctld").exists() and (SBIN / "munged").exists():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SlurmUnavailable("slurm-wlm is not installed and we are not root on Debian")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                           "slurm-wlm", "slurm-client", "munge"],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlurmUnavailable(f"apt-get install slurm-wlm failed: {proc.stderr[-500:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """Two Slurm nodes (n1, n2) on this host; ``env`` holds SLURM_CONF for clients."""

    def __init__(self, root: Path, cpus_per_node: int = 2):
        self.root = Path(root)
        self.cpus = cpus_per_node
        self.pids: dict[str, int] = {}
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # ----------------------------------------------------------------------------------------
    def _write_conf(self) -> None:
        r = self.root
        for d in ("state", "spool", "log", "munge"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        ctld_port, node_port = _free_port(), 17001
        host = socket.gethostname()
        self.conf.write_text(f"""\
ClusterName=s5test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge/munge.sock,cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.%n.log
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=10
Waittime=0
PreemptType=preempt/none
NodeName=n[1-2] NodeHostname={host} NodeAddr=127.0.0.1 Port=[{node_port}-{node_port + 1}] CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.pids[name] = proc.pid

    def start(self, timeout: float = 30.0) -> "SlurmCluster":
        """Start munged, slurmctld and both slurmd; raises SlurmUnavailable with the reason."""
        ensure_slurm_installed()
        self._write_conf()
        m = self.root / "munge"
        self._spawn("munged", [str(SBIN / "munged"), "-F", "-f", f"--socket={m}/munge.sock",
                               f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
                               f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"])
        self._wait(lambda: (m / "munge.sock").exists(), 10, "munged did not create its socket")
        self._spawn("slurmctld", [str(SBIN / "slurmctld"), "-D", "-i", "-f", str(self.conf)])
        for n in NODES:
            (self.root / "spool" / n).mkdir(exist_ok=True)
            self._spawn(f"slurmd-{n}", [str(SBIN / "slurmd"), "-D", "-N", n, "-f", str(self.conf)])
        self._wait(self._nodes_idle, timeout, "nodes did not become idle")
        return self

    def _nodes_idle(self) -> bool:
        for name, pid in self.pids.items():
            if not _alive(pid):
                raise SlurmUnavailable(f"{name} exited: {self.log_tail(name)}")
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env,
                             capture_output=True, text=True).stdout.split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(n) == "idle" for n in NODES)

    def _wait(self, ok, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ok():
                return
            time.sleep(0.2)
        self.stop()
        raise SlurmUnavailable(f"{what} within {timeout:.0f} s; logs in {self.root / 'log'}")

    def log_tail(self, name: str, n: int = 800) -> str:
        for p in (self.root / "log" / f"{name}.out", self.root / "log" / f"{name}.log"):
            if p.exists() and p.stat().st_size:
                return p.read_text(errors="replace")[-n:]
        return "(no log)"

    def stop(self) -> None:
        """Cancel leftover jobs, then SIGTERM every daemon by its recorded PID (SIGKILL after 10 s)."""
        if "slurmctld" in self.pids and _alive(self.pids["slurmctld"]):
            self._cancel_all_jobs()
        order = [k for k in self.pids if k.startswith("slurmd")] + ["slurmctld", "munged"]
        for name in order:
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            end = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < end:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


    def _cancel_all_jobs(self, timeout: float = 20.0) -> None:
        """scancel every job still known, and wait for their job steps (slurmstepd) to end."""
        def queued() -> list[str]:
            p = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True)
            return p.stdout.split()
        jobs = queued()
        if jobs:
            subprocess.run(["scancel", *jobs], env=self.env, capture_output=True)
        end = time.monotonic() + timeout
        while queued() and time.monotonic() < end:
            time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return done == 0
