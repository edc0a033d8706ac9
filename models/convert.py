"""State dicts of ViS4mer's public code (md-mohaiminul/ViS4mer, ``models.py`` + ``s4.py``) in ours.

The authors' ``ViS4mer(d_input, l_max, d_output, d_model, n_layers)`` is our ``vis4mer`` with
``block="authors"`` and ``kernel="s4"`` (pool ``avg1d``), under :class:`models.factory.TokenModel`
(whose ``proj`` is their ``encoder``, used when ``d_input != d_model``). Key mapping, layer i:

========================================  =====================================================
theirs                                    ours (``temporal.decoder.blocks.{i}.`` omitted)
========================================  =====================================================
``s4_layers.{i}.kernel.krylov.log_dt``    ``mixer.kernel.log_dt`` (H,)
``s4_layers.{i}.kernel.krylov.w``         ``mixer.kernel.Lambda`` (N2, 2), shared by channels
``s4_layers.{i}.kernel.krylov.B``         (H, 2, N2, 2): ``[:, 0]`` -> ``mixer.kernel.B``, ``[:, 1]`` -> ``.P``
``s4_layers.{i}.kernel.krylov.C``         (H, 2, N2, 2): ``conj([:, 0])`` -> ``mixer.kernel.C``, ``[:, 1]`` -> ``.Q``
``s4_layers.{i}.D``                       ``mixer.D``
``s4_layers.{i}.output_linear.weight``    ``mixer.out.weight``; ``.bias`` (H, 1) -> (H,)
``norms.{i}.*`` / ``linears.{i}.*``       ``norm.*`` / ``linear.*``
``decoder.*`` / ``encoder.*``             ``temporal.head.*`` / ``proj.*``
========================================  =====================================================

Their kernel contracts ``B_i conj(C_j)`` where ours contracts ``C B`` (the convention of
:class:`models.ssm.S4Kernel`), hence the conjugate of C. The FFT nodes (``nodes``, ``z``) are
buffers they recompute; a ``module.`` prefix (``nn.DataParallel``, as their scripts save) is
stripped. Differences that remain: our dt is clamped to [1e-4, 1] (theirs is not), and their kernel
is computed at ``l_max`` and cut to the input length, ours at the input length (equal when the
input is ``l_max`` long, as in their scripts).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

_LAYER = re.compile(r"^(s4_layers|norms|linears)\.(\d+)\.(.+)$")


def _conj_real(t: torch.Tensor) -> torch.Tensor:
    """Complex conjugate of a (..., 2) real view."""
    return torch.stack([t[..., 0], -t[..., 1]], -1)


def convert_authors_vis4mer(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """The authors' ViS4mer state dict -> (our TokenModel state dict, constructor settings).

    Settings: ``d_input``, ``d_model``, ``depth``, ``d_state`` (N), ``num_classes``, read from the
    tensors' shapes. Raises ValueError naming the tensor when the dict is not theirs (a key we do
    not map, a missing tensor, or a per-channel ``w``: their ``trainable.A = 2``, which our
    shared Lambda cannot hold).
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    depth = 1 + max((int(m.group(2)) for k in state if (m := _LAYER.match(k))), default=-1)
    if depth == 0 or "decoder.weight" not in state:
        raise ValueError("not a ViS4mer state dict of md-mohaiminul/ViS4mer: no s4_layers.{i}.* / decoder.weight")
    for key, t in state.items():
        if key in ("decoder.weight", "decoder.bias"):
            out["temporal.head." + key.split(".")[1]] = t
            continue
        if key.startswith("encoder."):
            continue  # placed below once the widths are known
        m = _LAYER.match(key)
        if m is None:
            raise ValueError(f"{key}: not a tensor of the authors' ViS4mer (models.py)")
        kind, i, rest = m.group(1), int(m.group(2)), m.group(3)
        pre = f"temporal.decoder.blocks.{i}."
        if kind == "norms":
            out[pre + "norm." + rest] = t
        elif kind == "linears":
            out[pre + "linear." + rest] = t
        elif rest == "D":
            out[pre + "mixer.D"] = t
        elif rest == "output_linear.weight":
            out[pre + "mixer.out.weight"] = t
        elif rest == "output_linear.bias":
            out[pre + "mixer.out.bias"] = t.reshape(-1)  # TransposedLinear's (H, 1)
        elif rest == "kernel.krylov.log_dt":
            out[pre + "mixer.kernel.log_dt"] = t
        elif rest == "kernel.krylov.w":
            if t.dim() != 2:
                raise ValueError(f"{key}: shape {tuple(t.shape)}, expected (N/2, 2): a per-channel A "
                                 "(trainable A=2) has no shared Lambda to load into")
            out[pre + "mixer.kernel.Lambda"] = t
        elif rest == "kernel.krylov.B":
            _check_rank1(key, t)
            out[pre + "mixer.kernel.B"], out[pre + "mixer.kernel.P"] = t[:, 0], t[:, 1]
        elif rest == "kernel.krylov.C":
            _check_rank1(key, t)
            out[pre + "mixer.kernel.C"], out[pre + "mixer.kernel.Q"] = _conj_real(t[:, 0]), t[:, 1]
        elif rest in ("kernel.krylov.nodes", "kernel.krylov.z"):
            continue  # FFT nodes: recomputed
        else:
            raise ValueError(f"{key}: not a tensor of the authors' ViS4mer (models.py)")
    w0 = out.get("temporal.decoder.blocks.0.norm.weight")
    lam = out.get("temporal.decoder.blocks.0.mixer.kernel.Lambda")
    if w0 is None or lam is None:
        raise ValueError("norms.0.weight / s4_layers.0.kernel.krylov.w missing: not a complete ViS4mer state dict")
    d_model = w0.shape[0]
    enc = state.get("encoder.weight")
    d_input = enc.shape[1] if enc is not None else d_model
    if d_input != d_model:
        out["proj.weight"], out["proj.bias"] = state["encoder.weight"], state["encoder.bias"]
    settings = dict(d_input=d_input, d_model=d_model, depth=depth, d_state=2 * lam.shape[0],
                    num_classes=state["decoder.weight"].shape[0])
    return out, settings


def _check_rank1(key: str, t: torch.Tensor) -> None:
    if t.dim() != 4 or t.shape[1] != 2:
        raise ValueError(f"{key}: shape {tuple(t.shape)}, expected (H, 2, N/2, 2): [B; P] or [C; Q] of a rank-1 "
                         "NPLR kernel per channel (s4.py with rank=1 and trainable B=2)")


def load_authors_vis4mer(source: str | Path | dict, dropout: float = 0.2):
    """Our ``vis4mer`` (authors' block, S4 NPLR, avg1d) holding the weights of one of theirs.

    source: a state dict, or a ``torch.save`` file of one (optionally under ``"model"``/``"net"``
    as training scripts save). Returns a :class:`models.factory.TokenModel`, forward(tokens
    (B, L, d_input)) -> (B, num_classes). Raises ValueError (see :func:`convert_authors_vis4mer`).
    """
    from s5video.models.factory import TokenModel  # noqa: PLC0415

    state = source if isinstance(source, dict) else torch.load(source, map_location="cpu", weights_only=True)
    for wrapper in ("model", "net", "state_dict"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    ours, s = convert_authors_vis4mer(state)
    model = TokenModel("vis4mer", s["d_input"], s["num_classes"], d_model=s["d_model"], depth=s["depth"],
                       d_state=s["d_state"], kernel="s4", block="authors", pool="avg1d", dropout=dropout)
    model.load_state_dict(ours, strict=True)
    return model
