"""ViS4mer (Islam & Bertasius, ECCV 2022): multi-scale temporal S4 decoder over frozen frame tokens.

Two blocks (``block``); each halves the channels (1024 -> 512 -> 256 -> 128) and pools the tokens:

* ``"authors"`` (default) - the public code that produced the paper's tables (``models.py`` of
  md-mohaiminul/ViS4mer): ``x = x + Dropout(S4(LN(x))); x = GELU(Linear(Pool(x)))``, pooling
  AvgPool1d(2). The default because a user reproducing the released numbers needs it.
* ``"paper"`` - eq. 4 as written: ``x_s4 = S4(LN(x)); x_mlp = MLP(Pool(x_s4));
  x_skip = Linear(Pool(x)); x_out = x_mlp + x_skip``, pooling ``max_st``.

``pool=None`` takes the block's own pooling (authors: ``avg1d``, paper: ``max_st``). The paper's
pooling (section 3, "Spatiotemporal Resolution Reduction"; section 4.2):

    "We reduce the space-time resolution of our input tensor by a factor of s_T x s_H x s_W using
    a max-pooling layer where s_T x s_H x s_W is the stride along each axis of the input tensor."
    "Each block has a pooling layer with a kernel of 1 x 2 x 2, stride of 1 x 2 x 2, and padding
    of 1 x 1 x 1."

* ``"max_st"`` (default) - that max-pool over the (T, H', W') token grid: 60 x 14 x 14 -> 60 x 7 x 7
  -> 60 x 3 x 3 -> 60 x 1 x 1. The stated padding is not applied: a kernel of 1 along T admits no
  padding, and padding H', W' by 1 would give 14 -> 8, not the stated reduction by the stride.
* ``"avg1d"`` - the public code's AvgPool1d(2) over the flattened frame-major sequence
  (11,760 -> 5,880 -> 2,940 -> 1,470 tokens).
* ``"none"`` - no pooling (Table 5's ablation); ``channel_scaling=False`` keeps the width (Table 5).

LST (the paper's baseline) is the same design with self-attention instead of S4 (``mixer="attention"``),
Performer and Orthoformer (Table 4) with those attentions; all three add a sinusoidal positional
encoding to the tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from s5video.models.attention import MIXERS, OrthoformerAttention, PerformerAttention, SelfAttention, sinusoidal_positions
from s5video.models.ssm import S4, ChannelDropout


POOLS = ("avg1d", "max_st", "none")
BLOCKS = ("authors", "paper")
BLOCK_POOL = {"authors": "avg1d", "paper": "max_st"}  # each block's own pooling (pool=None)


def block_pool(block: str, pool: str | None) -> str:
    """The pooling a block runs: ``pool``, or the block's own when None. Raises ValueError for an
    unknown block or pooling, naming the allowed values."""
    if block not in BLOCKS:
        raise ValueError(f"block: {block!r} not allowed; allowed values: {', '.join(BLOCKS)}")
    pool = BLOCK_POOL[block] if pool is None else pool
    if pool not in POOLS:
        raise ValueError(f"pool: {pool!r} not allowed; allowed values: {', '.join(POOLS)}")
    return pool


def pool_tokens(x: torch.Tensor, pool: str, grid: tuple[int, int, int] | None):
    """Reduce the sequence. x: (B, L, D) -> (B, L', D), new grid (T, H', W') or None.

    ``avg1d`` halves L (a sequence of one token is returned as is); ``max_st`` max-pools each
    frame's H' x W' grid with kernel = stride = 1 x 2 x 2 (a side of 1 is left as is); ``none``
    keeps every token (Table 5's "no pooling"). Raises ValueError for ``max_st`` without a grid.
    """
    if pool == "none" or (pool == "avg1d" and x.shape[1] < 2):
        return x, grid
    if pool == "avg1d":  # AvgPool1d(2) along L (an odd last token is dropped), without a transposed copy
        B, L, D = x.shape
        return x[:, :L // 2 * 2].reshape(B, L // 2, 2, D).mean(2), None  # (B, L // 2, D)
    if pool == "max_st":
        if grid is None or grid[0] * grid[1] * grid[2] != x.shape[1]:
            raise ValueError(f"pool='max_st' needs tokens on a (T, H', W') grid; got L={x.shape[1]}, grid={grid} "
                             "(patch tokens without CLS: model.frame_tokens=patch or cls)")
        T, h, w = grid
        kernel = (1, min(2, h), min(2, w))
        if kernel == (1, 1, 1):
            return x, grid
        v = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], T, h, w)  # (B, D, T, H', W')
        v = F.max_pool3d(v, kernel_size=kernel)  # (B, D, T, H'/2, W'/2)
        return v.flatten(2).transpose(1, 2), tuple(v.shape[2:])  # (B, L', D)
    raise ValueError(f"pool: {pool!r} not allowed; allowed values: {', '.join(POOLS)}")


def make_mixer(mixer: str, d_model: int, d_state: int, kernel: str, bidirectional: bool, dropout: float,
               num_heads: int, num_features: int, num_landmarks: int, materialize: bool) -> nn.Module:
    """The token mixer of one block, (B, L, D) -> (B, L, D): S4 (ViS4mer) or an attention
    (LST, Performer, Orthoformer: ViS4mer Table 4 swaps only this layer)."""
    if mixer == "s4":
        return S4(d_model, d_state, kernel=kernel, bidirectional=bidirectional, dropout=dropout)
    if mixer == "attention":
        return SelfAttention(d_model, num_heads, materialize=materialize)
    if mixer == "performer":
        return PerformerAttention(d_model, num_heads, num_features)
    if mixer == "orthoformer":
        return OrthoformerAttention(d_model, num_heads, num_landmarks)
    raise ValueError(f"mixer: {mixer!r} not allowed; allowed values: {', '.join(MIXERS)}")


class ViS4merBlock(nn.Module):
    """One multi-scale block as the paper writes it (eq. 4): (B, L, D_in) -> (B, L', D_out); L'
    from the pooling."""

    def __init__(self, d_in: int, d_out: int, mixer: nn.Module, pool: str = "max_st", dropout: float = 0.2):
        super().__init__()
        self.pool = pool
        self.norm = nn.LayerNorm(d_in)
        self.mixer = mixer
        self.mlp = nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), ChannelDropout(dropout))
        self.skip = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor, grid=None):
        x_s4 = self.mixer(self.norm(x))  # (B, L, D_in)
        pooled_s4, new_grid = pool_tokens(x_s4, self.pool, grid)  # (B, L', D_in)
        pooled_x, _ = pool_tokens(x, self.pool, grid)  # (B, L', D_in)
        return self.mlp(pooled_s4) + self.skip(pooled_x), new_grid  # (B, L', D_out)


class ViS4merAuthorsBlock(nn.Module):
    """One block as ViS4mer's public code runs it (``models.py``, prenorm): a residual S4 layer,
    then pooling, a Linear that halves the width and GELU: (B, L, D_in) -> (B, L', D_out).

    ``x = x + Dropout(S4(LN(x)))``; ``x = GELU(Linear(Pool(x)))``. The authors' dropout there is
    ``nn.Dropout2d`` on (B, H, L); here :class:`ChannelDropout` (one draw per sample and channel).
    """

    def __init__(self, d_in: int, d_out: int, mixer: nn.Module, pool: str = "avg1d", dropout: float = 0.2):
        super().__init__()
        self.pool = pool
        self.norm = nn.LayerNorm(d_in)
        self.mixer = mixer
        self.dropout = ChannelDropout(dropout)
        self.linear = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor, grid=None):
        x = x + self.dropout(self.mixer(self.norm(x)))  # (B, L, D_in) residual S4 layer
        x, new_grid = pool_tokens(x, self.pool, grid)  # (B, L', D_in)
        return F.gelu(self.linear(x)), new_grid  # (B, L', D_out)


class ViS4merDecoder(nn.Module):
    """Stack of ``depth`` blocks, then the mean over tokens: (B, L, D) -> (B, D_out).

    Args: d_model (input width D); depth; d_state (N) and kernel ('s4'|'s4d') of the S4 mixer;
    pool ('max_st'|'avg1d'|'none'; None: the block's own); block ('authors' | 'paper', see the
    module docstring); channel_scaling (halve the width in each block, D_out =
    D / 2^depth; False keeps D: Table 5's "no scaling"); dropout; mixer ('s4' | 'attention' |
    'performer' | 'orthoformer'); num_heads, num_features (Performer m), num_landmarks
    (Orthoformer m), materialize (LST with the L x L matrix formed); positional (add the fixed
    sinusoidal encoding of the token index to the input: attention mixers have no other notion
    of order; S4 is ordered by construction and gets none by default).
    """

    def __init__(self, d_model: int = 1024, depth: int = 3, d_state: int = 64, kernel: str = "s4",
                 pool: str | None = None, dropout: float = 0.2, mixer: str = "s4", num_heads: int = 8,
                 bidirectional: bool = False, channel_scaling: bool = True, num_features: int = 256,
                 num_landmarks: int = 128, materialize: bool = False, positional: bool | None = None,
                 block: str = "authors"):
        super().__init__()
        pool = block_pool(block, pool)
        self.block, self.pool = block, pool
        widths = [d_model // 2 ** i if channel_scaling else d_model for i in range(depth + 1)]
        block_cls = ViS4merAuthorsBlock if block == "authors" else ViS4merBlock
        self.blocks = nn.ModuleList(
            block_cls(widths[i], widths[i + 1],
                         make_mixer(mixer, widths[i], d_state, kernel, bidirectional, dropout,
                                    max(1, min(num_heads, widths[i] // 16)), num_features, num_landmarks, materialize),
                         pool, dropout)
            for i in range(depth))
        self.positional = mixer != "s4" if positional is None else positional
        self.out_dim = widths[-1]

    def forward_tokens(self, x: torch.Tensor, grid=None) -> list[torch.Tensor]:
        """All block outputs: [(B, L1, D1), (B, L2, D2), ...]."""
        if self.positional:
            x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype)  # (B, L, D)
        outs = []
        for blk in self.blocks:
            x, grid = blk(x, grid)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self.forward_tokens(x, grid)[-1].mean(1)  # (B, D_out)


class ViS4mer(nn.Module):
    """Frozen-token classifier: tokens (B, L, D) -> decoder -> Linear head -> (B, num_classes).

    ``grid=(T, H', W')`` of the tokens (frame-major) is needed only for ``pool='max_st'``.
    ``block='authors'`` (default) with ``pool=None`` is the authors' released model (a state dict
    of theirs loads through :func:`models.convert.load_authors_vis4mer`).
    ``forward_features`` gives the pooled (B, D_out) embedding (used by LSMCL). The keyword
    arguments are :class:`ViS4merDecoder`'s; ``mixer`` other than 's4' gives the attention
    baselines (LST, Performer, Orthoformer).
    """

    def __init__(self, num_classes: int, d_model: int = 1024, depth: int = 3, d_state: int = 64,
                 kernel: str = "s4", pool: str | None = None, dropout: float = 0.2, mixer: str = "s4", **decoder_kw):
        super().__init__()
        self.decoder = ViS4merDecoder(d_model, depth, d_state, kernel, pool, dropout, mixer, **decoder_kw)
        self.head = nn.Linear(self.decoder.out_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.in_dim, self.out_dim = d_model, self.decoder.out_dim

    def forward_features(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self.decoder(x, grid)  # (B, D_out)

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self.head(self.forward_features(x, grid))  # (B, num_classes)
