"""Our ViS4mer against the authors' own code, from one set of weights.

    pip install -e .[parity]            # omegaconf, opt_einsum, scipy: what their s4.py imports
    git clone https://github.com/md-mohaiminul/ViS4mer /tmp/ViS4mer
    python benchmarks/authors_parity.py --authors-repo /tmp/ViS4mer [--length 1024] [--width 64]

Builds the authors' ``ViS4mer`` (``models.py``, S4 NPLR from ``s4.py``) with their defaults
(prenorm, 3 layers), converts its state dict with :func:`models.convert.convert_authors_vis4mer`,
and prints, in float32 and eval mode, the max |difference| of the logits (absolute and relative to
the largest logit) and, for every parameter, of the gradients of one loss (relative to that
gradient's largest entry). Ratios: ``rel`` <= 1e-4 passes.

What is not theirs: ``pytorch_lightning`` (only ``rank_zero_only``, a logging decorator) is
replaced by a stand-in when it is not installed (it would pull another torch), and their Cauchy
kernel, which needs pykeops or their CUDA extension, by the same sum written in torch
(``cauchy_conj`` below: sum_n v_n / (z - w_n) + conj(v_n) / (z - conj(w_n))).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from s5video.models.convert import convert_authors_vis4mer, load_authors_vis4mer  # noqa: E402


def cauchy_conj(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Their ``cauchy_conj`` (pykeops): v (..., N), z (L,), w (..., N) -> (..., L)."""
    v, w = v[..., None], w[..., None]  # (..., N, 1)
    return (v / (z - w) + v.conj() / (z - w.conj())).sum(-2)


def import_authors(repo: Path):
    """Their ``models`` module (and ``s4``), importable from ``repo``."""
    try:
        import pytorch_lightning  # noqa: F401, PLC0415
    except ImportError:
        pl = types.ModuleType("pytorch_lightning")
        util = types.ModuleType("pytorch_lightning.utilities")
        util.rank_zero_only = lambda fn: fn
        pl.utilities = util
        sys.modules.update({"pytorch_lightning": pl, "pytorch_lightning.utilities": util})
    sys.path.insert(0, str(repo))
    s4 = importlib.import_module("s4")
    s4.cauchy_conj = lambda v, z, w, num=2, denom=2: cauchy_conj(v, z, w)
    s4.has_cauchy_extension = False
    return importlib.import_module("models"), s4


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--authors-repo", type=Path, required=True, help="a checkout of md-mohaiminul/ViS4mer")
    ap.add_argument("--length", type=int, default=1024, help="tokens L of the input (their l_max)")
    ap.add_argument("--width", type=int, default=64, help="d_model = d_input (theirs: 1024)")
    ap.add_argument("--state", type=int, default=64, help="d_state N")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    # ours is a package named "models", theirs a module of that name: swap them while theirs imports
    ours_models = {k: v for k, v in sys.modules.items() if k == "models" or k.startswith("models.")}
    for k in ours_models:
        sys.modules.pop(k)
    theirs_mod, s4 = import_authors(a.authors_repo.resolve())
    for k in [k for k in sys.modules if k == "models"]:
        sys.modules.pop(k)
    sys.modules.update(ours_models)
    torch.manual_seed(a.seed)
    theirs = theirs_mod.ViS4mer(d_input=a.width, l_max=a.length, d_output=a.classes, d_model=a.width, n_layers=3,
                                dropout=0.2, prenorm=True).eval()
    if a.state != 64:
        raise SystemExit("--state: their ViS4mer builds S4 with d_state=64 (models.py passes none)")
    ours = load_authors_vis4mer(theirs.state_dict()).eval()
    x = torch.randn(a.batch, a.length, a.width)
    y_t, y_o = theirs(x), ours(x)
    w = torch.randn(y_t.shape)
    g_t = dict(zip((n for n, _ in theirs.named_parameters()),
                   torch.autograd.grad((y_t * w).sum(), list(theirs.parameters()), allow_unused=True)))
    g_t = {k: g for k, g in g_t.items() if g is not None}  # their encoder is unused when d_input = d_model
    g_o = dict(zip((n for n, _ in ours.named_parameters()), torch.autograd.grad((y_o * w).sum(), list(ours.parameters()))))
    mapped, _ = convert_authors_vis4mer({**{k: v for k, v in theirs.state_dict().items() if k not in g_t}, **g_t})
    diff = (y_t - y_o).abs().max().item()
    scale = y_t.abs().max().item()
    print(f"authors' ViS4mer (S4 NPLR, L={a.length}, d_model={a.width}, N=64, 3 layers) vs ours (block=authors, "
          f"pool=avg1d), float32, torch {torch.__version__}")
    print(f"logits  max|diff| {diff:.3e}  max|logit| {scale:.3e}  rel {diff / scale:.3e}")
    worst = 0.0
    for name, g in g_o.items():
        ref = mapped[name]
        d = (g - ref).abs().max().item()
        rel = d / max(ref.abs().max().item(), 1e-30)
        worst = max(worst, rel)
        print(f"grad {name:<52} max|diff| {d:.3e}  rel {rel:.3e}")
    print(f"worst gradient rel {worst:.3e}; logits rel {diff / scale:.3e} (goal <= 1e-4)")
    return 0 if diff / scale <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
