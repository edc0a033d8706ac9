"""LSMCL: the InfoNCE loss against the poster's formula, cross-rank negatives over gloo, the key
encoder as a momentum copy of the whole query encoder, and the alternating long/short roles."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from s5video.models.lsmcl import LSMCL, info_nce, random_token_mask
from s5video.models.s5 import S5


def poster_loss(q: torch.Tensor, k: torch.Tensor, rho: float) -> torch.Tensor:
    """L = sum_i -log(exp(q_i.k_i/rho) / (exp(q_i.k_i/rho) + sum_{j!=i} exp(q_i.k_j/rho))), float64 loops,
    divided by the batch size (we report the mean)."""
    q, k = F.normalize(q.double(), dim=-1), F.normalize(k.double(), dim=-1)
    total = 0.0
    for i in range(len(q)):
        pos = torch.exp(q[i] @ k[i] / rho)
        neg = sum(torch.exp(q[i] @ k[j] / rho) for j in range(len(k)) if j != i)
        total = total - torch.log(pos / (pos + neg))
    return total / len(q)


def test_info_nce_equals_poster_formula():
    torch.manual_seed(0)
    q, k = torch.randn(6, 16), torch.randn(6, 16)
    torch.testing.assert_close(info_nce(q, k, 0.1).double(), poster_loss(q, k, 0.1), rtol=1e-5, atol=1e-6)


def test_random_token_mask_keeps_order_and_ratio():
    x = torch.arange(20.0).view(1, 20, 1).repeat(3, 1, 2)
    y = random_token_mask(x, 0.75)
    assert y.shape == (3, 5, 2)
    assert all(torch.all(r[1:, 0] > r[:-1, 0]) for r in y)


def test_lsmcl_step_and_momentum():
    torch.manual_seed(0)
    model = LSMCL(S5(num_classes=0, d_model=32, depth=2, d_state=8, dropout=0.0), proj_dim=16, momentum=0.5)
    long, short = torch.randn(4, 64, 32), torch.randn(4, 16, 32)
    for query in ("short", "long", "both"):
        loss = model(long, short, query=query)
        assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert model.proj_q.net[0].weight.grad.abs().sum() > 0
    kq = [p.clone() for p in model.proj_k.parameters()]
    model.update_momentum()
    for a, b, q in zip(model.proj_k.parameters(), kq, model.proj_q.parameters()):
        torch.testing.assert_close(a, 0.5 * b + 0.5 * q)


def test_lsmcl_masks_both_branches_at_the_ratio():
    """q = f_q(R_mask(x_S, eta)), k = f_k(R_mask(x_L, eta)): each encoder sees L - round(eta L) of its
    branch's tokens, a subset of them in their original order, with its own random choice."""
    torch.manual_seed(0)
    model = LSMCL(S5(num_classes=0, d_model=8, depth=1, d_state=4, dropout=0.0), proj_dim=4, mask_ratio=0.75)
    seen: dict[str, list[torch.Tensor]] = {"q": [], "k": []}
    for name, enc in (("q", model.encoder_q), ("k", model.encoder_k)):
        orig = enc.forward_features
        enc.forward_features = (lambda x, grid=None, orig=orig, name=name: (seen[name].append(x), orig(x))[1])
    # token i of sample b carries the value 1000 b + i in every channel: kept positions are readable
    long = (torch.arange(40.0)[None, :, None] + 1000 * torch.arange(3.0)[:, None, None]).expand(3, 40, 8).clone()
    short = long[:, :16].clone()
    for query, q_len, k_len in (("short", 16 - 12, 40 - 30), ("long", 40 - 30, 16 - 12)):
        seen["q"].clear(), seen["k"].clear()
        model(long, short, query=query)
        (q_in,), (k_in,) = seen["q"], seen["k"]
        assert q_in.shape == (3, q_len, 8) and k_in.shape == (3, k_len, 8), query  # eta = 0.75 on each branch
        for x in (q_in, k_in):
            pos = x[..., 0] - 1000 * torch.arange(3.0)[:, None]  # (B, kept) original positions
            assert torch.all(pos[:, 1:] > pos[:, :-1]) and torch.all(pos == pos.round())
        assert not torch.equal(k_in[0, :, 0], k_in[1, :, 0] - 1000)  # a fresh mask per sample


