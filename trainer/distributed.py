"""Process-group setup that behaves the same under ``deepspeed``, ``torchrun`` and Slurm's ``srun``.

The ``deepspeed`` launcher and ``torchrun`` export RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR /
MASTER_PORT; under ``srun`` (or submitit) they are derived from SLURM_PROCID / SLURM_LOCALID /
SLURM_NTASKS, with MASTER_ADDR/PORT expected from the launcher (``launchers/``). A single process
with none of these runs as world size 1. The backend is NCCL on CUDA and gloo on CPU (DeepSpeed's
accelerator decides).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world: int
    host: str


def env_rank_world() -> DistInfo:
    """Rank, local rank and world size from the launcher's environment (see module docstring)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local = int(env.get("SLURM_LOCALID", 0))
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    else:  # one process, no launcher: a free port of this machine, never a fixed one another job may hold
        rank, world, local = 0, 1, 0
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        if "MASTER_PORT" not in env:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                env["MASTER_PORT"] = str(s.getsockname()[1])
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29500")
    return DistInfo(rank, local, world, socket.gethostname())


def init_distributed() -> DistInfo:
    """Initialise torch.distributed through DeepSpeed (NCCL on GPU, gloo on CPU); returns DistInfo.

    Raises:
        ConfigError: the rendezvous port (MASTER_PORT) is held by another process (EADDRINUSE).
    """
    import deepspeed
    import torch

    from s5video.trainer.config import ConfigError

    info = env_rank_world()
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    try:
        deepspeed.init_distributed(dist_backend=deepspeed.get_accelerator().communication_backend_name())
    except Exception as e:
        if "EADDRINUSE" not in str(e) and "address already in use" not in str(e).lower():
            raise
        raise ConfigError(f"MASTER_PORT: port {os.environ['MASTER_PORT']} on {os.environ['MASTER_ADDR']} is in use by "
                          "another process; choose a free one with the launcher's --master_port (deepspeed, torchrun) "
                          "or MASTER_PORT=<port>") from None
    return info
