"""ViS4mer, S5, LST, VideoMamba, registry and heads, checked against shapes from the papers and
direct formulas."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from s5video.models import create_model, list_models
from s5video.models.heads import multi_hot, task_loss
from s5video.models.s5 import S5, gumbel_topk
from s5video.models.vis4mer import ViS4mer


def test_registry_lists_and_builds_debug_flavours():
    names = list_models()
    for n in ("vis4mer", "s5", "lst", "lst_full", "performer", "orthoformer", "bimamba"):
        assert n in names and f"{n}_debug" in names
    for n in names:
        if n.endswith("_debug"):
            m = create_model(n, num_classes=3)
            x = torch.randn(2, 10 * 2 * 2, m.in_dim)  # 10 frames x 2 x 2 patch tokens
            if n.startswith("gpt2_captioner"):  # a loss of captions, and captions
                assert m(x, grid=(10, 2, 2), captions=["a", "b"]).shape == () and len(m.generate(x, max_tokens=3)) == 2
                continue
            assert m(x, grid=(10, 2, 2)).shape == (2, 3), n
    with pytest.raises(ValueError, match="allowed values: .*s5_debug"):
        create_model("s6")


@torch.no_grad()
def test_vis4mer_paper_shapes_avg1d_and_max_st():
    torch.manual_seed(0)
    m = ViS4mer(num_classes=10, d_model=1024, depth=3, d_state=64, kernel="s4d", pool="avg1d").eval()
    x = torch.randn(1, 60 * 197, 1024)  # 60 frames x 197 ViT-L/16 tokens
    outs = m.decoder.forward_tokens(x)
    assert [tuple(o.shape) for o in outs] == [(1, 5910, 512), (1, 2955, 256), (1, 1477, 128)]
    assert m(x).shape == (1, 10)
    st = ViS4mer(num_classes=10, d_model=64, depth=3, d_state=8, pool="max_st").eval()
    outs = st.decoder.forward_tokens(torch.randn(2, 60 * 14 * 14, 64), grid=(60, 14, 14))
    assert [o.shape[1] for o in outs] == [60 * 7 * 7, 60 * 3 * 3, 60 * 1 * 1]
    with pytest.raises(ValueError, match="grid"):
        st(torch.randn(1, 60 * 197, 64))


def test_pooling_stops_at_one_token():
    m = ViS4mer(num_classes=2, d_model=32, depth=3, d_state=4, pool="avg1d").eval()
    assert [o.shape[1] for o in m.decoder.forward_tokens(torch.randn(1, 3, 32))] == [1, 1, 1]


def test_max_st_pool_is_spatial_max_per_frame():
    from s5video.models.vis4mer import pool_tokens
    x = torch.randn(2, 3 * 4 * 4, 5)
    y, grid = pool_tokens(x, "max_st", (3, 4, 4))
    ref = x.view(2, 3, 2, 2, 2, 2, 5).amax(dim=(3, 5)).reshape(2, 12, 5)  # (B, T, h/2, 2, w/2, 2, D)
    assert grid == (3, 2, 2) and torch.equal(y, ref)


@pytest.mark.parametrize("L", [2, 7, 10])
def test_avg1d_pool_is_avgpool1d(L):
    from s5video.models.vis4mer import pool_tokens
    x = torch.randn(2, L, 5, requires_grad=True)
    y, _ = pool_tokens(x, "avg1d", None)
    ref = torch.nn.AvgPool1d(2)(x.transpose(1, 2)).transpose(1, 2)  # the public code's pooling
    torch.testing.assert_close(y, ref)
    w = torch.randn(ref.shape)
    torch.testing.assert_close(torch.autograd.grad((y * w).sum(), x)[0], torch.autograd.grad((ref * w).sum(), x)[0])


def test_gumbel_topk_exact_k_and_straight_through_gradient():
    torch.manual_seed(0)
    logits = torch.randn(3, 50, requires_grad=True)
    mask, idx = gumbel_topk(logits, 7, tau=0.5, noise=False)
    assert torch.equal(mask.detach().sum(-1), torch.full((3,), 7.0))
    assert set(mask.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(idx, logits.detach().topk(7).indices.sort().values)
    w = torch.randn(3, 50)
    (g,) = torch.autograd.grad((mask * w).sum(), logits)
    l2 = logits.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad((F.softmax(l2 / 0.5, -1) * w).sum(), l2)
    torch.testing.assert_close(g, g_ref)  # backward = the soft distribution's gradient


@pytest.mark.parametrize("mg", ["linear_s4", "single_tx_s4", "stacked_tx", "linear", "random"])
def test_s5_keeps_k_tokens_and_mask_generator_learns(mg):
    torch.manual_seed(0)
    m = S5(num_classes=4, d_model=32, depth=2, d_state=8, dropout=0.0, keep_ratio=0.25, mask_generator=mg).train()
    x = torch.randn(2, 80, 32)
    out = m(x)
    idx = m.last_keep_idx
    assert idx.shape == (2, 20) and all(len(set(r.tolist())) == 20 for r in idx)
    assert m.select(x).shape == (2, 20, 32)
    out.square().sum().backward()
    grads = [p.grad for p in m.mask_generator.parameters()]
    if mg == "random":
        assert grads == []
    else:
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    if m.s4_hat is not None:
        assert all(p.grad is None for p in m.s4_hat.parameters())


def test_s5_lean_selection_equals_plain_composition():
    """select() recomputes the momentum features and regathers x in backward (memory); values and
    gradients equal the plain x (x) mask -> gather with everything stored. The momentum S4 runs
    without dropout in training mode, the trained S4 with it."""
    torch.manual_seed(0)
    m = S5(num_classes=4, d_model=32, depth=2, d_state=8, dropout=0.3, keep_ratio=0.25).train()
    x = torch.randn(2, 80, 32)
    params = list(m.mask_generator.parameters())
    torch.manual_seed(1)
    out = m.select(x)
    w = torch.randn(out.shape)
    grads = torch.autograd.grad((out * w).sum(), params)
    torch.manual_seed(1)
    mask, idx = gumbel_topk(m.mask_generator(m.s4_hat(x)), 20, m.tau)
    ref = torch.gather(x * mask[..., None], 1, idx[..., None].expand(2, 20, 32))
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, torch.autograd.grad((ref * w).sum(), params)):
        torch.testing.assert_close(a, b)
    mixer = m.vis4mer.decoder.blocks[0].mixer
    assert mixer.training and not torch.equal(mixer(x), mixer(x))  # the trained S4: dropout


def test_s5_momentum_update_matches_formula():
    torch.manual_seed(0)
    m = S5(num_classes=2, d_model=16, depth=1, d_state=4, momentum=0.9)
    first = m.vis4mer.decoder.blocks[0]
    with torch.no_grad():
        for p in list(first.norm.parameters()) + list(first.mixer.parameters()):
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in m.s4_hat.parameters()]
    src = [p.clone() for p in list(first.norm.parameters()) + list(first.mixer.parameters())]
    m.update_momentum()
    for b, s, a in zip(before, src, m.s4_hat.parameters()):
        torch.testing.assert_close(a, 0.9 * b + 0.1 * s)


@torch.no_grad()
def test_s5_keep_ratio_one_equals_vis4mer():
    torch.manual_seed(0)
    s5 = S5(num_classes=3, d_model=32, depth=3, d_state=8, dropout=0.0, keep_ratio=1.0).eval()
    v = ViS4mer(num_classes=3, d_model=32, depth=3, d_state=8, dropout=0.0, pool="avg1d").eval()
    v.load_state_dict(s5.vis4mer.state_dict())
    x = torch.randn(2, 64, 32)
    torch.testing.assert_close(s5(x), v(x), rtol=1e-6, atol=1e-6)
    s5.keep_ratio = 0.5
    assert not torch.allclose(s5(x), v(x))


def test_lst_uses_attention_and_bimamba_is_bidirectional():
    torch.manual_seed(0)
    lst = create_model("lst_debug", num_classes=2).eval()
    assert type(lst.decoder.blocks[0].mixer).__name__ == "SelfAttention"
    x = torch.randn(1, 32, 64)
    x2 = x.clone()
    x2[:, -1, 0] += 1.0  # one channel: a shift of every channel would vanish in the LayerNorm
    vm = create_model("bimamba_debug", num_classes=2).eval()
    blk = vm.blocks[0]
    assert type(blk.mixer).__name__ == "BiMamba"  # the video encoder's block (models.videomamba)

    def fwd(h):  # the forward (time-ordered) branch alone
        x, z = blk.mixer.in_proj(blk.norm(h)).chunk(2, -1)
        return blk.mixer.branch(x, z, "")

    h, h2 = x[:, -4:, :32], x2[:, -4:, :32]  # 4 tokens at the model's width (32); the last one differs
    with torch.no_grad():
        assert not torch.allclose(blk(h)[:, 0], blk(h2)[:, 0])  # the first token sees the last one
        assert not torch.allclose(fwd(h)[:, -1], fwd(h2)[:, -1])
        torch.testing.assert_close(fwd(h)[:, :-1], fwd(h2)[:, :-1])  # one direction is causal


def test_task_losses_match_formulas():
    torch.manual_seed(0)
    logits, y = torch.randn(4, 5), torch.tensor([0, 3, 1, 4])
    ref = -torch.log_softmax(logits, -1)[torch.arange(4), y].mean()
    torch.testing.assert_close(task_loss("classification", logits, y), ref)
    pred, t = torch.randn(4, 1), torch.randn(4)
    torch.testing.assert_close(task_loss("regression", pred, t), ((pred[:, 0] - t) ** 2).mean())
    target = multi_hot([[0, 2], [], [4], [1, 2, 3]], 5)
    p = torch.sigmoid(logits)
    ref = -(2 * target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    torch.testing.assert_close(task_loss("multilabel", logits, target, pos_weight=2.0), ref)
    with pytest.raises(ValueError, match="allowed values"):
        task_loss("ranking", logits, y)


@torch.no_grad()
def test_attention_baselines_see_token_order_through_positions():
    """Without pooling, attention + token-wise MLP + mean is exactly permutation-invariant: the
    positional encoding is the only source of order. LST, Performer and Orthoformer carry it."""
    torch.manual_seed(0)
    x = torch.randn(2, 24, 64)
    perm = torch.randperm(24)
    for name in ("lst_debug", "lst_full_debug", "performer_debug", "orthoformer_debug"):
        m = create_model(name, num_classes=3, pool="none").eval()
        assert m.decoder.positional, name
        assert not torch.allclose(m(x), m(x[:, perm]), atol=1e-4), name
    bare = create_model("lst_debug", num_classes=3, pool="none").eval()
    bare.decoder.positional = False
    torch.testing.assert_close(bare(x), bare(x[:, perm]), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_lst_full_materialises_the_same_attention_as_sdpa():
    torch.manual_seed(0)
    sdpa = create_model("lst_debug", num_classes=3).eval()
    full = create_model("lst_full_debug", num_classes=3).eval()
    full.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 10 * 4, 64)
    torch.testing.assert_close(full(x, grid=(10, 2, 2)), sdpa(x, grid=(10, 2, 2)), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_table5_switches_no_pooling_and_no_channel_scaling():
    x, grid = torch.randn(1, 6 * 4 * 4, 64), (6, 4, 4)
    shapes = lambda **kw: [tuple(o.shape[1:]) for o in
                           ViS4mer(2, 64, 3, 8, block="paper", **kw).decoder.forward_tokens(x, grid)]
    assert shapes() == [(6 * 2 * 2, 32), (6, 16), (6, 8)]  # max_st 4x4 -> 2x2 -> 1x1 (then kept), width halved
    assert shapes(pool="none") == [(96, 32), (96, 16), (96, 8)]
    assert shapes(channel_scaling=False) == [(24, 64), (6, 64), (6, 64)]
    assert shapes(pool="none", channel_scaling=False) == [(96, 64)] * 3


def _exact_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v  # (B, h, L, d)


@torch.no_grad()
def test_performer_estimates_softmax_attention_within_favor_error():
    """FAVOR+ (Choromanski et al. 2021) is an unbiased Monte-Carlo estimate of the softmax kernel:
    its error against exact attention shrinks like 1/sqrt(m) in the number of random features."""
    from s5video.models.attention import PerformerAttention, SelfAttention
    torch.manual_seed(0)
    exact = SelfAttention(32, 2).eval()
    x = torch.randn(4, 64, 32)
    ref = exact(x)

    def error(m: int) -> float:
        errs = []
        for seed in range(3):
            torch.manual_seed(seed)
            p = PerformerAttention(32, 2, num_features=m).eval()
            p.load_state_dict(exact.state_dict(), strict=False)  # same q, k, v and output projections
            errs.append(((p(x) - ref).norm() / ref.norm()).item())
        return sum(errs) / len(errs)

    e64, e4096 = error(64), error(4096)
    assert e4096 < 0.1, e4096
    assert e64 > 2.5 * e4096, (e64, e4096)  # 1/sqrt(m) would give 8x; the estimator's stabiliser costs some


@torch.no_grad()
def test_orthoformer_landmarks_and_exact_limit():
    """Landmarks follow Algorithm 1 (checked against a plain loop); with every query a landmark and
    orthogonal, large queries, softmax(Q P^T) is the identity and the result is exact attention."""
    from s5video.models.attention import orthoformer, orthogonal_landmarks
    torch.manual_seed(0)
    q = torch.randn(3, 20, 8)
    idx = orthogonal_landmarks(q, 6, first=torch.tensor([0, 5, 19]))
    qn = F.normalize(q, dim=-1)
    for b in range(3):
        chosen = [int(idx[b, 0])]
        while len(chosen) < 6:
            score = {j: max(abs(float(qn[b, j] @ qn[b, c])) for c in chosen) for j in range(20) if j not in chosen}
            chosen.append(min(score, key=score.get))
        assert idx[b].tolist() == chosen
    L = d = 16
    q = (12.0 * torch.eye(L))[None, None].repeat(2, 1, 1, 1)  # (B, h, L, d) orthogonal queries, q.q / sqrt(d) = 36
    k, v = torch.randn(2, 1, L, d), torch.randn(2, 1, L, d)
    torch.testing.assert_close(orthoformer(q, k, v, L), _exact_attention(q, k, v), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(orthoformer(q, k, v, 4), _exact_attention(q, k, v), atol=1e-2)  # m < L approximates
