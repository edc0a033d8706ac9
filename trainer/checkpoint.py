"""Atomic, resumable checkpoints: DeepSpeed engine state + every rank's loader and RNG state.

Layout under ``<run.dir>/checkpoints/``::

    step00000100/            a complete checkpoint (renamed into place only when complete)
        state/               DeepSpeed engine files (model, optimizer, ZeRO shards, scheduler)
        rank00000.pt         that rank's loader state, RNG states, bad-sample count
        meta.json            step, world size, resolved config - written last
    .tmp-step00000200/       a save in progress (ignored by resume, removed by the next save)

A crash during a save leaves the previous checkpoint valid. ``keep_last`` complete checkpoints are
kept. Resuming with a different world size is refused (the loader states are per rank).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step*") if (p / "meta.json").exists())


def save_checkpoint(engine, run_dir: str, step: int, rank: int, world: int, rank_state: dict, config: dict,
                    keep_last: int = 3) -> Path:
    """Collective: every rank calls it. Returns the checkpoint directory."""
    root = Path(run_dir) / "checkpoints"
    name = f"step{step:08d}"
    tmp, final = root / f".tmp-{name}", root / name
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # e.g. the final save at a step that was just saved
            shutil.rmtree(final)
        tmp.mkdir()
    _barrier()
    engine.save_checkpoint(str(tmp), tag="state")
    torch.save({**rank_state, "rng": rng_state()}, tmp / f"rank{rank:05d}.pt")
    _barrier()
    if rank == 0:
        with open(tmp / "meta.json", "w") as f:
            json.dump({"step": step, "world": world, "config": config}, f)
        os.replace(tmp, final)
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def resolve_resume(resume: str, run_dir: str) -> Path | None:
    """``auto``: the latest complete checkpoint in run_dir (None if there is none); ``none``: None;
    otherwise a checkpoint directory (must be complete)."""
    if resume == "none":
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    p = Path(resume)
    if not (p / "meta.json").exists():
        raise FileNotFoundError(f"checkpoint.resume: {resume} is not a complete checkpoint (no meta.json)")
    return p


def load_checkpoint(engine, path: Path, rank: int, world: int) -> tuple[int, dict]:
    """Load engine + this rank's state. Returns (step, rank_state). Raises ValueError if the world
    size differs from the one that saved it."""
    meta = json.loads((path / "meta.json").read_text())
    if meta["world"] != world:
        raise ValueError(f"checkpoint {path} was saved by {meta['world']} ranks and this run has {world}: the "
                         f"data-loader positions are per rank, so resuming would replay or skip data. Resume with "
                         f"{meta['world']} ranks, or start a new run with run.init_from={path}")
    engine.load_checkpoint(str(path), tag="state", load_module_strict=True)
    state = torch.load(path / f"rank{rank:05d}.pt", weights_only=False)
    set_rng_state(state.pop("rng"))
    return int(meta["step"]), state
