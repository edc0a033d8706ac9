"""Atomic, resumable checkpoints: DeepSpeed engine state + every rank's loader and RNG state.

Layout under ``<run.dir>/checkpoints/``::

    step00000100/            a complete checkpoint (renamed into place only when complete)
        state/               DeepSpeed engine files (model, optimizer, ZeRO shards, scheduler)
        rank00000.pt         that rank's component states (loader position, TrainState) and RNG states
        meta.json            step, world size, resolved config - written last
    .tmp-step00000200/       a save in progress (ignored by resume, removed by the next save)

and under ``<run.dir>/best/``: one DeepSpeed tag per model selected on validation
(``step00000080/``); the tag in use is recorded in each step checkpoint (``meta.json: best_tag``),
so a crash while writing a new best leaves the recorded one intact. A best tag is removed once no
complete checkpoint (and not the current run) refers to it.

A crash during a save leaves the previous checkpoint valid. ``keep_last`` complete checkpoints are
kept. A checkpoint resumes on another number of ranks too (:func:`prepare_elastic`): the engine
through DeepSpeed's universal checkpoint, the data position from every rank's loader state.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from s5video.trainer.compat import ds_model_states_files, ds_stop_universal_loads, ds_to_universal


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


def best_tag(step: int) -> str:
    return f"step{step:08d}"


def save_best(engine, run_dir: str, step: int, rank: int, keep: set[str | None]) -> str:
    """Collective: the engine's weights as the model selected on validation at ``step``; returns its
    tag in ``<run_dir>/best``. Tags in ``keep`` (the one in use) and those referred to by a complete
    checkpoint survive; the others are removed."""
    tag, root = best_tag(step), Path(run_dir) / "best"
    if rank == 0:
        shutil.rmtree(root / tag, ignore_errors=True)  # a partial write of this tag by a killed run
    _barrier()
    engine.save_checkpoint(str(root), tag=tag, save_latest=False)
    _barrier()
    if rank == 0:
        prune_best(run_dir, keep=set(keep) | {tag})
    _barrier()
    return tag


def load_best(engine, run_dir: str, tag: str, rank: int, world: int) -> None:
    """Collective: load the weights of ``best/<tag>`` (no optimizer state; for evaluation). Under ZeRO-3
    DeepSpeed reads the tag from ``best/latest`` whatever it is told, so rank 0 first points that file
    at ``tag``. A tag saved by another number of ranks (before an elastic resume) is read whole
    (:func:`consolidated_weights`) and copied into the module, gathered under ZeRO-3."""
    root = Path(run_dir) / "best"
    states = ds_model_states_files(root / tag)
    saved = torch.load(states[0], weights_only=False, map_location="cpu").get("dp_world_size") if states else world
    if saved != world:
        import deepspeed
        weights = consolidated_weights(root, tag)
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=0,
                                               enabled=engine.zero_optimization_partition_weights()):
            engine.module.load_state_dict(weights, strict=True)
        return
    if rank == 0:
        tmp = root / ".latest.tmp"
        tmp.write_text(tag)
        os.replace(tmp, root / "latest")
    _barrier()
    engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=False, load_lr_scheduler_states=False)


def prune_best(run_dir: str, keep: set[str | None]) -> None:
    """Remove ``best/`` tags that neither ``keep`` nor a complete checkpoint's ``best_tag`` names (rank 0)."""
    root = Path(run_dir) / "best"
    if not root.is_dir():
        return
    used = set(keep) | {json.loads((c / "meta.json").read_text()).get("best_tag") for c in complete_checkpoints(run_dir)}
    for d in root.iterdir():
        if d.is_dir() and d.name not in used:
            shutil.rmtree(d, ignore_errors=True)


def consolidated_weights(root: str | os.PathLike, tag: str) -> dict[str, torch.Tensor]:
    """The full fp32 model state dict of DeepSpeed tag ``root/tag`` in one process, for any ZeRO
    stage: the module states file (every parameter, frozen ones and buffers included; under ZeRO-3
    only empty placeholders, which are dropped), overlaid with the fp32 weights DeepSpeed's
    ``zero_to_fp32`` gathers from the partitions (ZeRO 1-3; frozen parameters where DeepSpeed
    recorded them). Needs no process group."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    files = ds_model_states_files(Path(root) / tag)
    if not files:
        raise FileNotFoundError(f"{Path(root) / tag}: no DeepSpeed model states file")
    states = torch.load(files[0], weights_only=False, map_location="cpu")
    sd = {k: v for k, v in states["module"].items() if v.numel() > 0}
    if states.get("param_shapes") is not None:  # ZeRO 1-3 record the partitioned shapes; stage 0 does not,
        sd.update(get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag))  # its module states are all
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


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


def checkpoint_world(path: Path) -> int:
    """The number of data-parallel ranks that saved the checkpoint ``path``."""
    return int(json.loads((Path(path) / "meta.json").read_text())["world"])


def prepare_elastic(path: Path, rank: int, zero_stage: int) -> str:
    """Collective, before the engine is built: make the checkpoint ``path`` loadable at another world
    size and return the DeepSpeed tag to load. ZeRO stages 1-3 partition the optimizer state (and
    under 3 the weights) by rank, so rank 0 converts ``state/`` once into a DeepSpeed universal
    checkpoint ``universal/`` (``deepspeed.checkpoint.ds_to_universal``: one file per parameter and
    state - fp32 weights, Adam moments - written to a temporary folder, then renamed), which an engine
    built with ``checkpoint.load_universal`` re-partitions on load. Stage 0 keeps whole states: ``state``.
    Raises RuntimeError (on every rank) with the converter's output when the conversion fails."""
    if zero_stage == 0:
        return "state"
    out, error = Path(path) / "universal", None
    if rank == 0 and not (out / "zero").is_dir():
        import contextlib
        import io
        import traceback

        tmp = Path(path) / ".universal-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        said = io.StringIO()  # the converter prints a line per step and a progress bar per parameter
        try:
            with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
                ds_to_universal(Path(path) / "state", tmp)
            os.replace(tmp, out)
        except Exception:  # noqa: BLE001 - reported on every rank below
            error = (f"converting {path} to a universal checkpoint failed:\n{said.getvalue()[-2000:]}\n"
                     f"{traceback.format_exc()[-2000:]}")
    if dist.is_available() and dist.is_initialized():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise RuntimeError(error)
    return "universal"


