"""Baselines a user compares against.

* LST, Performer, Orthoformer - ViS4mer's design with its S4 layers replaced by exact softmax
  attention, FAVOR+ or Orthoformer attention (ViS4mer Table 3 / Table 4: "replacing the
  state-space layers of the ViS4mer with the corresponding ... attention layers and keeping all
  other settings the same"), with a sinusoidal positional encoding. ``lst_full`` forms the L x L
  attention matrix as the paper's LST did (for memory comparisons).
* VideoMamba-style classifier (Li et al. 2024, seeds/004): bidirectional Mamba blocks over the
  spatial-first flattened tokens (all tokens of frame 0, then frame 1, ...). The selective scan is
  the ``mamba-ssm`` CUDA kernel when that package is installed and the input is on a GPU, and the
  pure-PyTorch ``mambapy`` implementation otherwise; both behind one module interface.
"""
from __future__ import annotations

import torch
from torch import nn

from models.vis4mer import ViS4mer


def make_attention_baseline(num_classes: int, mixer: str, d_model: int = 1024, depth: int = 3, dropout: float = 0.2,
                            num_heads: int = 8, pool: str | None = None, channel_scaling: bool = True,
                            **mixer_kw) -> ViS4mer:
    """The ViS4mer decoder with an attention token mixer (``"attention"``, ``"performer"``,
    ``"orthoformer"``); ``mixer_kw``: num_features, num_landmarks, materialize, block."""
    return ViS4mer(num_classes, d_model, depth, dropout=dropout, mixer=mixer, num_heads=num_heads, pool=pool,
                   channel_scaling=channel_scaling, positional=True, **mixer_kw)


def _mamba_cuda(d_model: int, d_state: int):
    try:
        from mamba_ssm import Mamba  # noqa: PLC0415  (optional GPU dependency)
    except ImportError:
        return None
    return Mamba(d_model=d_model, d_state=d_state, d_conv=4, expand=2)


class MambaMixer(nn.Module):
    """Selective-scan mixer (B, L, D) -> (B, L, D): mamba-ssm on CUDA when present, else mambapy."""

    def __init__(self, d_model: int, d_state: int = 16):
        super().__init__()
        from mambapy.mamba import MambaBlock, MambaConfig  # noqa: PLC0415

        self.ref = MambaBlock(MambaConfig(d_model=d_model, n_layers=1, d_state=d_state, pscan=True))
        self.cuda_impl = _mamba_cuda(d_model, d_state) if torch.cuda.is_available() else None
        if self.cuda_impl is not None:  # one set of weights: the CUDA module's; the reference is not used
            del self.ref
            self.ref = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cuda_impl is not None and x.is_cuda:
            return self.cuda_impl(x)
        if self.ref is None:
            raise RuntimeError("this MambaMixer holds mamba-ssm CUDA weights; move the input to the GPU")
        return self.ref(x)


class BiMambaBlock(nn.Module):
    """Pre-norm residual bidirectional Mamba: x + fwd(LN(x)) + flip(bwd(flip(LN(x)))), (B, L, D)."""

    def __init__(self, d_model: int, d_state: int = 16):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.fwd = MambaMixer(d_model, d_state)
        self.bwd = MambaMixer(d_model, d_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)  # (B, L, D)
        return x + self.fwd(h) + self.bwd(h.flip(1)).flip(1)  # (B, L, D)


class VideoMambaClassifier(nn.Module):
    """Tokens (B, T*N, d_model) in spatial-first order -> depth BiMamba blocks -> LayerNorm ->
    mean over tokens -> head: (B, num_classes). The tokens arrive at the model's width (the
    trainer's input projection maps the encoder's width to d_model)."""

    def __init__(self, num_classes: int, d_model: int = 192, depth: int = 4, d_state: int = 16):
        super().__init__()
        self.blocks = nn.ModuleList(BiMambaBlock(d_model, d_state) for _ in range(depth))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes) if num_classes > 0 else nn.Identity()
        self.in_dim = self.out_dim = d_model

    def forward_features(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        """(B, L, d_model) -> (B, d_model); ``grid`` is not used (the order is spatial-first)."""
        h = x  # (B, L, d_model)
        for blk in self.blocks:
            h = blk(h)
        return self.norm(h).mean(1)  # (B, d_model)

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self.head(self.forward_features(x))  # (B, num_classes)
