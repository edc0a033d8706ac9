"""Token mixers of the attention baselines (ViS4mer Table 4): exact softmax attention (LST),
Performer (FAVOR+) and Orthoformer, each mapping (B, L, D) -> (B, L, D), plus the sinusoidal
positional encoding that gives them the token order (attention alone is permutation-equivariant).

* :class:`SelfAttention` - ``softmax(Q K^T / sqrt(d)) V`` through ``F.scaled_dot_product_attention``
  (memory-efficient kernels, the L x L matrix is never stored), or with ``materialize=True`` the
  matrix is formed as in the paper's LST (Table 3: 41.38 GB at 11,760 tokens).
* :class:`PerformerAttention` - Choromanski et al. 2021, "Rethinking Attention with Performers":
  positive orthogonal random features (FAVOR+) estimate the softmax kernel,
  ``exp(q.k / sqrt(d)) = E[phi(q) . phi(k)]`` with ``phi(x) = exp(W x - |x|^2 / 2) / sqrt(m)``;
  the feature map is ``performer_pytorch.FastAttention`` (lucidrains' maintained implementation).
  Its error shrinks as O(1 / sqrt(m)) in the number of features m.
* :class:`OrthoformerAttention` - Patrick et al. 2021, "Keeping Your Eye on the Ball: Trajectory
  Attention in Video Transformers", section 3.2 / Algorithm 1: m landmarks chosen from the
  queries, each the one least aligned (smallest max |cosine|) with those already chosen, then
  ``Y = softmax(Q P^T / sqrt(d)) softmax(P K^T / sqrt(d)) V``: O(L m) time and memory.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed sine/cosine positional encoding (Vaswani et al. 2017, section 3.5): (L, D),
    ``PE[p, 2i] = sin(p / 10000^(2i/D))``, ``PE[p, 2i+1] = cos(p / 10000^(2i/D))``."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]  # (L, 1)
    inv = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)  # (D/2,)
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * inv)  # (L, ceil(D/2))
    pe[:, 1::2] = torch.cos(pos * inv)[:, : dim // 2]  # (L, floor(D/2))
    return pe.to(dtype)


class _MultiHead(nn.Module):
    """Shared projections: (B, L, D) -> q, k, v (B, h, L, d) and back through ``out``."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} must be divisible by num_heads {num_heads}")
        self.h = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def heads(self, x: torch.Tensor):
        B, L, D = x.shape
        return self.qkv(x).view(B, L, 3, self.h, D // self.h).permute(2, 0, 3, 1, 4)  # 3 x (B, h, L, d)

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        B, h, L, d = y.shape
        return self.out(y.transpose(1, 2).reshape(B, L, h * d))  # (B, L, D)


class SelfAttention(_MultiHead):
    """Exact multi-head softmax attention on (B, L, D) (LST's mixer). ``materialize``: form the
    (B, h, L, L) matrix explicitly, as the paper's LST did, instead of the fused SDPA kernel."""

    def __init__(self, d_model: int, num_heads: int = 8, dropout: float = 0.0, materialize: bool = False):
        super().__init__(d_model, num_heads)
        self.dropout, self.materialize = dropout, materialize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(x)  # (B, h, L, d)
        p = self.dropout if self.training else 0.0
        if self.materialize:
            attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (B, h, L, L)
            y = F.dropout(attn, p) @ v  # (B, h, L, d)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, h, L, d)
        return self.merge(y)


class PerformerAttention(_MultiHead):
    """FAVOR+ attention (Performer) on (B, L, D) with ``num_features`` (m) orthogonal random
    features per head. The random projection is drawn once at construction (a buffer, so it is
    checkpointed and identical on every rank)."""

    def __init__(self, d_model: int, num_heads: int = 8, num_features: int = 256):
        super().__init__(d_model, num_heads)
        from performer_pytorch import FastAttention  # noqa: PLC0415

        self.favor = FastAttention(dim_heads=d_model // num_heads, nb_features=num_features, causal=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(x)  # (B, h, L, d)
        return self.merge(self.favor(q, k, v))  # (B, L, D)


@torch.no_grad()
def orthogonal_landmarks(q: torch.Tensor, m: int, first: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (B, m) of m landmark queries (Orthoformer, Algorithm 1): start from ``first`` (B,)
    (default: random), then repeatedly add the query whose largest |cosine| to the chosen ones is
    smallest. q: (B, L, d); m <= L."""
    B, L, _ = q.shape
    if not 1 <= m <= L:
        raise ValueError(f"num_landmarks must be in [1, L={L}], got {m}")
    qn = F.normalize(q.float(), dim=-1)  # (B, L, d)
    idx = torch.empty(B, m, dtype=torch.long, device=q.device)
    idx[:, 0] = torch.randint(L, (B,), device=q.device) if first is None else first
    worst = torch.zeros(B, L, device=q.device)  # (B, L) max |cos| to the chosen landmarks so far
    rows = torch.arange(B, device=q.device)
    for j in range(1, m):
        last = qn[rows, idx[:, j - 1]]  # (B, d)
        worst = torch.maximum(worst, torch.einsum("bld,bd->bl", qn, last).abs())  # (B, L)
        worst[rows[:, None], idx[:, :j]] = float("inf")  # never pick a landmark twice
        idx[:, j] = worst.argmin(-1)
    return idx  # (B, m)


def orthoformer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_landmarks: int) -> torch.Tensor:
    """Orthoformer attention of (B, h, L, d) queries, keys, values -> (B, h, L, d):
    ``softmax(Q P^T / sqrt(d)) (softmax(P K^T / sqrt(d)) V)`` with P the landmark queries of
    :func:`orthogonal_landmarks` (m = min(num_landmarks, L), chosen without gradient)."""
    B, h, L, d = q.shape
    qf = q.reshape(B * h, L, d)  # (Bh, L, d)
    idx = orthogonal_landmarks(qf, min(num_landmarks, L))  # (Bh, m)
    P = torch.gather(qf, 1, idx[..., None].expand(-1, -1, d)).view(B, h, -1, d)  # (B, h, m, d)
    s = d ** -0.5
    k1 = torch.softmax(q @ P.transpose(-1, -2) * s, dim=-1)  # (B, h, L, m) queries -> landmarks
    k2 = torch.softmax(P @ k.transpose(-1, -2) * s, dim=-1)  # (B, h, m, L) landmarks -> keys
    return k1 @ (k2 @ v)  # (B, h, L, d)


class OrthoformerAttention(_MultiHead):
    """Orthoformer attention (:func:`orthoformer`) on (B, L, D), ``num_landmarks`` (m) per head."""

    def __init__(self, d_model: int, num_heads: int = 8, num_landmarks: int = 128):
        super().__init__(d_model, num_heads)
        self.m = num_landmarks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(x)  # (B, h, L, d)
        return self.merge(orthoformer(q, k, v, self.m))  # (B, L, D)


MIXERS = ("s4", "attention", "performer", "orthoformer")