@dataclass
class ResumePoint:
    """A checkpoint to resume from: its directory, the ranks that saved it and the DeepSpeed tag to
    load (``state``; ``universal`` when it was converted for another world size)."""

    path: Path
    world: int
    tag: str = "state"


class Checkpointer:
    """Saves and restores a run, collectively (every rank calls each method together): the engine
    (DeepSpeed: weights, optimizer, ZeRO partitions, lr schedule), and per rank the ``state_dict()``
    of each named component (the loader position, the trainer's :class:`~trainer.optim.TrainState`)
    with the RNG states; plus the models selected on validation under ``best/``.

    Args:
        run_dir: the run directory (``checkpoints/`` and ``best/`` go under it).
        rank, world: this process's data-parallel position.
        config: the resolved config, recorded in each checkpoint's ``meta.json``.
        keep_last: complete step checkpoints kept (older ones are removed after a save).
    """

    def __init__(self, run_dir: str | os.PathLike, rank: int, world: int, config: dict, keep_last: int = 3):
        self.run_dir, self.rank, self.world = Path(run_dir), rank, world
        self.config, self.keep_last = config, keep_last

    def find(self, resume: str, zero_stage: int) -> ResumePoint | None:
        """Collective, before the engine is built: the checkpoint ``checkpoint.resume`` names
        (:func:`resolve_resume`), made loadable at this world size (:func:`prepare_elastic`); None to
        start fresh. Build the engine with ``checkpoint.load_universal`` when the tag is ``universal``."""
        path = resolve_resume(resume, str(self.run_dir))
        if path is None:
            return None
        world = checkpoint_world(path)
        return ResumePoint(path, world, "state" if world == self.world else prepare_elastic(path, self.rank, zero_stage))

    def save(self, engine, step: int, components: dict, best_tag: str | None = None) -> Path:
        """Write ``checkpoints/step<step>`` atomically: the engine, this rank's ``{name:
        component.state_dict()}`` and RNG states, then ``meta.json`` (step, world, config, ``best_tag``:
        the ``best/`` tag this state refers to, kept as long as this checkpoint is). Returns its directory."""
        root = self.run_dir / "checkpoints"
        name = f"step{step:08d}"
        tmp, final = root / f".tmp-{name}", root / name
        if self.rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if final.exists():  # e.g. the final save at a step that was just saved
                shutil.rmtree(final)
            tmp.mkdir()
        _barrier()
        engine.save_checkpoint(str(tmp), tag="state")
        states = {k: c.state_dict() for k, c in components.items()}
        torch.save({**states, "rng": rng_state()}, tmp / f"rank{self.rank:05d}.pt")
        _barrier()
        if self.rank == 0:
            with open(tmp / "meta.json", "w") as f:
                json.dump({"step": step, "world": self.world, "config": self.config, "best_tag": best_tag}, f)
            os.replace(tmp, final)
            for old in complete_checkpoints(self.run_dir)[:-self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
            prune_best(str(self.run_dir), keep={best_tag})
        _barrier()
        return final

    def load(self, engine, point: ResumePoint, components: dict, seed: int = 0) -> int:
        """Load the engine from ``point`` and each component's saved state; returns the step.

        Same world size: this rank's own states and RNGs - the run goes on exactly as an
        uninterrupted one. Another world size: a component with ``load_elastic_state`` (the loader)
        gets the states of *every* rank that saved (their unread samples are dealt anew), the others
        rank 0's, and the RNGs are seeded from ``seed``, the rank and the step. Components missing
        from the checkpoint keep their state."""
        meta = json.loads((point.path / "meta.json").read_text())
        engine.load_checkpoint(str(point.path), tag=point.tag, load_module_strict=True)
        ds_stop_universal_loads(engine)  # DeepSpeed reads the flag at each load; later ones (best/) are not universal
        step = int(meta["step"])
        if meta["world"] == self.world:
            state = torch.load(point.path / f"rank{self.rank:05d}.pt", weights_only=False)
            set_rng_state(state.pop("rng"))
            for k, c in components.items():
                if k in state:
                    c.load_state_dict(state[k])
            return step
        states = [torch.load(point.path / f"rank{r:05d}.pt", weights_only=False) for r in range(meta["world"])]
        for k, c in components.items():
            if k in states[0] and hasattr(c, "load_elastic_state"):
                c.load_elastic_state([s[k] for s in states])
            elif k in states[0]:
                c.load_state_dict(states[0][k])
        s = seed + self.rank + 1_000_003 * step
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)
        return step

    def save_best(self, engine, step: int, keep: set[str | None]) -> str:
        """The engine's weights as the model selected on validation at ``step`` (:func:`save_best`)."""
        return save_best(engine, str(self.run_dir), step, self.rank, keep)

    def load_best(self, engine, tag: str) -> None:
        """Load the weights of ``best/<tag>`` for evaluation (:func:`load_best`)."""
        load_best(engine, str(self.run_dir), tag, self.rank, self.world)
