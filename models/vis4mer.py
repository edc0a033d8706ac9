"""ViS4mer (Islam & Bertasius, ECCV 2022): multi-scale temporal S4 decoder over frozen frame tokens.

Block (paper eq. 4): ``x_s4 = S4(LN(x)); x_mlp = MLP(Pool(x_s4)); x_skip = Linear(Pool(x));
x_out = x_mlp + x_skip``. Each block halves the channels (1024 -> 512 -> 256 -> 128) and pools the
sequence by 2. Two pooling options:

* ``"avg1d"`` - the public code's AvgPool1d(2) over the flattened frame-major sequence
  (11,820 -> 5,910 -> 2,955 -> 1,477 tokens);
* ``"max_st"`` - the paper's max-pool with kernel 1 x 2 x 2 over the (T, H', W') grid
  (60 x 14 x 14 -> 60 x 7 x 7 -> 60 x 3 x 3 -> 60 x 1 x 1); needs grid tokens (no CLS).

LST (the paper's baseline) is the same design with self-attention instead of S4: ``mixer="attention"``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.ssm import S4, ChannelDropout


class SelfAttention(nn.Module):
    """Multi-head self-attention on (B, L, H) through ``F.scaled_dot_product_attention`` (LST's mixer)."""

    def __init__(self, d_model: int, num_heads: int = 8, dropout: float = 0.0):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} must be divisible by num_heads {num_heads}")
        self.h = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.h, D // self.h).permute(2, 0, 3, 1, 4)  # 3 x (B, h, L, d)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, L, D))  # (B, L, H)


def pool_tokens(x: torch.Tensor, pool: str, grid: tuple[int, int, int] | None):
    """Halve the sequence. x: (B, L, D) -> (B, L', D), new grid (T, H', W') or None. A sequence
    of one token is returned as is (nothing left to pool)."""
    if x.shape[1] < 2 and pool == "avg1d":
        return x, grid
    if pool == "avg1d":
        return F.avg_pool1d(x.transpose(1, 2), 2).transpose(1, 2), None  # (B, L // 2, D)
    if pool == "max_st":
        if grid is None or grid[0] * grid[1] * grid[2] != x.shape[1]:
            raise ValueError(f"pool='max_st' needs tokens on a (T, H', W') grid; got L={x.shape[1]}, grid={grid}")
        T, h, w = grid
        v = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], T, h, w)  # (B, D, T, H', W')
        v = F.max_pool3d(v, kernel_size=(1, 2, 2))  # (B, D, T, H'/2, W'/2)
        return v.flatten(2).transpose(1, 2), tuple(v.shape[2:])  # (B, L', D)
    raise ValueError(f"pool: {pool!r} not allowed; allowed values: 'avg1d', 'max_st'")


class ViS4merBlock(nn.Module):
    """One multi-scale block (eq. 4): (B, L, D_in) -> (B, L/2, D_out)."""

    def __init__(self, d_in: int, d_out: int, d_state: int = 64, kernel: str = "s4d", pool: str = "avg1d",
                 dropout: float = 0.2, mixer: str = "s4", num_heads: int = 8, bidirectional: bool = False):
        super().__init__()
        self.pool = pool
        self.norm = nn.LayerNorm(d_in)
        if mixer == "s4":
            self.mixer = S4(d_in, d_state, kernel=kernel, bidirectional=bidirectional, dropout=dropout)
        elif mixer == "attention":
            self.mixer = SelfAttention(d_in, num_heads)
        else:
            raise ValueError(f"mixer: {mixer!r} not allowed; allowed values: 's4', 'attention'")
        self.mlp = nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), ChannelDropout(dropout))
        self.skip = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor, grid=None):
        x_s4 = self.mixer(self.norm(x))  # (B, L, D_in)
        pooled_s4, new_grid = pool_tokens(x_s4, self.pool, grid)  # (B, L/2, D_in)
        pooled_x, _ = pool_tokens(x, self.pool, grid)  # (B, L/2, D_in)
        return self.mlp(pooled_s4) + self.skip(pooled_x), new_grid  # (B, L/2, D_out)


class ViS4merDecoder(nn.Module):
    """Stack of blocks halving the width each time, then the mean over tokens: (B, L, D) -> (B, D / 2^depth).

    Args: d_model (input width D), depth (blocks), d_state (N), kernel ('s4d'|'s4'),
    pool ('avg1d'|'max_st'), dropout, mixer ('s4' | 'attention' for LST), num_heads (attention).
    """

    def __init__(self, d_model: int = 1024, depth: int = 3, d_state: int = 64, kernel: str = "s4d",
                 pool: str = "avg1d", dropout: float = 0.2, mixer: str = "s4", num_heads: int = 8,
                 bidirectional: bool = False):
        super().__init__()
        widths = [d_model // 2 ** i for i in range(depth + 1)]
        self.blocks = nn.ModuleList(
            ViS4merBlock(widths[i], widths[i + 1], d_state, kernel, pool, dropout, mixer,
                         max(1, min(num_heads, widths[i] // 16)), bidirectional)
            for i in range(depth))
        self.out_dim = widths[-1]

    def forward_tokens(self, x: torch.Tensor, grid=None) -> list[torch.Tensor]:
        """All block outputs: [(B, L/2, D/2), (B, L/4, D/4), ...]."""
        outs = []
        for blk in self.blocks:
            x, grid = blk(x, grid)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self.forward_tokens(x, grid)[-1].mean(1)  # (B, D_out)


class ViS4mer(nn.Module):
    """Frozen-token classifier: tokens (B, L, D) -> ViS4mer decoder -> Linear head -> (B, num_classes).

    ``grid=(T, H', W')`` is needed only for ``pool='max_st'``. ``forward_features`` gives the
    pooled (B, D_out) embedding (used by LSMCL).
    """

    def __init__(self, num_classes: int, d_model: int = 1024, depth: int = 3, d_state: int = 64,
                 kernel: str = "s4d", pool: str = "avg1d", dropout: float = 0.2, mixer: str = "s4",
                 num_heads: int = 8, bidirectional: bool = False):
        super().__init__()
        self.decoder = ViS4merDecoder(d_model, depth, d_state, kernel, pool, dropout, mixer, num_heads, bidirectional)
        self.head = nn.Linear(self.decoder.out_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.out_dim = self.decoder.out_dim

    def forward_features(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self.decoder(x, grid)  # (B, D_out)

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self.head(self.forward_features(x, grid))  # (B, num_classes)
