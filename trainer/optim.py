"""The training state, and the optimizer and learning-rate schedule the DeepSpeed engine steps,
with a gate that lets the trainer discard one whole optimizer step.

DeepSpeed counts micro-batches itself and applies the optimizer at every ``gradient_accumulation_steps``-th
``engine.step()``; every ZeRO stage then zeroes its gradient buffers. A step whose micro-batches
turned out non-finite is discarded by running its remaining micro-steps with zero losses (the
count and ZeRO's reductions stay aligned on every rank) and closing the gate for the boundary's
``engine.step()``: AdamW's update (moments, step count) and the schedule's advance do not happen,
the partial gradients are zeroed by DeepSpeed as after any step. Only public torch APIs are used:
the gate sits in our optimizer and scheduler, which DeepSpeed calls (ZeRO 1-3 step the optimizer we
pass on their fp32 partitions; the bf16 optimizer likewise).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR


@dataclass
class TrainState:
    """The run's own progress, saved whole in every checkpoint (with the loader's state and the
    engine's) and restored on resume."""

    step: int = 0  # optimizer steps applied
    nonfinite: int = 0  # steps discarded in a row for a non-finite loss (train.max_nonfinite_steps)
    best: dict | None = None  # the best validation so far: {"step", "value", "metric", "val", "tag"}

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """``state``: a :meth:`state_dict`, or a checkpoint's rank state (keys it lacks keep their value)."""
        for k in ("step", "nonfinite", "best"):
            if k in state:
                setattr(self, k, state[k])


class GatedAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` whose ``step`` does nothing while :attr:`skip_update` is set
    (:func:`skip_update`). Its ``state_dict`` is AdamW's."""

    skip_update = False

    def step(self, closure=None):
        if self.skip_update:
            return None
        return super().step(closure)


class GatedLambdaLR(LambdaLR):
    """``LambdaLR`` that does not advance while its optimizer's ``skip_update`` is set."""

    def step(self, epoch=None):
        if getattr(self.optimizer, "skip_update", False):
            return
        super().step() if epoch is None else super().step(epoch)


@contextmanager
def skip_update(optimizer: GatedAdamW, skip: bool = True):
    """Within the block, ``optimizer`` (and any :class:`GatedLambdaLR` on it) ignores ``step()``
    when ``skip``."""
    optimizer.skip_update = skip
    try:
        yield
    finally:
        optimizer.skip_update = False


def zeros_like_batch(batch: dict) -> dict:
    """``batch`` with every floating-point tensor zeroed (labels, keys and captions kept): a finite
    input of the same shapes for a discarded micro-step's zero loss."""
    return {k: torch.zeros_like(v) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
