"""ViS4mer, S5, LST, VideoMamba, registry and heads, checked against shapes from the papers and
direct formulas."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import create_model, list_models
from models.heads import multi_hot, task_loss
from models.s5 import S5, gumbel_topk
from models.vis4mer import ViS4mer


def test_registry_lists_and_builds_debug_flavours():
    names = list_models()
    for n in ("vis4mer", "s5", "lst", "videomamba"):
        assert n in names and f"{n}_debug" in names
    x = torch.randn(2, 40, 64)
    for n in names:
        if n.endswith("_debug"):
            m = create_model(n, num_classes=3)
            assert m(x).shape == (2, 3), n
    with pytest.raises(ValueError, match="allowed values: .*s5_debug"):
        create_model("s6")


@torch.no_grad()
def test_vis4mer_paper_shapes_avg1d_and_max_st():
    torch.manual_seed(0)
    m = ViS4mer(num_classes=10, d_model=1024, depth=3, d_state=64, pool="avg1d").eval()
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
    m = ViS4mer(num_classes=2, d_model=32, depth=3, d_state=4).eval()
    assert [o.shape[1] for o in m.decoder.forward_tokens(torch.randn(1, 3, 32))] == [1, 1, 1]


def test_max_st_pool_is_spatial_max_per_frame():
    from models.vis4mer import pool_tokens
    x = torch.randn(2, 3 * 4 * 4, 5)
    y, grid = pool_tokens(x, "max_st", (3, 4, 4))
    ref = x.view(2, 3, 2, 2, 2, 2, 5).amax(dim=(3, 5)).reshape(2, 12, 5)  # (B, T, h/2, 2, w/2, 2, D)
    assert grid == (3, 2, 2) and torch.equal(y, ref)


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


def test_s5_momentum_update_matches_formula():
    torch.manual_seed(0)
    m = S5(num_classes=2, d_model=16, depth=1, d_state=4, momentum=0.9)
    first = m.backbone.decoder.blocks[0]
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
    v = ViS4mer(num_classes=3, d_model=32, depth=3, d_state=8, dropout=0.0).eval()
    v.load_state_dict(s5.backbone.state_dict())
    x = torch.randn(2, 64, 32)
    torch.testing.assert_close(s5(x), v(x), rtol=1e-6, atol=1e-6)
    s5.keep_ratio = 0.5
    assert not torch.allclose(s5(x), v(x))


def test_lst_uses_attention_and_videomamba_is_bidirectional():
    torch.manual_seed(0)
    lst = create_model("lst_debug", num_classes=2).eval()
    assert type(lst.decoder.blocks[0].mixer).__name__ == "SelfAttention"
    x = torch.randn(1, 32, 64)
    x2 = x.clone()
    x2[:, -1] += 1.0
    vm = create_model("videomamba_debug", num_classes=2).eval()
    blk = vm.blocks[0]
    h, h2 = vm.proj(x), vm.proj(x2)
    with torch.no_grad():
        assert not torch.allclose(blk(h)[:, 0], blk(h2)[:, 0])  # the first token sees the last one
        assert not torch.allclose(blk.fwd(h)[:, -1], blk.fwd(h2)[:, -1])
        torch.testing.assert_close(blk.fwd(h)[:, :-1], blk.fwd(h2)[:, :-1])  # one direction is causal


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
