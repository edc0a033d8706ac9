"""S4 layers: diagonal S4D and NPLR/DPLR S4 convolution kernels, FFT convolution, the S4 block.

Shapes: B batch, L sequence length, H channels (model width), N state size (N2 = N/2 stored
modes: complex-conjugate pairs are implied, so the kernels sum ``2 * Re``).

* :class:`S4DKernel` - Gu et al. 2022, "On the Parameterization and Initialization of Diagonal
  State Space Models" (S4D): A = -exp(log_A_real) + i A_imag, ZOH discretisation,
  ``K[l] = 2 Re(sum_n C_n B_n (exp(dt A_n) - 1) / A_n * exp(dt A_n l))``; S4D-Lin / S4D-Inv init.
* :class:`S4Kernel` - Gu et al. 2022, "Efficiently Modeling Long Sequences with Structured State
  Spaces" (S4), Algorithm 1: HiPPO-LegS in normal-plus-low-rank form A = Lambda - P P^*, bilinear
  discretisation, the kernel's generating function at the roots of unity via Cauchy kernels and
  the Woodbury identity, then an inverse FFT; C is parameterised as C~ = C (I - dA^L); B, P, Q,
  C~ per channel and Lambda shared, as ViS4mer's public S4 v1 (``s4.py``).

Kernels are computed in float32 even under autocast, in chunks of ``chunk`` positions (S4D) or
frequencies (S4) with activation checkpointing, so memory stays bounded (H=1024, L=11,820). By
default a chunk holds ``KERNEL_CHUNK_ELEMS`` (H, N2, chunk) elements: cache-sized on CPU (at
H=128 the S4 kernel's forward + backward is 3x faster than with 1,024 frequencies), larger on a GPU.
Complex parameters are stored as real views (``(..., 2)`` tensors). The SSM parameters (A, B, dt,
and P) carry ``_optim = {"lr": ..., "weight_decay": 0.0}`` for their own optimizer group (C and Q
train with the model's, as in the authors' code).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

DT_MIN_CLAMP, DT_MAX_CLAMP = 1e-4, 1.0  # dt is clamped: NaNs have been traced to log_dt


def as_complex(t: torch.Tensor) -> torch.Tensor:
    """(..., 2) real -> (...) complex view; a copy when the storage offset is odd (complex needs it
    even), as for parameters ZeRO-3 gathers into views of one flat buffer."""
    return torch.view_as_complex(t if t.storage_offset() % 2 == 0 else t.clone())


def _register(module: nn.Module, name: str, tensor: torch.Tensor, lr: float | None) -> None:
    """Register an SSM parameter tagged for its own optimizer group (lr, weight decay 0)."""
    p = nn.Parameter(tensor)
    if lr is not None:
        p._optim = {"lr": lr, "weight_decay": 0.0}
    module.register_parameter(name, p)


KERNEL_CHUNK_ELEMS = {"cpu": 1 << 18, "cuda": 1 << 24}  # (H, N2, chunk) elements per kernel chunk


def _chunked(fn, total: int, chunk: int | None, per_position: int, *args: torch.Tensor) -> torch.Tensor:
    """Concatenate ``fn(start, stop, *args)`` over [0, total) in chunks along the last axis, with
    activation checkpointing when gradients flow, so only one chunk is alive at a time.
    ``chunk`` None: ``KERNEL_CHUNK_ELEMS[device] // per_position`` positions."""
    if chunk is None:
        chunk = max(1, KERNEL_CHUNK_ELEMS.get(args[0].device.type, 1 << 24) // per_position)
    if total <= chunk:  # one chunk: nothing to bound, no recompute
        return fn(0, total, *args)
    outs = []
    for s in range(0, total, chunk):
        e = min(total, s + chunk)
        if torch.is_grad_enabled() and any(a.requires_grad for a in args):
            outs.append(checkpoint(fn, s, e, *args, use_reentrant=False))
        else:
            outs.append(fn(s, e, *args))
    return torch.cat(outs, dim=-1)


class S4DKernel(nn.Module):
    """Diagonal SSM convolution kernel (S4D), ZOH discretisation.

    Args:
        d_model: H channels. d_state: N (N/2 complex modes stored). init: ``"lin"`` (S4D-Lin,
        A = -1/2 + i pi n) or ``"inv"`` (S4D-Inv, A = -1/2 + i N/pi (N/(2n+1) - 1)).
        dt_min, dt_max: log-uniform init range of the step size. lr: SSM parameter group lr.
    forward(L) -> K: (H, L) float32.
    """

    def __init__(self, d_model: int, d_state: int = 64, init: str = "lin", dt_min: float = 1e-3,
                 dt_max: float = 1e-1, lr: float | None = 1e-3, chunk: int | None = None):
        super().__init__()
        if init not in ("lin", "inv"):
            raise ValueError(f"init: {init!r} not allowed; allowed values: 'lin', 'inv'")
        H, N2 = d_model, d_state // 2
        self.chunk = chunk
        n = torch.arange(N2, dtype=torch.float32)
        a_imag = math.pi * n if init == "lin" else (d_state / math.pi) * (d_state / (2 * n + 1) - 1)
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)  # (H,)
        C = torch.randn(H, N2, dtype=torch.cfloat) * (0.5 ** 0.5)  # (H, N2) complex, variance 1
        _register(self, "log_dt", log_dt, lr)
        _register(self, "log_A_real", torch.log(0.5 * torch.ones(H, N2)), lr)  # (H, N2)
        _register(self, "A_imag", a_imag.repeat(H, 1), lr)  # (H, N2)
        _register(self, "B", torch.view_as_real(torch.ones(H, N2, dtype=torch.cfloat)), lr)  # (H, N2, 2)
        self.C = nn.Parameter(torch.view_as_real(C))  # (H, N2, 2)

    def dt(self) -> torch.Tensor:
        return self.log_dt.exp().clamp(DT_MIN_CLAMP, DT_MAX_CLAMP)  # (H,)

    def ssm(self):
        """Continuous parameters: A (H, N2), B (H, N2), C (H, N2) complex; dt (H,)."""
        A = -torch.exp(self.log_A_real) + 1j * self.A_imag  # (H, N2)
        return A, as_complex(self.B), as_complex(self.C), self.dt()

    def forward(self, L: int) -> torch.Tensor:
        A, B, C, dt = self.ssm()
        dtA = dt[:, None] * A  # (H, N2)
        Cp = C * B * (torch.exp(dtA) - 1.0) / A  # (H, N2): C B (exp(dt A) - 1) / A

        def vandermonde(s: int, e: int, dtA: torch.Tensor, Cp: torch.Tensor) -> torch.Tensor:
            # 2 Re(Cp z^l) with z = exp(dt A) = r e^{i theta}: 2 r^l (Re Cp cos(theta l) - Im Cp sin(theta l)),
            # in real arithmetic (complex exp is several times slower on CPU)
            pos = torch.arange(s, e, device=dtA.device, dtype=dtA.real.dtype)  # (Lc,)
            mag = torch.exp(dtA.real[:, :, None] * pos)  # (H, N2, Lc) r^l
            ang = dtA.imag[:, :, None] * pos  # (H, N2, Lc) theta l
            return 2 * (torch.einsum("hn,hnl->hl", Cp.real, mag * torch.cos(ang)) -
                        torch.einsum("hn,hnl->hl", Cp.imag, mag * torch.sin(ang)))  # (H, Lc)

        return _chunked(vandermonde, L, self.chunk, Cp.numel(), dtA, Cp)  # (H, L)


