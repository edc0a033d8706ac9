"""LSMCL: long-short masked contrastive learning (Wang et al., CVPR 2023, S5 poster).

Short clips X_S and long clips X_L of the same videos; random token masking ``R_mask(x, eta)`` on
both branches, as the poster writes it: ``q = f_q(R_mask(x_S, eta))``, ``k = f_k(R_mask(x_L, eta))``
(each branch draws its own mask); a query encoder f_q and a key encoder f_k; long and short clips
alternately play query and key; InfoNCE over the batch with temperature rho (poster):

    L = sum_i -log( exp(q_i . k_i / rho) / (exp(q_i . k_i / rho) + sum_{j != i} exp(q_i . k_j / rho)) )

(we average over the global batch instead of summing; negatives k_j come from every
data-parallel rank).

Momentum: the poster's update line reads ``f_q <- m f_q + (1 - m) f_k``; we update the key
encoder from the query encoder, ``f_k <- m f_k + (1 - m) f_q``, as MoCo (He et al. 2020, eq. 2)
does - only f_q receives gradients, so the poster's direction would never move f_k's weights
toward anything learned.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def random_token_mask(x: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """R_mask(x, eta): drop a random ``ratio`` of the tokens of each sample, keep the rest in order.

    x: (B, L, D) -> (B, L - round(ratio * L), D).
    """
    B, L, D = x.shape
    keep = max(1, L - round(ratio * L))
    if keep == L:
        return x
    noise = torch.rand(B, L, device=x.device, generator=generator)  # (B, L)
    idx = noise.argsort(dim=1)[:, :keep].sort(dim=1).values  # (B, keep)
    return torch.gather(x, 1, idx[..., None].expand(B, keep, D))  # (B, keep, D)


def gather_with_local_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather (B, E) across the default process group -> (world * B, E); the slice of this
    rank keeps its autograd graph (gradient to the local part only). Identity when not distributed.
    All ranks must hold the same B."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, 0)


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """InfoNCE of local queries q (B, E) against the keys of the whole data-parallel batch.

    q, k are L2-normalised here. The positive of q_i is k_i of the same rank; every other key of
    every rank is a negative. Returns the mean over the local queries (so the average over ranks
    equals the single-process loss on the global batch).
    """
    q = F.normalize(q.float(), dim=-1)
    k = F.normalize(k.float(), dim=-1)
    k_all = gather_with_local_grad(k) if gather else k  # (world * B, E)
    offset = dist.get_rank() * q.shape[0] if gather and dist.is_available() and dist.is_initialized() else 0
    logits = q @ k_all.T / temperature  # (B, world * B)
    labels = torch.arange(q.shape[0], device=q.device) + offset  # (B,)
    return F.cross_entropy(logits, labels)


class ProjectionHead(nn.Module):
    """MLP projection (B, D) -> (B, E) for the contrastive space."""

    def __init__(self, d_in: int, d_out: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_in), nn.GELU(), nn.Linear(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LSMCL(nn.Module):
    """LSMCL pretraining wrapper around a token encoder with ``forward_features`` and ``out_dim``
    (e.g. :class:`models.s5.S5`). Both branches are masked with ratio ``mask_ratio`` (eta).

    forward(long (B, L_long, D), short (B, L_short, D), query) -> scalar loss, where ``query`` is
    ``"short"`` (short clips are queries, long clips keys), ``"long"``, or ``"both"`` (the mean of
    the two directions). The trainer alternates ``"short"`` / ``"long"`` by step.
    Call :meth:`update_momentum` after each optimizer step.
    """

    def __init__(self, encoder: nn.Module, proj_dim: int = 128, momentum: float = 0.996, mask_ratio: float = 0.5,
                 temperature: float = 0.07):
        super().__init__()
        self.m, self.mask_ratio, self.rho = momentum, mask_ratio, temperature
        self.encoder_q = encoder
        self.proj_q = ProjectionHead(encoder.out_dim, proj_dim)
        self.encoder_k = copy.deepcopy(encoder)
        self.proj_k = copy.deepcopy(self.proj_q)
        for p in list(self.encoder_k.parameters()) + list(self.proj_k.parameters()):
            p.requires_grad_(False)

    def _q(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_q(self.encoder_q.forward_features(random_token_mask(x, self.mask_ratio)))  # (B, E)

    @torch.no_grad()
    def _k(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_k(self.encoder_k.forward_features(random_token_mask(x, self.mask_ratio)))  # (B, E)

    def forward(self, long: torch.Tensor, short: torch.Tensor, query: str = "both") -> torch.Tensor:
        if query == "short":
            return info_nce(self._q(short), self._k(long), self.rho)
        if query == "long":
            return info_nce(self._q(long), self._k(short), self.rho)
        if query == "both":
            return 0.5 * (info_nce(self._q(short), self._k(long), self.rho) +
                          info_nce(self._q(long), self._k(short), self.rho))
        raise ValueError(f"query: {query!r} not allowed; allowed values: 'short', 'long', 'both'")

    @torch.no_grad()
    def update_momentum(self) -> None:
        """f_k = m f_k + (1 - m) f_q for encoder and projection; then the encoder's own EMA (S5's S4_hat)."""
        for mk, mq in ((self.encoder_k, self.encoder_q), (self.proj_k, self.proj_q)):
            for pk, pq in zip(mk.parameters(), mq.parameters()):
                pk.mul_(self.m).add_(pq.detach(), alpha=1 - self.m)
        if hasattr(self.encoder_q, "update_momentum"):
            self.encoder_q.update_momentum()
