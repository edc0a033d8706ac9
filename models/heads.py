"""Task losses on the heads' outputs: classification (cross-entropy), regression (MSE) and
multi-label (BCE with pos_weight, as for Charades)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

TASKS = ("classification", "regression", "multilabel")


def task_loss(task: str, logits: torch.Tensor, target: torch.Tensor, pos_weight: float | torch.Tensor | None = None,
              label_smoothing: float = 0.0) -> torch.Tensor:
    """Loss of one batch, in float32.

    classification: logits (B, C), target (B,) int64 class ids -> cross-entropy.
    regression: logits (B, 1) or (B,), target (B,) float -> mean squared error.
    multilabel: logits (B, C), target (B, C) multi-hot {0, 1} -> BCE-with-logits, ``pos_weight``
    (scalar or (C,)) up-weights positives (Charades: 2).
    Raises ValueError for an unknown task.
    """
    logits = logits.float()
    if task == "classification":
        return F.cross_entropy(logits, target.long(), label_smoothing=label_smoothing)
    if task == "regression":
        return F.mse_loss(logits.reshape(-1), target.float().reshape(-1))
    if task == "multilabel":
        pw = None
        if pos_weight is not None:
            pw = torch.as_tensor(pos_weight, dtype=torch.float32, device=logits.device).expand(logits.shape[-1])
        return F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=pw)
    raise ValueError(f"task: {task!r} not allowed; allowed values: {', '.join(TASKS)}")


def multi_hot(labels: list[list[int]], num_classes: int) -> torch.Tensor:
    """[[class ids], ...] -> (B, C) float multi-hot."""
    out = torch.zeros(len(labels), num_classes)
    for i, ls in enumerate(labels):
        out[i, list(ls)] = 1.0
    return out
