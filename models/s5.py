"""S5 = Selective S4 (Wang et al., CVPR 2023): a mask generator guided by a momentum S4 keeps the
top-k informative tokens (Gumbel-softmax, straight-through), then the ViS4mer decoder runs on them.

Poster (seeds/000): ``x_S4 = S4_hat(x)``, ``S4_hat = m S4_hat + (1 - m) S4`` (EMA of the S4
model); ``MG(x_S4) = p(c | x_S4)``, a softmax over the tokens; top-k by Gumbel-softmax with the
straight-through estimator; ``x_hat = x (x) Mask``; ``x_out = MLP(S4(x_hat))``.

Here the momentum copy is of the decoder's first block input path (LayerNorm + S4 mixer), so the
mask generator sees S4 features of every token at full resolution. Two ways to apply the mask
(``selection``):

* ``"gather"`` (default) - the kept tokens are gathered in temporal order and the decoder runs on
  k = round(keep_ratio * L) tokens: that is where the speed and memory savings come from (the
  decoder's cost scales with k / L). The straight-through gradient reaches a dropped token's score
  only through the softmax's normaliser: every dropped token gets the same signal times its weight.
* ``"mask"`` - as the poster writes it, ``x_hat = x (x) Mask`` over the whole sequence and the
  decoder runs on all L tokens (dropped ones are zero vectors): no saving in time or memory, but a
  dropped token i gets its own gradient ``<dL/dx_hat_i, x_i>``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from s5video.models.vis4mer import ViS4mer

MASK_GENERATORS = ("linear", "linear_s4", "single_tx", "single_tx_s4", "stacked_tx", "stacked_tx_s4", "random")
SELECTIONS = ("gather", "mask")


def gumbel_topk(logits: torch.Tensor, k: int, tau: float = 1.0, noise: bool = True):
    """Straight-through Gumbel top-k over the token axis.

    logits: (B, L). Returns (mask (B, L): exactly k ones per row in the forward pass, gradient of
    softmax((logits + g) / tau) in the backward pass; idx (B, k): kept positions, ascending).
    Jang et al. 2017 (Gumbel-softmax), Bengio et al. 2013 (straight-through).
    """
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"k must be in [1, L={logits.shape[-1]}], got {k}")
    if noise:
        u = torch.rand_like(logits, dtype=torch.float32).clamp_(1e-10, 1.0 - 1e-7)
        logits = logits.float() - torch.log(-torch.log(u))  # (B, L) + Gumbel(0, 1)
    y_soft = F.softmax(logits.float() / tau, dim=-1)  # (B, L)
    idx = torch.topk(y_soft, k, dim=-1).indices.sort(dim=-1).values  # (B, k) in temporal order
    hard = torch.zeros_like(y_soft).scatter_(-1, idx, 1.0)  # (B, L)
    return hard + (y_soft - y_soft.detach()), idx  # straight-through: value = hard


def _gather_masked(x: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """gather(x (x) mask) = gather(x) (x) gather(mask): x (B, L, D), mask (B, L), idx (B, k) -> (B, k, D),
    without forming the (B, L, D) product."""
    kept = torch.gather(x, 1, idx[..., None].expand(*idx.shape, x.shape[-1]))  # (B, k, D)
    return kept * torch.gather(mask, 1, idx).to(x.dtype)[..., None]  # (B, k, D)


class MaskGenerator(nn.Module):
    """Token scores p(c | x): (B, L, D) -> logits (B, L).

    kind: ``linear`` (LayerNorm + Linear), ``single_tx`` (one transformer encoder layer + Linear),
    ``stacked_tx`` (two layers), ``random`` (no parameters: uniform random scores); the ``_s4``
    suffix is handled by :class:`S5` (which features are fed), not here.
    """

    def __init__(self, kind: str, d_model: int, num_heads: int = 4):
        super().__init__()
        base = kind.removesuffix("_s4")
        if kind not in MASK_GENERATORS:
            raise ValueError(f"mask_generator: {kind!r} not allowed; allowed values: {', '.join(MASK_GENERATORS)}")
        self.kind = base
        layers: list[nn.Module] = []
        if base in ("single_tx", "stacked_tx"):
            heads = max(1, min(num_heads, d_model // 16))
            for _ in range(1 if base == "single_tx" else 2):
                layers.append(nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout=0.0,
                                                         batch_first=True, norm_first=True))
        self.body = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(d_model) if base != "random" else None
        self.score = nn.Linear(d_model, 1) if base != "random" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "random":
            return torch.rand(x.shape[:2], device=x.device)  # (B, L)
        return self.score(self.norm(self.body(x))).squeeze(-1)  # (B, L)


class S5(nn.Module):
    """Selective S4 classifier: tokens (B, L, D) -> (B, num_classes) (or (B, D_out) features).

    Args: num_classes; the ViS4mer decoder arguments (d_model, depth, d_state, kernel, dropout,
    channel_scaling, block ``authors`` | ``paper``; pool ``avg1d`` or ``none`` only: the selected tokens no longer form a grid, so
    they are pooled in temporal order); keep_ratio (fraction of
    tokens kept, k = max(1, round(keep_ratio * L))); mask_generator (one of ``MASK_GENERATORS``);
    gumbel_temperature (tau); momentum (m of the EMA S4); selection (``gather`` | ``mask``, see the
    module docstring).
    Call :meth:`update_momentum` after each optimizer step. Submodules: ``mask_generator``, ``s4_hat``
    (the momentum copy of the first block's LayerNorm + S4) and ``vis4mer`` (the decoder and head the
    selected tokens go through).
    """

    def __init__(self, num_classes: int, d_model: int = 1024, depth: int = 3, d_state: int = 64,
                 kernel: str = "s4", dropout: float = 0.2, keep_ratio: float = 0.5,
                 mask_generator: str = "linear_s4", gumbel_temperature: float = 1.0, momentum: float = 0.996,
                 bidirectional: bool = False, pool: str = "avg1d", channel_scaling: bool = True,
                 block: str = "authors", selection: str = "gather"):
        super().__init__()
        if selection not in SELECTIONS:
            raise ValueError(f"selection: {selection!r} not allowed; allowed values: {', '.join(SELECTIONS)}")
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
        if pool not in ("avg1d", "none"):
            raise ValueError(f"pool: {pool!r} not allowed for S5; allowed values: 'avg1d', 'none' (the selected "
                             "tokens are no longer on a grid)")
        self.keep_ratio, self.tau, self.m, self.selection = keep_ratio, gumbel_temperature, momentum, selection
        self.use_s4_features = mask_generator.endswith("_s4")
        self.vis4mer = ViS4mer(num_classes, d_model, depth, d_state, kernel, pool, dropout, "s4",
                                bidirectional=bidirectional, channel_scaling=channel_scaling, block=block)
        self.mask_generator = MaskGenerator(mask_generator, d_model)
        first = self.vis4mer.decoder.blocks[0]
        self.s4_hat = copy.deepcopy(nn.Sequential(first.norm, first.mixer)) if self.use_s4_features else None
        if self.s4_hat is not None:
            for p in self.s4_hat.parameters():
                p.requires_grad_(False)
            self.s4_hat.eval()
        self.in_dim, self.out_dim = d_model, self.vis4mer.out_dim
        self.last_keep_idx: torch.Tensor | None = None  # (B, k) of the last forward, for inspection

    def train(self, mode: bool = True) -> "S5":
        """Train/eval mode; the momentum S4 always runs without dropout: it is an average of the
        trained weights, not trained itself (as DINO's momentum teacher runs without stochastic depth)."""
        super().train(mode)
        if self.s4_hat is not None:
            self.s4_hat.eval()
        return self

    @torch.no_grad()
    def update_momentum(self, m: float | None = None) -> None:
        """EMA of the S4 model: ``S4_hat = m * S4_hat + (1 - m) * S4`` (parameters and buffers)."""
        if self.s4_hat is None:
            return
        m = self.m if m is None else m
        first = self.vis4mer.decoder.blocks[0]
        src = nn.Sequential(first.norm, first.mixer)
        for p_hat, p in zip(self.s4_hat.parameters(), src.parameters()):
            p_hat.mul_(m).add_(p.detach(), alpha=1 - m)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Mask generator logits p(c | x) over the tokens: (B, L, D) -> (B, L), fed with the momentum
        S4 features (``*_s4`` generators, no gradient to S4_hat) or the tokens themselves."""
        if self.use_s4_features:
            with torch.no_grad():
                x = self.s4_hat(x)  # (B, L, D) momentum S4 features
        return self.mask_generator(x)  # (B, L)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Keep the top-k tokens: (B, L, D) -> (B, k, D) = gather(x (x) mask), in temporal order
        (``selection="gather"``), or (B, L, D) = x (x) mask (``"mask"``)."""
        L = x.shape[1]
        k = max(1, round(self.keep_ratio * L))
        if self.mask_generator.kind != "random" and torch.is_grad_enabled():
            # recomputed in backward from x: keeps neither the momentum S4 features nor the
            # generator's activations, (B, L, D) each, through the whole backward pass
            logits = checkpoint(self.scores, x, use_reentrant=False)  # (B, L)
        else:
            logits = self.scores(x)  # (B, L)
        mask, idx = gumbel_topk(logits, k, self.tau, noise=self.training)  # (B, L), (B, k)
        self.last_keep_idx = idx
        if self.selection == "mask":
            return x * mask.to(x.dtype)[..., None]  # (B, L, D), dropped tokens zero
        if torch.is_grad_enabled():  # the product's backward regathers x instead of keeping (B, k, D)
            return checkpoint(_gather_masked, x, mask, idx, use_reentrant=False)
        return _gather_masked(x, mask, idx)  # (B, k, D)

    def forward_features(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        """(B, L, D) -> (B, D_out); ``grid`` is accepted for a uniform interface and not used."""
        return self.vis4mer.forward_features(self.select(x))  # (B, D_out)

    def forward(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self.vis4mer.head(self.forward_features(x))  # (B, num_classes)
