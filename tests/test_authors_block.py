"""ViS4mer's two blocks against compositions written here: the paper's eq. 4, and the authors'
released model (md-mohaiminul/ViS4mer ``models.py`` + ``s4.py``) computed from their code's
arithmetic in float64 on a state dict in their layout, loaded through our converter."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from s5video.models.convert import convert_authors_vis4mer, load_authors_vis4mer
from s5video.models.vis4mer import ViS4mer

H, DEPTH, N, L, CLASSES = 16, 2, 8, 64, 5


def _authors_state(seed: int, d_input: int = H) -> dict[str, torch.Tensor]:
    """Random tensors with the shapes and layout their ViS4mer saves (float64)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    st, h = {}, H
    if d_input != H:
        st["encoder.weight"], st["encoder.bias"] = r(H, d_input) / d_input ** 0.5, r(H)
    for i in range(DEPTH):
        p = f"s4_layers.{i}."
        st[p + "D"] = r(h)
        w = torch.complex(-0.5 - 0.1 * r(N // 2).abs(), math.pi * torch.arange(N // 2, dtype=torch.float64))
        st[p + "kernel.krylov.w"] = torch.view_as_real(w)
        st[p + "kernel.krylov.B"] = r(h, 2, N // 2, 2)
        st[p + "kernel.krylov.C"] = r(h, 2, N // 2, 2)
        st[p + "kernel.krylov.log_dt"] = torch.empty(h, dtype=torch.float64).uniform_(math.log(1e-3), math.log(1e-1), generator=g)
        st[p + "kernel.krylov.nodes"] = torch.zeros(L // 2 + 1, 2, dtype=torch.float64)  # buffers, recomputed
        st[p + "kernel.krylov.z"] = torch.zeros(L // 2 + 1, 2, dtype=torch.float64)
        st[p + "output_linear.weight"], st[p + "output_linear.bias"] = r(h, h) / h ** 0.5, r(h, 1)
        st[f"norms.{i}.weight"], st[f"norms.{i}.bias"] = 1 + 0.1 * r(h), 0.1 * r(h)
        st[f"linears.{i}.weight"], st[f"linears.{i}.bias"] = r(h // 2, h) / h ** 0.5, r(h // 2)
        h //= 2
    st["decoder.weight"], st["decoder.bias"] = r(CLASSES, h), r(CLASSES)
    return {"module." + k: v for k, v in st.items()}  # as nn.DataParallel saves it


def _authors_kernel(w, B, C, log_dt, L):
    """s4.py SSKernelNPLR.forward, rank 1, no state: (H, L)."""
    w, B, C = (torch.view_as_complex(t.contiguous()) for t in (w, B, C))  # (N2,), (H, 2, N2), (H, 2, N2)
    dt = torch.exp(log_dt)  # (H,)
    nodes = torch.exp(-2j * math.pi * torch.arange(L // 2 + 1, dtype=torch.float64) / L)  # (Lf,)
    z = 2 * (1 - nodes) / (1 + nodes)  # (Lf,)
    wd = w[None, :] * dt[:, None]  # (H, N2)
    v = B[:, :, None, :] * C[:, None, :, :].conj()  # (H, 2, 2, N2): B_i conj(C_j)
    den = z[None, None, None, None, :] - wd[:, None, None, :, None]  # (H, 1, 1, N2, Lf)
    den_c = z[None, None, None, None, :] - wd.conj()[:, None, None, :, None]
    r = (v[..., None] / den + v.conj()[..., None] / den_c).sum(-2) * dt[:, None, None, None]  # (H, 2, 2, Lf)
    k_f = r[:, 0, 0] - r[:, 0, 1] * r[:, 1, 0] / (1 + r[:, 1, 1])  # (H, Lf) Woodbury, rank 1
    return torch.fft.irfft(k_f * 2 / (1 + nodes))  # (H, L)


def _authors_forward(st: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """models.py ViS4mer.forward (prenorm, eval): x (B, L, d_input) -> (B, classes)."""
    st = {k.removeprefix("module."): v for k, v in st.items()}
    if "encoder.weight" in st:
        x = F.linear(x, st["encoder.weight"], st["encoder.bias"])
    x = x.transpose(-1, -2)  # (B, H, L)
    for i in range(DEPTH):
        p, h, Lx = f"s4_layers.{i}.", x.shape[1], x.shape[-1]
        z = F.layer_norm(x.transpose(-1, -2), (h,), st[f"norms.{i}.weight"], st[f"norms.{i}.bias"]).transpose(-1, -2)
        k = _authors_kernel(st[p + "kernel.krylov.w"], st[p + "kernel.krylov.B"], st[p + "kernel.krylov.C"],
                            st[p + "kernel.krylov.log_dt"], Lx)
        y = torch.fft.irfft(torch.fft.rfft(k, n=2 * Lx) * torch.fft.rfft(z, n=2 * Lx), n=2 * Lx)[..., :Lx]
        y = F.gelu(y + z * st[p + "D"][:, None])  # (B, H, L)
        y = torch.einsum("bul,vu->bvl", y, st[p + "output_linear.weight"]) + st[p + "output_linear.bias"]
        x = F.avg_pool1d(y + x, 2)  # residual, then AvgPool1d(2)
        x = F.gelu(F.linear(x.transpose(-1, -2), st[f"linears.{i}.weight"], st[f"linears.{i}.bias"])).transpose(-1, -2)
    return F.linear(x.transpose(-1, -2).mean(1), st["decoder.weight"], st["decoder.bias"])


@pytest.mark.parametrize("d_input", [H, 24])
def test_authors_state_dict_loads_and_gives_their_logits_and_gradients(d_input):
    st = {k: v.float().double() for k, v in _authors_state(0, d_input).items()}  # values float32 can hold
    model = load_authors_vis4mer({k: v.float() for k, v in st.items()}).double().eval()
    x = torch.randn(3, L, d_input, dtype=torch.float64)
    ours = model(x)
    ref = _authors_forward(st, x)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())
    # gradients of every parameter: theirs, mapped through the same converter, equal ours
    leaves = {k: v.clone().requires_grad_(not k.endswith((".nodes", ".z"))) for k, v in st.items()}
    trained = [k for k, v in leaves.items() if v.requires_grad]
    w = torch.randn(ref.shape, dtype=torch.float64)
    grads = torch.autograd.grad((_authors_forward(leaves, x) * w).sum(), [leaves[k] for k in trained])
    their = {**dict(zip(trained, grads)), **{k: v for k, v in st.items() if k not in trained}}
    mine = dict(zip((n for n, _ in model.named_parameters()),
                    torch.autograd.grad((model(x) * w).sum(), list(model.parameters()))))
    mapped, _ = convert_authors_vis4mer(their)
    assert set(mapped) == set(mine)
    for name, g in mine.items():
        torch.testing.assert_close(g, mapped[name], rtol=1e-7, atol=1e-9 * mapped[name].abs().max().item(), msg=name)


def test_converter_reads_settings_and_refuses_other_layouts():
    ours, s = convert_authors_vis4mer(_authors_state(1))
    assert s == dict(d_input=H, d_model=H, depth=DEPTH, d_state=N, num_classes=CLASSES)
    st = _authors_state(1)
    st["module.s4_layers.0.kernel.krylov.w"] = torch.zeros(H, N // 2, 2, dtype=torch.float64)  # per-channel A
    with pytest.raises(ValueError, match=r"s4_layers\.0\.kernel\.krylov\.w.*per-channel"):
        convert_authors_vis4mer(st)
    with pytest.raises(ValueError, match="blocks.0.weight: not a tensor"):
        convert_authors_vis4mer({**_authors_state(1), "blocks.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not a ViS4mer state dict"):
        convert_authors_vis4mer({"head.weight": torch.zeros(1)})


@torch.no_grad()
def test_paper_block_is_eq4():
    """block='paper': x_out = MLP(Pool(S4(LN x))) + Linear(Pool(x)), MLP = GELU(Linear); max_st."""
    torch.manual_seed(0)
    m = ViS4mer(num_classes=3, d_model=16, depth=2, d_state=8, dropout=0.0, block="paper").eval()
    x, grid = torch.randn(2, 4 * 4 * 4, 16), (4, 4, 4)
    ref = x
    for blk in m.decoder.blocks:
        T, h, w = grid
        pool = lambda t: t.view(2, T, h // 2, 2, w // 2, 2, -1).amax(dim=(3, 5)).reshape(2, T * (h // 2) * (w // 2), -1)
        s4 = blk.mixer(F.layer_norm(ref, (ref.shape[-1],), blk.norm.weight, blk.norm.bias))
        ref = F.gelu(F.linear(pool(s4), blk.mlp[0].weight, blk.mlp[0].bias)) + F.linear(pool(ref), blk.skip.weight,
                                                                                          blk.skip.bias)
        grid = (T, h // 2, w // 2)
    torch.testing.assert_close(m(x, grid=(4, 4, 4)), F.linear(ref.mean(1), m.head.weight, m.head.bias))


@torch.no_grad()
def test_authors_block_is_their_composition_with_any_mixer():
    """block='authors' with our S4 module as the mixer: x + S4(LN x) -> AvgPool1d(2) -> Linear -> GELU."""
    torch.manual_seed(1)
    m = ViS4mer(num_classes=3, d_model=16, depth=3, d_state=8, dropout=0.0).eval()
    assert m.decoder.block == "authors" and m.decoder.pool == "avg1d"
    x = torch.randn(2, 40, 16)
    ref = x
    for blk in m.decoder.blocks:
        ref = ref + blk.mixer(F.layer_norm(ref, (ref.shape[-1],), blk.norm.weight, blk.norm.bias))
        ref = F.avg_pool1d(ref.transpose(1, 2), 2).transpose(1, 2)
        ref = F.gelu(F.linear(ref, blk.linear.weight, blk.linear.bias))
    torch.testing.assert_close(m(x), F.linear(ref.mean(1), m.head.weight, m.head.bias))
    with pytest.raises(ValueError, match="block: 'eq4' not allowed; allowed values: authors, paper"):
        ViS4mer(num_classes=3, d_model=16, depth=1, block="eq4")
