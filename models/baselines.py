"""Baselines a user compares against.

* LST, Performer, Orthoformer - ViS4mer's design with its S4 layers replaced by exact softmax
  attention, FAVOR+ or Orthoformer attention (ViS4mer Table 3 / Table 4: "replacing the
  state-space layers of the ViS4mer with the corresponding ... attention layers and keeping all
  other settings the same"), with a sinusoidal positional encoding. ``lst_full`` forms the L x L
  attention matrix as the paper's LST did (for memory comparisons).
* ``bimamba``: VideoMamba's bidirectional Mamba blocks (Li et al. 2024, seeds/004) as a decoder over
  the spatial-first flattened tokens (all tokens of frame 0, then frame 1, ...): the same block
  as the ``videomamba_*`` video encoders (:mod:`models.videomamba`), whose selective scan is the
  ``mamba-ssm`` CUDA kernel when installed and on a GPU, else ``mambapy``'s parallel scan.
"""
from __future__ import annotations

import torch
from torch import nn

from s5video.models.vis4mer import ViS4mer


def make_attention_baseline(num_classes: int, mixer: str, d_model: int = 1024, depth: int = 3, dropout: float = 0.2,
                            num_heads: int = 8, pool: str | None = None, channel_scaling: bool = True,
                            **mixer_kw) -> ViS4mer:
    """The ViS4mer decoder with an attention token mixer (``"attention"``, ``"performer"``,
    ``"orthoformer"``); ``mixer_kw``: num_features, num_landmarks, materialize, block."""
    return ViS4mer(num_classes, d_model, depth, dropout=dropout, mixer=mixer, num_heads=num_heads, pool=pool,
                   channel_scaling=channel_scaling, positional=True, **mixer_kw)


class BiMambaDecoder(nn.Module):
    """The decoder baseline of VideoMamba's design (Li et al. 2024, seeds/004) over frame-encoder
    tokens: (B, T*N, d_model) in spatial-first order -> ``depth`` residual blocks
    ``x + BiMamba(RMSNorm(x))`` (:class:`models.videomamba.Block`, the video encoder's own block) ->
    RMSNorm -> mean over tokens -> head: (B, num_classes). The tokens arrive at the model's width
    (the factory's input projection maps the encoder's width to d_model)."""

    def __init__(self, num_classes: int, d_model: int = 192, depth: int = 4, d_state: int = 16):
        super().__init__()
        from s5video.models.videomamba import Block  # noqa: PLC0415
        self.blocks = nn.ModuleList(Block(d_model, d_state) for _ in range(depth))
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.head = nn.Linear(d_model, num_classes) if num_classes > 0 else nn.Identity()
        self.in_dim = self.out_dim = d_model

    def forward_features(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        """(B, L, d_model) -> (B, d_model); ``grid`` is not used (the order is spatial-first)."""
        h = x  # (B, L, d_model)
        for blk in self.blocks:
            h = blk(h)  # (B, L, d_model)
        return self.norm(h).mean(1)  # (B, d_model)

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self.head(self.forward_features(x))  # (B, num_classes)
