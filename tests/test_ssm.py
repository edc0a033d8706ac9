"""S4D / S4 kernels verified against the discretised state-space recurrence run step by step."""
from __future__ import annotations

import math

import pytest
import torch

from s5video.models.ssm import (S4, ChannelDropout, S4DKernel, S4Kernel, fft_conv, hippo_legs_nplr, ssm_conv_gelu,
                        ssm_param_groups)


def _randomize(kernel: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        kernel.log_dt.copy_(torch.empty_like(kernel.log_dt).uniform_(math.log(1e-3), math.log(1e-1), generator=g))
        kernel.C.copy_(torch.randn(kernel.C.shape, generator=g))
        if isinstance(kernel, S4DKernel):
            kernel.B.copy_(torch.randn(kernel.B.shape, generator=g))
            kernel.log_A_real.add_(0.3 * torch.randn(kernel.log_A_real.shape, generator=g))
        else:  # per-channel B, P, Q moved apart from their shared initialisation (as training does)
            for t in (kernel.B, kernel.P, kernel.Q):
                t.mul_(1 + 0.2 * torch.randn(t.shape, generator=g))


def s4d_recurrence(kernel: S4DKernel, u: torch.Tensor) -> torch.Tensor:
    """x_k = exp(dt A) x_{k-1} + (exp(dt A) - 1)/A B u_k ; y_k = 2 Re(C x_k), float64. u: (B, H, L)."""
    A, B, C, dt = (t.detach().to(torch.complex128) for t in kernel.ssm())
    dt = dt.real
    dA = torch.exp(dt[:, None] * A)  # (H, N2)
    dB = (dA - 1) / A * B  # (H, N2)
    x = torch.zeros(u.shape[0], *A.shape, dtype=torch.complex128)
    ys = []
    for k in range(u.shape[-1]):
        x = dA * x + dB * u[:, :, k, None]
        ys.append(2 * (C * x).sum(-1).real)
    return torch.stack(ys, -1)  # (B, H, L)


def s4_recurrence(kernel: S4Kernel, u: torch.Tensor) -> torch.Tensor:
    """Dense complex N x N bilinear recurrence of A_h = Lambda - P_h Q_h^* per channel (with the
    conjugate modes), C = C~ (I - dA^L)^{-1}; float64. u: (B, H, L)."""
    Lam, P, Q, B, Ct, dt = (t.detach().to(torch.complex128) for t in kernel.ssm())
    dt = dt.real
    L = u.shape[-1]
    lam = torch.cat([Lam, Lam.conj()])  # (N,)
    I = torch.eye(len(lam), dtype=torch.complex128)
    ys = []
    for h in range(Ct.shape[0]):
        p, q = torch.cat([P[h], P[h].conj()])[:, None], torch.cat([Q[h], Q[h].conj()])[:, None]  # (N, 1)
        b = torch.cat([B[h], B[h].conj()])  # (N,)
        A = torch.diag(lam) - p @ q.conj().T  # (N, N)
        inv = torch.linalg.inv(I - dt[h] / 2 * A)
        dA, dB = inv @ (I + dt[h] / 2 * A), inv @ (dt[h] * b)  # (N, N), (N,)
        c = torch.cat([Ct[h], Ct[h].conj()]) @ torch.linalg.inv(I - torch.linalg.matrix_power(dA, L))  # (N,)
        x = torch.zeros(u.shape[0], len(lam), dtype=torch.complex128)
        yh = []
        for k in range(L):
            x = x @ dA.T + u[:, h, k, None] * dB
            yh.append((x @ c).real)
        ys.append(torch.stack(yh, -1))
    return torch.stack(ys, 1)  # (B, H, L)


def _check(y: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("init", ["lin", "inv"])
@pytest.mark.parametrize("L", [1, 37, 4096])
def test_s4d_fft_equals_recurrence(init, L):
    torch.manual_seed(0)
    k = S4DKernel(d_model=4, d_state=16, init=init, chunk=1000)
    _randomize(k, L)
    u = torch.randn(2, 4, L)
    with torch.no_grad():
        _check(fft_conv(u, k(L)), s4d_recurrence(k, u.double()))


@pytest.mark.parametrize("L", [1, 64, 301, 4096])
def test_s4_nplr_fft_equals_recurrence(L):
    torch.manual_seed(1)
    k = S4Kernel(d_model=2, d_state=16, chunk=700)
    _randomize(k, L)
    u = torch.randn(2, 2, L)
    with torch.no_grad():
        _check(fft_conv(u, k(L)), s4_recurrence(k, u.double()))


def _conv_gelu_reference(x, k, D, k_bwd=None):
    """The plain-autograd composition the fused op replaces: GELU(K * u (+ anti-causal) + D u)."""
    u = x.transpose(1, 2)  # (B, H, L)
    y = fft_conv(u, k)
    if k_bwd is not None:
        y = y + fft_conv(u.flip(-1), k_bwd).flip(-1)
    return torch.nn.functional.gelu(y + u * D[:, None]).transpose(1, 2)  # (B, L, H)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_fused_conv_gelu_gradcheck_float64(bidirectional):
    g = torch.Generator().manual_seed(3)
    B, L, H = 2, 9, 5
    x = torch.randn(B, L, H, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(H, L, dtype=torch.float64, generator=g, requires_grad=True)
    kb = torch.randn(H, L, dtype=torch.float64, generator=g, requires_grad=True) if bidirectional else None
    D = torch.randn(H, dtype=torch.float64, generator=g, requires_grad=True)
    inputs = (x, k, D) + ((kb,) if bidirectional else ())
    for chunk in (2, H):  # channel chunks of 2 (3 chunks, one partial) and one chunk
        fused = lambda x, k, D, kb=None: ssm_conv_gelu(x, k, D, kb, chunk=chunk)
        assert torch.autograd.gradcheck(fused, inputs)
        # same values and gradients as the plain composition it replaces
        out, ref = fused(*inputs), _conv_gelu_reference(*inputs)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        w = torch.randn(out.shape, dtype=torch.float64, generator=g)
        for a, b in zip(torch.autograd.grad((out * w).sum(), inputs), torch.autograd.grad((ref * w).sum(), inputs)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernel", ["s4d", "s4"])
def test_fused_layer_matches_composition_float32(kernel):
    """The whole S4 block at a long length: the fused path's gradients for every parameter equal
    those of the plain composition (float32, 3 channel chunks)."""
    torch.manual_seed(0)
    layer = S4(d_model=12, d_state=8, kernel=kernel, bidirectional=True)
    x = torch.randn(2, 1500, 12, requires_grad=True)

    def reference(x):
        L = x.shape[1]
        return layer.out(_conv_gelu_reference(x, layer.kernel(L), layer.D, layer.kernel_bwd(L)))

    grads = []
    for fn in (lambda x: layer.out(ssm_conv_gelu(x, layer.kernel(1500), layer.D, layer.kernel_bwd(1500), chunk=5)),
               reference, layer):
        y = fn(x)
        grads.append((y, torch.autograd.grad(y.square().mean(), [x, *layer.parameters()])))
    for y, gs in grads[1:]:
        torch.testing.assert_close(y, grads[0][0], rtol=1e-4, atol=1e-5)
        for a, b in zip(gs, grads[0][1]):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5 * b.abs().max().item())


def test_hippo_legs_nplr_reconstructs_legs():
    N = 8
    Lam, P, B = hippo_legs_nplr(N)
    q = torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)
    legs = -(torch.tril(q[:, None] * q[None, :], -1) + torch.diag(torch.arange(N, dtype=torch.float64) + 1))
    # the spectrum of Lambda - P P^* (with conjugates) equals that of the real LegS matrix
    lam, p = torch.cat([Lam, Lam.conj()]), torch.cat([P, P.conj()])[:, None]
    ev = torch.linalg.eigvals(torch.diag(lam) - p @ p.conj().T)
    ev_ref = torch.linalg.eigvals(legs.to(torch.complex128))
    order = lambda e: e[torch.argsort(e.real * 1e3 + e.imag)]
    torch.testing.assert_close(order(ev), order(ev_ref), rtol=0, atol=1e-4)  # LegS: -1 .. -N
    assert B.abs().square().sum().item() == pytest.approx((2 * torch.arange(N) + 1).sum().item() / 2)


@pytest.mark.parametrize("kernel", ["s4d", "s4"])
def test_causal_and_bidirectional(kernel):
    torch.manual_seed(0)
    layer = S4(d_model=8, d_state=8, kernel=kernel).eval()
    x = torch.randn(2, 50, 8)
    x2 = x.clone()
    x2[:, 30:] = torch.randn(2, 20, 8)
    y, y2 = layer(x), layer(x2)
    torch.testing.assert_close(y[:, :30], y2[:, :30], rtol=1e-5, atol=1e-5)  # causal: past unchanged
    assert not torch.allclose(y[:, 30:], y2[:, 30:])
    bi = S4(d_model=8, d_state=8, kernel=kernel, bidirectional=True).eval()
    assert not torch.allclose(bi(x)[:, :30], bi(x2)[:, :30])  # bidirectional sees the future


def test_bf16_autocast_keeps_fft_in_fp32_and_long_kernel_bounded():
    torch.manual_seed(0)
    layer = S4(d_model=16, d_state=8, chunk=512)
    x = torch.randn(1, 3000, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kernel_out = []
        h = layer.kernel.register_forward_hook(lambda m, i, o: kernel_out.append(o))
        y = layer(x)
        h.remove()
    assert kernel_out[0].dtype == torch.float32  # the kernel and the convolution stay in float32
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)  # only the output Linear runs in bf16
    # chunked generation equals one-shot generation, forward and gradient
    k = layer.kernel
    k.chunk = 10**9
    full = k(777)
    g_full = torch.autograd.grad(full.square().sum(), k.C)[0]
    k.chunk = 100
    part = k(777)
    torch.testing.assert_close(part, full)
    torch.testing.assert_close(torch.autograd.grad(part.square().sum(), k.C)[0], g_full)


def test_dt_clamped_and_param_groups():
    layer = S4(d_model=4, d_state=8)
    with torch.no_grad():
        layer.kernel.log_dt.fill_(50.0)
    assert layer.kernel.dt().max().item() == 1.0
    groups = {g["name"]: g for g in ssm_param_groups(layer, lr=5e-4, weight_decay=0.01)}
    ssm_ids = {id(p) for p in groups["ssm"]["params"]}
    k = layer.kernel
    assert ssm_ids == {id(k.log_dt), id(k.log_A_real), id(k.A_imag), id(k.B)}
    assert (groups["ssm"]["lr"], groups["ssm"]["weight_decay"]) == (1e-3, 0.0)
    assert groups["decay"]["weight_decay"] == 0.01 and id(k.C) in {id(p) for p in groups["decay"]["params"]}
    assert all(not p.is_complex() for p in layer.parameters()), "complex parameters are stored as real views"
    over = {g["name"]: g for g in ssm_param_groups(layer, lr=5e-4, weight_decay=0.01, ssm_lr=2e-4)}  # train.ssm_lr
    assert over["ssm"]["lr"] == 2e-4 and {id(p) for p in over["ssm"]["params"]} == ssm_ids


def test_s4_nplr_parameters_per_channel_and_groups_as_the_authors():
    """ViS4mer's s4.py (HippoSSKernel defaults): w shared (trainable 1), B and p repeated per
    channel (trainable 2), C and q per channel; log_dt, w, B, p: lr 1e-3, weight decay 0; C, q: the
    model's group. Channels start from the same B, P and differ once trained."""
    H, N = 6, 16
    layer = S4(d_model=H, d_state=N, kernel="s4")
    k = layer.kernel
    assert k.Lambda.shape == (N // 2, 2) and k.log_dt.shape == (H,)
    for name in ("B", "P", "Q", "C"):
        assert getattr(k, name).shape == (H, N // 2, 2), name
    torch.testing.assert_close(k.P, k.Q)  # the authors' q = p at init
    assert all(torch.equal(k.B[0], k.B[h]) for h in range(H))
    groups = {g["name"]: g for g in ssm_param_groups(layer, lr=5e-4, weight_decay=0.01)}
    assert {id(p) for p in groups["ssm"]["params"]} == {id(k.log_dt), id(k.Lambda), id(k.B), id(k.P)}
    assert (groups["ssm"]["lr"], groups["ssm"]["weight_decay"]) == (1e-3, 0.0)
    assert {id(k.C), id(k.Q)} <= {id(p) for p in groups["decay"]["params"]}
    # one channel's B changed: only that channel's kernel changes
    K0 = k(64).detach()
    with torch.no_grad():
        k.B[2].mul_(1.5)
    K1 = k(64).detach()
    changed = (K1 - K0).abs().amax(-1) > 1e-6
    assert changed.tolist() == [h == 2 for h in range(H)]


def test_channel_dropout_drops_whole_channels():
    torch.manual_seed(0)
    d = ChannelDropout(0.5).train()
    y = d(torch.ones(4, 100, 64))
    per_channel = y.amax(1)  # (B, D): a channel is zero over the whole sequence or scaled by 2
    assert set(per_channel.unique().tolist()) == {0.0, 2.0}
    assert ((y == 0).all(1) | (y == 2).all(1)).all()
    assert 0.3 < (per_channel == 0).float().mean() < 0.7


def test_as_complex_of_a_misaligned_view():
    """ZeRO-3 may hand a (N, 2) parameter as a view at an odd offset of a flat buffer, which
    torch.view_as_complex refuses: as_complex copies then, and gradients reach the buffer."""
    from s5video.models.ssm import as_complex
    buf = torch.randn(9, dtype=torch.float64, requires_grad=True)
    view = buf[1:9].view(4, 2)
    with pytest.raises(RuntimeError, match="storage_offset"):
        torch.view_as_complex(view)
    z = as_complex(view)
    assert torch.equal(z, torch.complex(view[:, 0], view[:, 1]))
    z.abs().sum().backward()
    assert torch.allclose(buf.grad[1:].view(4, 2), view / z.abs()[:, None]) and buf.grad[0] == 0