def hippo_legs_nplr(N: int):
    """HiPPO-LegS in normal-plus-low-rank form (S4 paper, Thm. 1 / Cor.): A = V (Lambda - P P^*) V^*.

    Returns (Lambda (N/2,), P (N/2,), B (N/2,)) complex128 in the eigenbasis, keeping one mode of
    each conjugate pair (those with positive imaginary part).
    """
    q = torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)  # (N,)
    A = -(torch.tril(q[:, None] * q[None, :], -1) + torch.diag(torch.arange(N, dtype=torch.float64) + 1))
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)  # (N,) rank-1 term
    S = A + P[:, None] * P[None, :] + 0.5 * torch.eye(N, dtype=torch.float64)  # skew-symmetric
    evals, V = torch.linalg.eigh(S * -1j)  # S = V diag(i evals) V^*
    keep = evals > 0  # one of each conjugate pair
    Lam = -0.5 + 1j * evals[keep]  # (N/2,)
    Vk = V[:, keep]  # (N, N/2)
    return Lam, Vk.conj().T @ P.to(torch.complex128), Vk.conj().T @ q.to(torch.complex128)


class S4Kernel(nn.Module):
    """S4 convolution kernel: NPLR HiPPO-LegS, bilinear discretisation, Cauchy + Woodbury (S4, Alg. 1).

    Parameterised per channel as ViS4mer's public S4 v1 (``s4.py``: ``SSKernelNPLR`` with
    ``HippoSSKernel``'s defaults ``trainable = {A: 1, B: 2, C: 1, dt: 1}``) does: the diagonal
    Lambda (N2,) is one tensor shared by all channels (``w``, trainable without ``repeat``); B and
    the low-rank P are copied per channel ((H, N2) each: the authors' ``B`` tensor of shape
    (H, 2, N2) holds both); C~ and the low-rank Q are per channel ((H, N2) each: the authors' ``C``
    tensor holds both, with Q = P at initialisation, so A_h = Lambda - P_h Q_h^* once trained);
    dt (H,). Optimizer groups as the authors': Lambda, B, P and log_dt carry ``_optim`` (lr 1e-3,
    weight decay 0); C and Q train with the model's lr and weight decay.

    forward(L) -> K: (H, L) float32, the kernel of the state-space model run for L steps with C~ as
    the truncated generating function's parameter (C = C~ (I - dA^L)^{-1}); ViS4mer's code computes
    the kernel at ``l_max`` = the input length, so the two agree when L is the length the model sees.
    """

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 lr: float | None = 1e-3, chunk: int | None = None):
        super().__init__()
        H = d_model
        self.chunk = chunk
        Lam, P, B = hippo_legs_nplr(d_state)
        N2 = Lam.shape[0]
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)  # (H,)
        C = torch.randn(H, N2, dtype=torch.cfloat) * (0.5 ** 0.5)  # (H, N2) the C~ parameter
        per_channel = lambda v: torch.view_as_real(v.to(torch.cfloat)).repeat(H, 1, 1)  # (N2,) -> (H, N2, 2)
        _register(self, "log_dt", log_dt, lr)
        _register(self, "Lambda", torch.view_as_real(Lam.to(torch.cfloat)), lr)  # (N2, 2) shared
        _register(self, "B", per_channel(B), lr)  # (H, N2, 2)
        _register(self, "P", per_channel(P), lr)  # (H, N2, 2)
        self.C = nn.Parameter(torch.view_as_real(C))  # (H, N2, 2)
        self.Q = nn.Parameter(per_channel(P))  # (H, N2, 2), = P at init

    def dt(self) -> torch.Tensor:
        return self.log_dt.exp().clamp(DT_MIN_CLAMP, DT_MAX_CLAMP)  # (H,)

    def ssm(self):
        """Lambda (N2,), P (H, N2), Q (H, N2), B (H, N2), C~ (H, N2) complex; dt (H,):
        A_h = Lambda - P_h Q_h^* (with the conjugate modes implied)."""
        return (as_complex(self.Lambda), as_complex(self.P), as_complex(self.Q), as_complex(self.B),
                as_complex(self.C), self.dt())

    def forward(self, L: int) -> torch.Tensor:
        Lam, P, Q, B, C, dt = self.ssm()
        v = torch.stack([C * B, C * P, Q.conj() * B, Q.conj() * P])  # (4, H, N2)

        def spectrum(s: int, e: int, v: torch.Tensor, Lam: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
            k = torch.arange(s, e, device=dt.device, dtype=dt.dtype)  # (Fc,) frequencies (float64 stays)
            omega = torch.exp(-2j * math.pi * k / L)  # (Fc,) roots of unity
            # 1/(z - Lambda) with z = 2/dt (1-w)/(1+w), written as b / (a - Lambda b): no pole at w = -1
            a = (2.0 / dt)[:, None] * (1 - omega)  # (H, Fc)
            b = (1 + omega)[None, :]  # (1, Fc)

            def cauchy(lam: torch.Tensor, vv: torch.Tensor) -> torch.Tensor:
                return torch.einsum("khn,hnf->khf", vv, 1.0 / (a[:, None, :] - lam[None, :, None] * b[:, None, :]))

            r = cauchy(Lam, v) + cauchy(Lam.conj(), v.conj())  # (4, H, Fc) both modes of each pair
            return 2 * (r[0] - b * r[1] * r[2] / (1 + b * r[3]))  # (H, Fc): K^(w) after Woodbury

        Khat = _chunked(spectrum, L // 2 + 1, self.chunk, C.numel(), v, Lam, dt)  # (H, L//2+1)
        return torch.fft.irfft(Khat, n=L)  # (H, L)


def fft_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution y[l] = sum_{j<=l} k[j] u[l-j] by FFT at length 2L, in float32 (float64
    stays float64).

    u: (B, H, L), k: (H, L) -> (B, H, L). Plain autograd: backward keeps the (B, H, L+1)
    complex spectrum; the S4 block uses :func:`ssm_conv_gelu`, which keeps only u.
    """
    L = u.shape[-1]
    dt = torch.float64 if u.dtype == torch.float64 else torch.float32
    uf = torch.fft.rfft(u.to(dt), n=2 * L)  # (B, H, L+1)
    kf = torch.fft.rfft(k.to(dt), n=2 * L)  # (H, L+1)
    return torch.fft.irfft(uf * kf, n=2 * L)[..., :L]  # (B, H, L)


FFT_CHUNK_ELEMS = {"cpu": 1 << 18, "cuda": 1 << 24}  # (B, H_chunk, L) elements per fused-convolution chunk


def _kernel_spectrum(k: torch.Tensor, k_bwd: torch.Tensor | None, n: int) -> torch.Tensor:
    """(H, L) causal kernel (+ anti-causal kernel) -> (H, n/2+1) spectrum at FFT length n = 2L.

    The anti-causal kernel sits at circular positions -j, whose spectrum is the conjugate of its
    own: y[l] = sum_{j<=l} k[j] u[l-j] + sum_{j<L-l} k_bwd[j] u[l+j] in one product."""
    kf = torch.fft.rfft(k, n=n)  # (H, L+1)
    if k_bwd is not None:
        kf = kf + torch.fft.rfft(k_bwd, n=n).conj()  # (H, L+1)
    return kf


class _SSMConvGELU(torch.autograd.Function):
    """a = GELU(K * u + D u) on channel chunks; saves only (x, K, K_bwd, D), backward recomputes."""

    @staticmethod
    def forward(ctx, x, k, k_bwd, D, chunk):
        B, L, H = x.shape
        n = 2 * L
        kf = _kernel_spectrum(k, k_bwd, n)  # (H, L+1)
        out = torch.empty_like(x)  # (B, L, H)
        for h0 in range(0, H, chunk):
            h1 = min(H, h0 + chunk)
            u = x[:, :, h0:h1].transpose(1, 2)  # (B, Hc, L)
            z = torch.fft.irfft(torch.fft.rfft(u, n=n) * kf[h0:h1], n=n)[..., :L]  # (B, Hc, L)
            out[:, :, h0:h1] = F.gelu(z + u * D[h0:h1, None]).transpose(1, 2)  # (B, L, Hc)
        ctx.save_for_backward(x, k, k_bwd, D)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        x, k, k_bwd, D = ctx.saved_tensors
        B, L, H = x.shape
        n, chunk = 2 * L, ctx.chunk
        kf = _kernel_spectrum(k, k_bwd, n)  # (H, L+1)
        dx = torch.empty_like(x)  # (B, L, H)
        S = torch.empty_like(kf)  # (H, L+1): sum_b G conj(U), the kernels' gradient spectrum
        dD = torch.empty_like(D)  # (H,)
        for h0 in range(0, H, chunk):
            h1 = min(H, h0 + chunk)
            u = x[:, :, h0:h1].transpose(1, 2)  # (B, Hc, L)
            U = torch.fft.rfft(u, n=n)  # (B, Hc, L+1)
            z = torch.fft.irfft(U * kf[h0:h1], n=n)[..., :L] + u * D[h0:h1, None]  # (B, Hc, L) recomputed
            g = torch.ops.aten.gelu_backward(grad[:, :, h0:h1].transpose(1, 2), z)  # (B, Hc, L) dLoss/dz
            del z
            G = torch.fft.rfft(g, n=n)  # (B, Hc, L+1)
            S[h0:h1] = (G * U.conj()).sum(0)  # (Hc, L+1)
            del U
            dD[h0:h1] = (g * u).sum((0, 2))  # (Hc,)
            # adjoint of the convolution: correlation with K (conjugate spectrum), then truncate to L
            du = torch.fft.irfft(G.mul_(kf[h0:h1].conj()), n=n)[..., :L]  # (B, Hc, L)
            del G
            dx[:, :, h0:h1] = (du + g * D[h0:h1, None]).transpose(1, 2)  # (B, L, Hc)
        dk = torch.fft.irfft(S, n=n)[..., :L]  # (H, L): dk[j] = sum_{b,l} g[l] u[l-j]
        dk_bwd = torch.fft.irfft(S.conj(), n=n)[..., :L] if k_bwd is not None else None  # sum g[l] u[l+j]
        return dx, dk, dk_bwd, dD, None


def ssm_conv_gelu(x: torch.Tensor, k: torch.Tensor, D: torch.Tensor, k_bwd: torch.Tensor | None = None,
                  chunk: int | None = None) -> torch.Tensor:
    """GELU of the SSM convolution with skip, a = GELU(K * u + D u), fused for memory.

    x: (B, L, H) float32/float64 (u = x along L); k, k_bwd: (H, L) causal / anti-causal kernels
    (k_bwd None: causal); D: (H,) -> (B, L, H). Same values and gradients as GELU(fft_conv(u, k) +
    fft_conv(u.flip, k_bwd).flip + D u) (tests check both against that composition and with
    ``torch.autograd.gradcheck`` in float64), but backward stores only x and the kernels and
    recomputes the spectra channel chunk by channel chunk (``chunk`` channels, by default
    ``FFT_CHUNK_ELEMS[device] / (B L)``: small on CPU, few launches on a GPU): one (B, L, H) tensor
    per layer instead of a (B, H, L+1) complex spectrum, the pre-activation and a transposed copy.
    """
    B, L, H = x.shape
    chunk = chunk or max(1, FFT_CHUNK_ELEMS.get(x.device.type, 1 << 24) // max(1, B * L))
    dt = x.dtype
    return _SSMConvGELU.apply(x, k.to(dt), None if k_bwd is None else k_bwd.to(dt), D.to(dt), chunk)


class S4(nn.Module):
    """An S4 block on (B, L, H): SSM convolution (+ D skip) -> GELU -> dropout -> Linear(H, H).

    Args:
        d_model: H. d_state: N. kernel: ``"s4d"`` (S4D-Lin/Inv, ZOH) or ``"s4"`` (NPLR
        HiPPO-LegS, bilinear). init: S4D init (``"lin"``/``"inv"``). bidirectional: a second
        kernel runs over the reversed sequence and both outputs are summed (non-causal).
        dropout: channel dropout after the activation. lr: SSM parameter group learning rate.
        chunk: kernel positions per chunk (None: sized by ``KERNEL_CHUNK_ELEMS``).
    forward(x: (B, L, H)) -> (B, L, H), dtype of x; the convolution runs in float32 (float64 stays).
    """

    def __init__(self, d_model: int, d_state: int = 64, kernel: str = "s4d", init: str = "lin",
                 bidirectional: bool = False, dropout: float = 0.0, lr: float | None = 1e-3, chunk: int | None = None):
        super().__init__()
        if kernel not in ("s4d", "s4"):
            raise ValueError(f"kernel: {kernel!r} not allowed; allowed values: 's4d', 's4'")
        self.bidirectional = bidirectional
        make = (lambda: S4DKernel(d_model, d_state, init=init, lr=lr, chunk=chunk)) if kernel == "s4d" else \
            (lambda: S4Kernel(d_model, d_state, lr=lr, chunk=chunk))
        self.kernel = make()
        self.kernel_bwd = make() if bidirectional else None
        self.D = nn.Parameter(torch.randn(d_model))  # (H,) skip
        self.dropout = ChannelDropout(dropout)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        with torch.autocast(device_type=x.device.type, enabled=False):  # the SSM convolution in float32
            u = x if x.dtype == torch.float64 else x.float()  # (B, L, H)
            k = self.kernel(L)  # (H, L)
            k_bwd = self.kernel_bwd(L) if self.kernel_bwd is not None else None  # (H, L)
            y = ssm_conv_gelu(u, k, self.D, k_bwd).to(x.dtype)  # (B, L, H) GELU(K * u + D u)
        return self.out(self.dropout(y))  # (B, L, H)


class ChannelDropout(nn.Module):
    """Dropout of whole channels on (B, L, D): one Bernoulli draw per (batch, channel), shared over
    the sequence - what ``nn.Dropout2d`` on (B, H, L) was meant to do in ViS4mer's public code."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = torch.empty(x.shape[0], 1, x.shape[-1], device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * mask / (1 - self.p)  # (B, L, D)


def ssm_param_groups(model: nn.Module, lr: float, weight_decay: float, ssm_lr: float | None = None) -> list[dict]:
    """Optimizer groups: regular parameters (``lr``, ``weight_decay``; no decay on biases/norms) and
    one group per distinct ``_optim`` tag (the SSM A, B, dt, P: weight decay 0 and the tag's lr, or
    ``ssm_lr`` for all of them when given - ViS4mer's public code: 1e-3). Frozen parameters
    (requires_grad=False) are left out."""
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        tag = getattr(p, "_optim", None)
        if tag is not None:
            tag = dict(tag, lr=ssm_lr) if ssm_lr is not None else tag
            key = tuple(sorted(tag.items()))
            g = groups.setdefault(key, {"params": [], **tag, "name": "ssm"})
        elif p.ndim <= 1:
            g = groups.setdefault(("no_decay",), {"params": [], "lr": lr, "weight_decay": 0.0, "name": "no_decay"})
        else:
            g = groups.setdefault(("decay",), {"params": [], "lr": lr, "weight_decay": weight_decay, "name": "decay"})
        g["params"].append(p)
    return list(groups.values())
