"""Distributed environment of one submitit task: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT.

Ranks come from submitit's ``JobEnvironment`` (SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS on
Slurm, SUBMITIT_LOCAL_* for the local executor). MASTER_ADDR is the address Slurm has for the
job's first node: ``scontrol show hostnames $SLURM_JOB_NODELIST`` gives the node names and
``scontrol show node <first>`` its ``NodeAddr`` - node names do not always resolve through DNS
(in our test cluster ``n1`` and ``n2`` are 127.0.0.1). MASTER_PORT is derived from the job id and
Slurm's restart count, so two jobs sharing a node do not collide and a requeued job does not reuse
the port of its killed predecessor (nor the shared-memory names DeepSpeed derives from it).
"""
from __future__ import annotations

import os
import re
import subprocess

PORT_BASE, PORT_RANGE = 20000, 20000  # MASTER_PORT in [20000, 40000)
ATTEMPT_STRIDE = 7919  # a prime: attempt k of job j is k * 7919 ports away from attempt 0


def master_port(job_id: str, attempt: int = 0) -> int:
    """A TCP port in [20000, 40000) from the job id (digits of e.g. ``"1234"`` or ``"1234_5"``) and the
    attempt (``SLURM_RESTART_COUNT``: 0 first, +1 per requeue)."""
    digits = re.sub(r"\D", "", str(job_id)) or "0"
    return PORT_BASE + (int(digits) + ATTEMPT_STRIDE * int(attempt)) % PORT_RANGE


def _scontrol(*args: str) -> str:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, check=True, timeout=60).stdout


def slurm_master_addr(nodelist: str) -> str:
    """Address of the first node of ``nodelist`` (Slurm's compact form, e.g. ``n[1-2]``).

    ``NodeAddr`` from ``scontrol show node``; the node name itself when scontrol has no address.

    Raises:
        RuntimeError: scontrol failed or the node list is empty.
    """
    try:
        first = _scontrol("show", "hostnames", nodelist).split()[0]
    except (subprocess.SubprocessError, OSError, IndexError) as e:
        raise RuntimeError(f"cannot expand SLURM_JOB_NODELIST={nodelist!r} with scontrol: {e}") from e
    try:
        m = re.search(r"\bNodeAddr=(\S+)", _scontrol("show", "node", "-o", first))
    except (subprocess.SubprocessError, OSError):
        m = None
    return m.group(1) if m else first


def distributed_env(job_env) -> dict[str, str]:
    """Environment variables for ``torch.distributed`` from a ``submitit.JobEnvironment``.

    Returns RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (all strings).
    """
    if job_env.name() == "slurm":
        addr = slurm_master_addr(os.environ["SLURM_JOB_NODELIST"])
    else:  # local executor: every task on this machine
        addr = "127.0.0.1"
    return {"RANK": str(job_env.global_rank), "LOCAL_RANK": str(job_env.local_rank),
            "WORLD_SIZE": str(job_env.num_tasks), "MASTER_ADDR": addr,
            "MASTER_PORT": str(master_port(job_env.job_id, int(os.environ.get("SLURM_RESTART_COUNT") or 0)))}
