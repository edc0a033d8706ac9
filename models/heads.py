"""Heads and task losses: seed 004's MLP head over frozen video-encoder tokens; losses for
classification (cross-entropy), regression (MSE) and multi-label (BCE with pos_weight, as for Charades)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TASKS = ("classification", "regression", "multilabel", "captioning")


class WeightedTokenAverage(nn.Module):
    """Learnable weighted average of hidden states (seed 004, "all hidden states"): tokens (B, L, D)
    -> (B, D) = sum_i a_i h_i with a = softmax_i(w . h_i + b), w, b learned. Any L; for L = 1 (the
    CLS token alone) it is that token."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)
        nn.init.zeros_(self.score.weight)  # starts as the plain mean
        nn.init.zeros_(self.score.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.score(x).softmax(1)  # (B, L, 1)
        return (a * x).sum(1)  # (B, D)


class MLPHead(nn.Module):
    """Seed 004's classifier over a frozen video encoder: tokens (B, L, d_model) -> weighted average
    (:class:`WeightedTokenAverage`; with the encoder's CLS token alone, L = 1, it is the CLS token) ->
    [Linear -> (LayerNorm) -> GELU -> Dropout] per hidden layer -> Linear: (B, num_classes).

    Seed 004's best settings: hidden [1024, 1024] (VideoMamba; [512, 512] for SVT), dropout 0.7, no
    LayerNorm. ``num_classes`` 0: forward returns the (B, hidden[-1]) features.
    """

    def __init__(self, num_classes: int, d_model: int, hidden: list[int] | tuple[int, ...] = (1024, 1024),
                 dropout: float = 0.7, layernorm: bool = False):
        super().__init__()
        self.in_dim, self.out_dim = d_model, hidden[-1] if hidden else d_model
        self.pool = WeightedTokenAverage(d_model)
        layers, width = [], d_model
        for h in hidden:
            layers += [nn.Linear(width, h), *([nn.LayerNorm(h)] if layernorm else []), nn.GELU(), nn.Dropout(dropout)]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        """(B, L, d_model) -> (B, hidden[-1]); ``grid`` is not used."""
        return self.mlp(self.pool(x))  # (B, hidden[-1])

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self.head(self.forward_features(x))  # (B, num_classes)


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
    if task == "captioning":
        raise ValueError("task 'captioning': the captioner computes its own cross-entropy (forward(..., captions=))")
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