def _worker(rank: int, world: int, port: int, q: torch.Tensor, k: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = len(q) // world
        ql = q[rank * b:(rank + 1) * b].clone().requires_grad_(True)
        kl = k[rank * b:(rank + 1) * b].clone().requires_grad_(True)
        loss = info_nce(ql, kl, 0.2)
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        out[rank] = (total.item() / world, ql.grad.clone(), kl.grad.clone())
    finally:
        dist.destroy_process_group()


def test_cross_rank_negatives_equal_single_process():
    torch.manual_seed(0)
    q, k = torch.randn(8, 16), torch.randn(8, 16)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.start_processes(_worker, args=(2, port, q, k, out), nprocs=2, start_method="spawn", join=True)
    qs, ks = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    ref = info_nce(qs, ks, 0.2, gather=False)
    ref.backward()
    assert abs(out[0][0] - ref.item()) < 1e-6 and abs(out[1][0] - ref.item()) < 1e-6
    # DDP averages gradients over ranks: (rank grads) / world == single-process gradient of the mean.
    # Queries: exact. Keys: each rank's gradient reaches only its local keys (negatives from other ranks
    # are constants there), so the local-key gradient is the part of the full gradient from local queries.
    gq = torch.cat([out[0][1], out[1][1]]) / 2
    torch.testing.assert_close(gq, qs.grad, rtol=1e-5, atol=1e-7)
    assert out[0][2].abs().sum() > 0


def test_key_encoder_follows_the_whole_query_encoder():
    """f_k <- m f_k + (1 - m) f_q (MoCo eq. 2) for every parameter of the key encoder - the S4
    layers, norms and the S5 mask generator, not only the projection - and after many updates with
    f_q fixed, f_k computes what f_q computes (a momentum copy, as the poster's f_k is)."""
    torch.manual_seed(0)
    m = 0.8
    model = LSMCL(S5(num_classes=0, d_model=16, depth=2, d_state=4, dropout=0.0), proj_dim=8, momentum=m)
    with torch.no_grad():
        for p in list(model.encoder_q.parameters()) + list(model.proj_q.parameters()):
            p.add_(0.1 * torch.randn_like(p))  # as an optimizer step would: f_q moves away from f_k
    q_named = dict(model.encoder_q.named_parameters()) | {f"proj.{k}": v for k, v in model.proj_q.named_parameters()}
    k_named = dict(model.encoder_k.named_parameters()) | {f"proj.{k}": v for k, v in model.proj_k.named_parameters()}
    assert q_named.keys() == k_named.keys() and len(k_named) > len(list(model.proj_k.parameters())) + 4
    q0 = {n: p.detach().clone() for n, p in q_named.items()}
    k0 = {n: p.detach().clone() for n, p in k_named.items()}
    model.update_momentum()
    for n, p in k_named.items():
        torch.testing.assert_close(p, m * k0[n] + (1 - m) * q0[n], msg=n)
        assert not torch.equal(p, k0[n]), f"{n}: the key encoder's parameter did not move"
    x = torch.randn(2, 12, 16)
    model.eval()  # no Gumbel noise in S5's selection: one input, one output
    assert not torch.allclose(model.encoder_k.forward_features(x), model.encoder_q.forward_features(x), atol=1e-3)
    for _ in range(150):  # m^150 ~ 3e-15: f_k has caught up with the fixed f_q
        model.update_momentum()
    torch.testing.assert_close(model.encoder_k.forward_features(x), model.encoder_q.forward_features(x),
                               rtol=1e-4, atol=1e-5)
    z = torch.randn(2, model.encoder_q.out_dim)
    torch.testing.assert_close(model.proj_k(z), model.proj_q(z), rtol=1e-4, atol=1e-5)


def test_trainer_alternates_the_query_and_key_roles():
    """"Long and short clips can alternatively become queries and keys" (poster): the trainer's
    pretraining loss makes the short clips the query on one step and the long clips on the next.
    Read from the gradients: only the query branch is differentiated (the key encoder runs without
    gradient), so exactly one of the two inputs gets a gradient, and which one alternates."""
    from tests.helpers import REPO
    from s5video.trainer.config import load_config
    from s5video.trainer.run import Trainer
    torch.manual_seed(0)
    t = Trainer(load_config(REPO / "configs/demo_pretrain.yaml", []))
    assert t.cfg.run.mode == "pretrain"
    t.engine = LSMCL(S5(num_classes=0, d_model=8, depth=1, d_state=4, dropout=0.0), proj_dim=4)
    t.encode = lambda x: (x, None)  # the batch holds tokens (B, L, D) here, not frames (no grid)
    roles = []
    for step in range(4):
        long, short = torch.randn(3, 20, 8, requires_grad=True), torch.randn(3, 8, 8, requires_grad=True)
        t.forward_loss({"long": long, "short": short}, step).backward()
        got = {name for name, x in (("long", long), ("short", short)) if x.grad is not None and x.grad.abs().sum() > 0}
        assert len(got) == 1, (step, got)
        roles.append(got.pop())
    assert roles[0] != roles[1] and roles[2] == roles[0] and roles[3] == roles[1], roles
