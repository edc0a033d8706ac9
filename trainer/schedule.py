"""The optimisation schedule in the papers' terms: epochs and a global batch, whatever the world size.

:func:`resolve_schedule` turns ``train.epochs`` / ``train.max_steps``, ``train.global_batch_size``
and ``data.batch_size`` into optimizer steps and gradient-accumulation micro-steps for the world
size at hand, so one config means the same optimisation on 1 GPU or 32. :func:`warmup_cosine` is
the learning-rate multiplier (linear warmup, cosine to 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from s5video.trainer.config import Config, ConfigError


@dataclass(frozen=True)
class Schedule:
    """Resolved schedule. Units: optimizer steps, clips."""

    max_steps: int  # optimizer steps of the run
    steps_per_epoch: int  # optimizer steps per pass over the train split (at least 1)
    global_batch: int  # clips per optimizer step over all ranks
    grad_accum: int  # micro-batches per optimizer step on each rank
    eval_every: int  # optimizer steps between validations
    checkpoint_every: int  # optimizer steps between checkpoints

    def describe(self, world: int, micro: int) -> str:
        return (f"{self.max_steps} steps ({self.max_steps / self.steps_per_epoch:.3g} epochs of {self.steps_per_epoch}); "
                f"global batch {self.global_batch} = {micro} clips x {world} ranks x {self.grad_accum} accumulation")


def resolve_schedule(cfg: Config, train_samples: int, world: int) -> Schedule:
    """Steps, accumulation and intervals for ``train_samples`` training samples on ``world`` ranks.

    Raises:
        ConfigError: ``train.global_batch_size`` is not a multiple of ``data.batch_size x world``.
    """
    t, micro = cfg.train, cfg.data.batch_size
    per_step = micro * world
    global_batch = t.global_batch_size or per_step
    if global_batch % per_step:
        fix = (f"use at most {global_batch} ranks (launch.nodes, launch.gpus_per_node)" if global_batch < world else
               f"set data.batch_size to a divisor of {global_batch // world}" if global_batch % world == 0 else
               "use a world size that divides it")
        raise ConfigError(f"train.global_batch_size: {global_batch} is not a multiple of data.batch_size x world size "
                          f"= {micro} x {world} = {per_step}; {fix}, or change train.global_batch_size")
    steps_per_epoch = max(1, train_samples // global_batch)
    max_steps = math.ceil(t.epochs * steps_per_epoch) if t.epochs else t.max_steps
    return Schedule(max_steps=max(1, max_steps), steps_per_epoch=steps_per_epoch, global_batch=global_batch,
                    grad_accum=global_batch // per_step, eval_every=t.eval_every_steps or steps_per_epoch,
                    checkpoint_every=cfg.checkpoint.every_steps or steps_per_epoch)


def warmup_cosine(warmup: int, total: int):
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine to 0 at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return f
